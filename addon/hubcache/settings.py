"""hubcache's mitmproxy options and the pure parsing of their values."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mitmproxy import exceptions

REGISTRY_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io")
AUTH_HOSTS = ("auth.docker.io",)
CDN_HOSTS = ("production.cloudflare.docker.com", "production.cloudfront.docker.com")
CDN_SUFFIXES = (".r2.cloudflarestorage.com",)
DEFAULT_HOME = os.path.join(os.path.expanduser("~"), ".hubcache")

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str) -> int:
    """'50g', '512MiB', '0' (no cap) -> bytes."""
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"not a size: {value!r} (examples: 0, 500m, 50g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def direct_min(value: str) -> int | None:
    """hubcache_direct_min: bytes, or None for off."""
    return None if value.strip().lower() == "off" else parse_size(value)


def parse_time(value: str) -> float | None:
    """'' -> None; '2026-11-27T10:00:00Z' (UTC; seconds optional) or epoch seconds -> epoch seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"not a time: {value!r} (example: 2026-11-27T10:00:00Z)") from e
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def allow_hosts_pattern(hosts: Sequence[str], suffixes: Sequence[str] = ()) -> str:
    """One regex for mitmproxy's allow_hosts, matched against 'host:port'."""
    names = [re.escape(h) for h in hosts] + [r"[a-z0-9.-]+" + re.escape(s) for s in suffixes]
    return rf"^(?:{'|'.join(names)}):\d+$"


def load(loader) -> None:
    add = loader.add_option
    add("hubcache_store", str, os.path.join(DEFAULT_HOME, "store"), "Directory of hubcache's LMDB store.")
    add("hubcache_direct_min", str, "2m", "Blobs of at least this size are sent by hubcache's own TLS listener through a plain tunnel "
        "(the client is redirected to " + "blobs.hubcache.invalid" + "): faster than mitmproxy's TLS. off: never.")
    add("hubcache_max_size", str, "0", "Size cap of the store (e.g. 50g); least recently used content is evicted. 0: no cap.")
    add("hubcache_tag_ttl", int, 300, "Seconds a tag's manifest is served without asking upstream; after that it is revalidated with a HEAD.")
    add("hubcache_registry_hosts", Sequence[str], list(REGISTRY_HOSTS), "Registry host names served by hubcache (all one registry).")
    add("hubcache_auth_hosts", Sequence[str], list(AUTH_HOSTS), "Token endpoint hosts.")
    add("hubcache_cdn_hosts", Sequence[str], list(CDN_HOSTS), "Blob CDN hosts that registry redirects point at.")
    add("hubcache_auth_realm", str, "https://auth.docker.io/token", "Token realm hubcache fetches its own upstream tokens from.")
    add("hubcache_auth_service", str, "registry.docker.io", "Token service name of the registry.")
    add("hubcache_credentials", str, "", "Docker Hub credentials file (TOML or JSON, mode 0600): [[accounts]] username/token.")
    add("hubcache_docker_config", str, os.path.join(os.environ.get("DOCKER_CONFIG", os.path.join(os.path.expanduser("~"), ".docker")), "config.json"),
        "Docker config.json whose Docker Hub login (auths, credHelpers, credsStore) hubcache uses; empty: none.")
    add("hubcache_budget_reserve", int, 0, "When every account has fewer pulls left than this, moved tags are served stale instead of spending them.")
    add("hubcache_metrics_listen", str, "", "host:port for the Prometheus /metrics endpoint (e.g. 127.0.0.1:9090); empty: off.")
    add("hubcache_upstream_timeout", int, 15, "Seconds hubcache waits for its own upstream requests (tokens, revalidation).")
    add("hubcache_connect_timeout", int, 5, "Seconds to wait for a TCP connection to an upstream host that has not answered recently.")
    add("hubcache_backoff", int, 30, "Seconds an upstream host that failed is not asked again: tags are served stale, misses fail at once.")
    add("hubcache_pin_time", str, "", "Serve every tag as it was at this time (e.g. 2026-11-27T10:00:00Z), from the tag history, without asking upstream: replays a past pipeline.")
    add("hubcache_offline_private", str, "refuse", "When upstream cannot confirm a client may pull a private repository: refuse (default) or allow.")
    add("hubcache_offline", bool, False, "Never contact upstream: serve what the store has, answer misses with an error.")


def check(opts) -> int:
    """Validate hubcache's options; return the size cap in bytes."""
    try:
        max_size = parse_size(opts.hubcache_max_size)
    except ValueError as e:
        raise exceptions.OptionsError(f"hubcache_max_size: {e}") from e
    if opts.hubcache_direct_min.strip().lower() != "off":
        try:
            parse_size(opts.hubcache_direct_min)
        except ValueError as e:
            raise exceptions.OptionsError(f"hubcache_direct_min: {e} (or off)") from e
    if opts.hubcache_tag_ttl < 0:
        raise exceptions.OptionsError(f"hubcache_tag_ttl must be >= 0, not {opts.hubcache_tag_ttl}")
    if opts.hubcache_metrics_listen and not re.fullmatch(r"[^\s:]*:\d{1,5}", opts.hubcache_metrics_listen):
        raise exceptions.OptionsError(f"hubcache_metrics_listen must be host:port, not {opts.hubcache_metrics_listen!r}")
    try:
        parse_time(opts.hubcache_pin_time)
    except ValueError as e:
        raise exceptions.OptionsError(f"hubcache_pin_time: {e}") from e
    if opts.hubcache_offline_private not in ("refuse", "allow"):
        raise exceptions.OptionsError(f"hubcache_offline_private must be refuse or allow, not {opts.hubcache_offline_private!r}")
    for name in ("hubcache_upstream_timeout", "hubcache_connect_timeout"):
        if getattr(opts, name) <= 0:
            raise exceptions.OptionsError(f"{name} must be > 0, not {getattr(opts, name)}")
    if opts.hubcache_backoff < 0:
        raise exceptions.OptionsError(f"hubcache_backoff must be >= 0, not {opts.hubcache_backoff}")
    if not opts.hubcache_auth_realm.startswith("https://"):
        raise exceptions.OptionsError(f"hubcache_auth_realm must be an https URL, not {opts.hubcache_auth_realm!r}")
    return max_size
