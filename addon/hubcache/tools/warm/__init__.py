"""`hubcache warm`: pulls through the running proxy, as a client would, every image its sources
name, so that the store has them before they are needed (a Hub outage, a release day).

Pure: `gitlabci` (what a .gitlab-ci.yml pulls), `platforms` (which manifests of an index).
I/O: `sources` (reads the files), `client` (HTTPS through the proxy), `pull` (one image),
`runner` (the command line, progress bar and summary).
"""

from hubcache.tools.warm.runner import add_arguments, run

__all__ = ["add_arguments", "run"]
