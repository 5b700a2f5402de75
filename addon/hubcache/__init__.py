"""hubcache: a transparent pull-through cache for Docker Hub, as a mitmproxy addon on LMDB."""

__version__ = "0.1.0"
