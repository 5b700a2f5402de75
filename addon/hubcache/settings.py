"""hubcache's options: declared for mitmproxy, parsed once into one frozen, typed `Settings`.

The parsing of each value is a pure function (`parse_size`, `parse_time`, ...) testable without a
proxy. `Settings.parse(options, updated, previous)` re-parses only the options in `updated` and
keeps the rest from `previous`, so a request handler reads typed fields and never an option string.
No mitmproxy import: the hooks turn a `SettingsError` into mitmproxy's `OptionsError`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from hubcache import registries
from hubcache.registries import RegistryTable

REGISTRY_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io")
AUTH_HOSTS = ("auth.docker.io",)  # Docker Hub's token realm (other registries' realms on another host are relocated: decide/challenge.py)
CDN_HOSTS = ("production.cloudflare.docker.com", "production.cloudfront.docker.com")
CDN_SUFFIXES = (".r2.cloudflarestorage.com",)
DEFAULT_HOME = os.path.join(os.path.expanduser("~"), ".hubcache")
DIRECT_HOST = "blobs.hubcache.invalid"  # hubcache's own blob host: never resolves, only the proxy knows it

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class SettingsError(ValueError):
    """An option's value is unusable; the message names the option and the value."""


@dataclass(frozen=True)
class TLSSettings:
    """mitmproxy's upstream TLS options, which every connection hubcache makes itself honours."""

    insecure: bool = False
    ca_file: str | None = None
    ca_path: str | None = None
    also_ca: str | None = None  # trusted besides those (the parent's own CA, for the parent's connections only)


@dataclass(frozen=True)
class Egress:
    """The corporate HTTP proxy that every upstream connection goes through (mitmproxy's upstream
    mode): hubcache's own connections open a CONNECT tunnel through it. `login` ("user:password")
    is sent to this proxy only, never shown."""

    host: str
    port: int
    login: str | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization value for this proxy, or None without a login."""
        return "Basic " + base64.b64encode(self.login.encode()).decode() if self.login else None


_UPSTREAM_RE = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[^\]]+\]|[^/:@\[\]]+)(?::(?P<port>\d{1,5}))?/?")


def egress_proxy(modes: Sequence[str]) -> tuple[str, int] | None:
    """mitmproxy's `mode` -> (host, port) of its first upstream proxy, or None (no upstream mode).
    Mode specs read `upstream:URL[@listen]`; the port defaults as in mitmproxy (http 80)."""
    for spec in modes:
        if not spec.startswith("upstream:"):
            continue
        data = spec[len("upstream:"):]
        m = _UPSTREAM_RE.fullmatch(data.rpartition("@")[0] if "@" in data else data)
        if not m:
            raise ValueError(f"not an upstream proxy URL: {spec!r} (example: upstream:http://proxy.corp:3128)")
        if (m.group("scheme") or "http") != "http":
            raise ValueError(f"hubcache's own connections reach an egress proxy over http:// only (CONNECT), "
                             f"not {spec!r}")
        return m.group("host").strip("[]"), int(m.group("port") or 80)
    return None


def upstream_login(value: str | None) -> str | None:
    """mitmproxy's `upstream_auth` ("user:password"), checked as mitmproxy does; never echoed."""
    if value is None or value == "":
        return None
    if ":" not in value[1:]:
        raise ValueError("must be user:password (the value is not shown)")
    return value


def parse_size(value: str) -> int:
    """'50g', '512MiB', '0' (no cap) -> bytes."""
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"not a size: {value!r} (examples: 0, 500m, 50g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def direct_min(value: str) -> int | None:
    """hubcache_direct_min: bytes, or None for off."""
    if value.strip().lower() == "off":
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise ValueError(f"{e} (or off)") from e


def parse_time(value: str) -> float | None:
    """'' -> None; '2026-11-27T10:00:00Z' (UTC; seconds optional) or epoch seconds -> epoch seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"not a time: {value!r} (example: 2026-11-27T10:00:00Z)") from e
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def allow_hosts_pattern(hosts: Sequence[str], suffixes: Sequence[str] = ()) -> str:
    """One regex for mitmproxy's allow_hosts, matched against 'host:port': a host (with `*` for
    any run of name characters) on any port, or on the one port it names."""
    def one(h: str) -> str:
        name, _, port = h.partition(":") if not h.startswith("[") else (h, "", "")
        return re.escape(name).replace(r"\*", "[a-z0-9.-]*") + (f":{port}" if port else r":\d+")
    names = [one(h) for h in hosts] + [r"[a-z0-9.-]+" + re.escape(s) + r":\d+" for s in suffixes]
    return rf"^(?:{'|'.join(names)})$"


def _at_least(least: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < least:
            raise ValueError(f"must be >= {least}, not {value}")
        return value

    return check


def _one_of(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be {' or '.join(allowed)}, not {value!r}")
        return value

    return check


def _host_port(value: str) -> str:
    if value and not re.fullmatch(r"[^\s:]*:\d{1,5}", value):
        raise ValueError(f"must be host:port, not {value!r}")
    return value


def _https_url(value: str) -> str:
    if not value.startswith("https://"):
        raise ValueError(f"must be an https URL, not {value!r}")
    return value


def _repository_patterns(value: Sequence[str]) -> tuple[str, ...]:
    """`myorg/*`, `otherorg/app`: repositories or namespaces (glob) of Docker Hub, a bare name
    being an official image; another registry's are qualified as the store names them
    (`ghcr.io/myorg/*`, `registry.corp.example:5000/team/*`); `docker.io/` is Docker Hub's."""
    patterns = []
    for item in value:
        for p in item.split(","):
            if not (p := p.strip().lower()):
                continue
            if not re.fullmatch(r"[a-z0-9*?._/:-]+", p) or p.startswith("/") or p.endswith("/"):
                raise ValueError(f"not a repository or namespace pattern: {p!r} (e.g. myorg/*, myorg/app or ghcr.io/myorg/*)")
            registry, rest = registries.split_reference(p)
            if registry != registries.DOCKER_HUB:
                if not re.fullmatch(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::\d{1,5})?", registry) or not rest or ":" in rest \
                        or rest.startswith("/"):
                    raise ValueError(f"not a repository or namespace pattern: {p!r} (e.g. ghcr.io/myorg/*)")
                patterns.append(f"{registry}/{rest}")
            elif ":" in rest:
                raise ValueError(f"not a repository or namespace pattern: {p!r} (e.g. myorg/* or myorg/app)")
            else:
                patterns.append(rest if "/" in rest else "library/" + rest)
    return tuple(patterns)


def parse_parents(value: str) -> tuple[tuple[str, str], ...]:
    """hubcache_parent (and `hubcache doctor --parent`): `https://mirror.internal[:port]` (Docker Hub's parent)
    or `docker.io=https://a,quay.io=https://b`."""
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        if not (item := item.strip()):
            continue
        registry, sep, url = item.rpartition("=") if "=" in item else ("", "", item)
        registry = registries.split_reference(registry.strip() + "/x")[0] if sep else registries.DOCKER_HUB
        url = url.strip().rstrip("/")
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", url):
            raise ValueError(f"not a parent registry's root URL: {url!r} (e.g. https://mirror.internal:5000)")
        if registry in out:
            raise ValueError(f"two parents for {registry}")
        out[registry] = url
    return tuple(out.items())


def parse_parent_prefix(value: str) -> str:
    value = value.strip("/")
    if value and not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", value):
        raise ValueError(f"not a repository prefix: {value!r} (e.g. dockerhub-proxy)")
    return value


def _registries(value: Sequence[str]) -> RegistryTable:
    return registries.parse(value)


def _hosts(value: Sequence[str]) -> frozenset[str]:
    return frozenset(h.lower() for h in value)


@dataclass(frozen=True)
class Settings:
    """Every option hubcache reads, parsed. Field names drop the `hubcache_` prefix."""

    store: str = os.path.join(DEFAULT_HOME, "store")
    max_size: int = 0
    direct_min: int | None = 2 << 20
    tag_ttl: int = 300
    registries: RegistryTable = RegistryTable()
    auth_hosts: frozenset[str] = frozenset(AUTH_HOSTS)
    cdn_hosts: frozenset[str] = frozenset(CDN_HOSTS)
    auth_realm: str = "https://auth.docker.io/token"
    auth_service: str = "registry.docker.io"
    credentials: str = ""
    docker_config: str = ""
    budget_reserve: int = 0
    pool_private: tuple[str, ...] = ()
    metrics_listen: str = ""
    metrics_clients: int = 100
    client_max: int = 8192
    client_max_per_address: int = 1024
    client_idle: int = 30
    upstream_timeout: int = 15
    connect_timeout: int = 5
    backoff: int = 30
    upstream_concurrency: int = 16
    upstream_rate: int = 20
    upstream_burst: int = 40
    pin_time: float | None = None
    offline_private: str = "refuse"
    open_proxy: str = "refuse"
    offline: bool = False
    log_format: str = "text"
    log_level: str = "info"
    # mitmproxy's own options that hubcache's own connections honour
    ssl_insecure: bool = False
    ssl_verify_upstream_trusted_ca: str | None = None
    ssl_verify_upstream_trusted_confdir: str | None = None
    tcp_timeout: int = 60
    egress_proxy: tuple[str, int] | None = None  # from mitmproxy's `mode` (upstream:URL)
    upstream_auth: str | None = dataclasses.field(default=None, repr=False)  # mitmproxy's upstream_auth
    upstream_auth_file: str = ""
    parent: tuple[tuple[str, str], ...] = ()  # (registry name, the parent's root URL)
    parent_ca: str = ""
    parent_credentials: str = ""
    parent_prefix: str = ""
    parent_tags: str = "hub"
    parent_fallback: str = "hub"

    @property
    def parent_tls(self) -> TLSSettings:
        """How the parent's certificate is checked: as every upstream's is, and against
        hubcache_parent_ca too (for the parent's connections only, and the storage hosts it
        redirects to: the registries' own verification is not changed)."""
        return dataclasses.replace(self.tls, also_ca=self.parent_ca or None)

    @property
    def egress(self) -> Egress | None:
        """The egress proxy with the login of `upstream_auth` (hubcache_upstream_auth_file is read
        by upstream/credentials.py, which replaces the login), or None: connect directly."""
        if self.egress_proxy is None:
            return None
        return Egress(*self.egress_proxy, login=self.upstream_auth)

    @property
    def tls(self) -> TLSSettings:
        return TLSSettings(self.ssl_insecure, self.ssl_verify_upstream_trusted_ca, self.ssl_verify_upstream_trusted_confdir)

    @functools.cached_property  # asked on every request (health, probes): derived once per Settings
    def intercepted_hosts(self) -> frozenset[str]:
        return frozenset(self.registries.exact_hosts()) | self.auth_hosts | self.cdn_hosts

    @property
    def auth_realm_host(self) -> str:
        """Docker Hub's token realm's host (auth.docker.io)."""
        return (urlsplit(self.auth_realm).hostname or "").lower()

    @functools.cached_property
    def registry_hosts(self) -> frozenset[str]:
        """Docker Hub's host names (one registry), as far as the table keeps them."""
        return frozenset(h for h in REGISTRY_HOSTS if self.registries.lookup(h) is not None)

    @classmethod
    def parse(cls, options: Any, updated: Collection[str], previous: Settings | None = None) -> Settings:
        """The settings after `updated` options changed: only those are parsed again (all of
        them when there is no `previous`). Raises SettingsError naming the option and value."""
        changes: dict[str, Any] = {}
        for option, (field, parse) in _PARSERS.items():
            if previous is not None and option not in updated:
                continue
            # upstream_auth belongs to one of mitmproxy's addons, absent where it is not loaded
            value = getattr(options, option, None) if option == "upstream_auth" else getattr(options, option)
            try:
                changes[field] = parse(value)
            except ValueError as e:
                raise SettingsError(f"{option}: {e}") from e
        return dataclasses.replace(previous or cls(), **changes)


def _same(value: Any) -> Any:
    return value


# option name -> (Settings field, parser). A parser raises ValueError with what is wrong.
_PARSERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "hubcache_store": ("store", _same),
    "hubcache_max_size": ("max_size", parse_size),
    "hubcache_direct_min": ("direct_min", direct_min),
    "hubcache_tag_ttl": ("tag_ttl", _at_least(0)),
    "hubcache_registries": ("registries", _registries),
    "hubcache_auth_hosts": ("auth_hosts", _hosts),
    "hubcache_cdn_hosts": ("cdn_hosts", _hosts),
    "hubcache_auth_realm": ("auth_realm", _https_url),
    "hubcache_auth_service": ("auth_service", _same),
    "hubcache_credentials": ("credentials", _same),
    "hubcache_docker_config": ("docker_config", _same),
    "hubcache_budget_reserve": ("budget_reserve", _same),
    "hubcache_pool_private": ("pool_private", _repository_patterns),
    "hubcache_metrics_listen": ("metrics_listen", _host_port),
    "hubcache_metrics_clients": ("metrics_clients", _at_least(0)),
    "hubcache_client_max": ("client_max", _at_least(0)),
    "hubcache_client_max_per_address": ("client_max_per_address", _at_least(0)),
    "hubcache_client_idle": ("client_idle", _at_least(0)),
    "hubcache_upstream_timeout": ("upstream_timeout", _at_least(1)),
    "hubcache_connect_timeout": ("connect_timeout", _at_least(1)),
    "hubcache_backoff": ("backoff", _at_least(0)),
    "hubcache_upstream_concurrency": ("upstream_concurrency", _at_least(0)),
    "hubcache_upstream_rate": ("upstream_rate", _at_least(0)),
    "hubcache_upstream_burst": ("upstream_burst", _at_least(1)),
    "hubcache_pin_time": ("pin_time", parse_time),
    "hubcache_offline_private": ("offline_private", _one_of("refuse", "allow")),
    "hubcache_offline": ("offline", _same),
    "hubcache_open_proxy": ("open_proxy", _one_of("refuse", "allow")),
    "hubcache_log_format": ("log_format", _one_of("text", "json")),
    "hubcache_log_level": ("log_level", _one_of("debug", "info", "warning", "error")),
    "ssl_insecure": ("ssl_insecure", _same),
    "ssl_verify_upstream_trusted_ca": ("ssl_verify_upstream_trusted_ca", _same),
    "ssl_verify_upstream_trusted_confdir": ("ssl_verify_upstream_trusted_confdir", _same),
    "tcp_timeout": ("tcp_timeout", _same),
    "mode": ("egress_proxy", egress_proxy),
    "upstream_auth": ("upstream_auth", upstream_login),
    "hubcache_upstream_auth_file": ("upstream_auth_file", _same),
    "hubcache_parent": ("parent", parse_parents),
    "hubcache_parent_ca": ("parent_ca", _same),
    "hubcache_parent_credentials": ("parent_credentials", _same),
    "hubcache_parent_prefix": ("parent_prefix", parse_parent_prefix),
    "hubcache_parent_tags": ("parent_tags", _one_of("hub", "parent")),
    "hubcache_parent_fallback": ("parent_fallback", _one_of("hub", "never")),
}


def load(loader: Any) -> None:
    """Declare hubcache's options (`mitmdump --options` lists them with these help texts)."""
    add = loader.add_option
    add("hubcache_store", str, os.path.join(DEFAULT_HOME, "store"), "Directory of hubcache's LMDB store.")
    add("hubcache_direct_min", str, "2m", "Blobs of at least this size are sent by hubcache's own TLS listener through a plain tunnel "
        f"(the client is redirected to {DIRECT_HOST}): faster than mitmproxy's TLS. off: never.")
    add("hubcache_max_size", str, "0", "Size cap of the store (e.g. 50g); least recently used content is evicted. 0: no cap.")
    add("hubcache_tag_ttl", int, 300, "Seconds a tag's manifest is served without asking upstream; after that it is revalidated with a HEAD.")
    add("hubcache_registries", Sequence[str], [], "Registries hubcache caches, besides the default ones (Docker Hub, ghcr.io, quay.io, "
        "gcr.io, *-docker.pkg.dev, registry.k8s.io, mcr.microsoft.com, public.ecr.aws, registry.gitlab.com, nvcr.io): "
        "+host[:port] adds one, -host removes one, a plain list replaces them.")
    add("hubcache_auth_hosts", Sequence[str], list(AUTH_HOSTS), "Hosts of Docker Hub's token realm (auth.docker.io) that hubcache "
        "intercepts; another registry's realm on another host (gitlab.com) is given to clients on the registry's own host instead.")
    add("hubcache_cdn_hosts", Sequence[str], list(CDN_HOSTS), "Blob CDN hosts that registry redirects point at.")
    add("hubcache_auth_realm", str, "https://auth.docker.io/token", "Token realm hubcache fetches its own upstream tokens from.")
    add("hubcache_auth_service", str, "registry.docker.io", "Token service name of the registry.")
    add("hubcache_credentials", str, "", "Stored logins file (TOML or JSON, mode 0600): [[accounts]] username, token or "
        "password, registry (default docker.io).")
    add("hubcache_docker_config", str, os.path.join(os.environ.get("DOCKER_CONFIG", os.path.join(os.path.expanduser("~"), ".docker")), "config.json"),
        "Docker config.json whose logins (auths, credHelpers, credsStore) hubcache uses, per registry host it serves; empty: none.")
    add("hubcache_budget_reserve", int, 0, "When every account has fewer pulls left than this, moved tags are served stale instead of spending them.")
    add("hubcache_pool_private", Sequence[str], [], "Repositories (glob: myorg/*, otherorg/app; other registries qualified: "
        "ghcr.io/myorg/*, registry.corp.example:5000/team/*) whose private content the stored logins may fetch for clients "
        "that did not log in themselves. Default: none, stored logins pull public content only.")
    add("hubcache_metrics_listen", str, "", "host:port for the Prometheus /metrics endpoint (e.g. 127.0.0.1:9090); empty: off.")
    add("hubcache_metrics_clients", int, 100, "Most clients (proxy logins, else addresses) the per-client metrics name; "
        "the rest are counted under 'other'. 0: no per-client metrics.")
    add("hubcache_client_max", int, 8192, "Most client connections open at once; more are closed at once "
        "(each takes up to 3 file descriptors: hubcache raises its soft limit at start). 0: no cap.")
    add("hubcache_client_max_per_address", int, 1024, "Most client connections open at once from one address "
        "(a NAT gateway in front of a fleet is one address). 0: no cap.")
    add("hubcache_client_idle", int, 30, "Seconds a client connection may stay open without sending a whole first "
        "request (CONNECT); then it is closed. After that, tcp_timeout closes a connection with no traffic. 0: off.")
    add("hubcache_upstream_timeout", int, 15, "Seconds hubcache waits for its own upstream requests (tokens, revalidation).")
    add("hubcache_connect_timeout", int, 5, "Seconds to wait for a TCP connection to an upstream host that has not answered recently.")
    add("hubcache_backoff", int, 30, "Seconds an upstream host that failed is not asked again: tags are served stale, misses fail at once.")
    add("hubcache_upstream_concurrency", int, 16, "Most requests of hubcache's own (tokens, manifests, blob downloads, "
        "each for its whole transfer) under way at once to one upstream host; more wait their turn. 0: no cap.")
    add("hubcache_upstream_rate", int, 20, "Most requests per second hubcache itself sends upstream, all hosts together "
        "(Docker Hub's abuse limit counts every request of an address); more wait their turn. 0: no cap.")
    add("hubcache_upstream_burst", int, 40, "Requests that may go at once, above hubcache_upstream_rate, after a quiet spell.")
    add("hubcache_pin_time", str, "", "Serve every tag as it was at this time (e.g. 2026-11-27T10:00:00Z), from the tag history, "
        "without asking upstream: replays a past pipeline.")
    add("hubcache_offline_private", str, "refuse", "When upstream cannot confirm a client may pull a private repository: refuse (default) or allow.")
    add("hubcache_open_proxy", str, "refuse", "Listening on an address other than loopback without a proxyauth login "
        "is refused at start (an open relay); allow: run so on a network you trust.")
    add("hubcache_offline", bool, False, "Never contact upstream: serve what the store has, answer misses with an error.")
    add("hubcache_log_format", str, "text", "text: one line per event, columns as documented; json: every line one JSON object.")
    add("hubcache_upstream_auth_file", str, "", "File (mode 0600) holding the egress proxy's login as user:password, "
        "for mode=upstream:URL; instead of upstream_auth, which `ps` shows.")
    add("hubcache_log_level", str, "info", "Lowest level of hubcache's log lines: debug, info, warning or error.")
    add("hubcache_parent", str, "", "A parent registry (distribution in proxy mode) asked first for blobs and manifests by "
        "digest: https://mirror.internal[:port] for Docker Hub, or docker.io=https://a,quay.io=https://b. Empty: none.")
    add("hubcache_parent_ca", str, "", "CA file trusted besides the usual ones, for the parent's connections only.")
    add("hubcache_parent_credentials", str, "", "File (mode 0600) holding the parent's own login as user:password "
        "(Basic, or for the parent's token realm); never a registry's login.")
    add("hubcache_parent_prefix", str, "", "Repository prefix at the parent (a Harbor proxy-cache project, e.g. dockerhub-proxy).")
    add("hubcache_parent_tags", str, "hub", "Where tags are resolved: hub (hubcache's free HEAD at the registry) or "
        "parent (hosts without the registry's egress).")
    add("hubcache_parent_fallback", str, "hub", "What the parent could not give comes from: hub (the registry) or never (an error).")


def mitmproxy_defaults(options: Any, settings: Settings) -> dict[str, object]:
    """What hubcache needs from mitmproxy and the user did not set: intercept only registry hosts,
    open no upstream connection for a hit, keep memory bounded (HTTP/1.1 back-pressure, streamed
    passthrough), cut a stalled upstream after a minute instead of ten."""
    wanted: dict[str, object] = {}
    if not options.allow_hosts and not options.ignore_hosts:
        hosts = set(settings.registries.patterns) | settings.auth_hosts | settings.cdn_hosts
        wanted["allow_hosts"] = [allow_hosts_pattern(sorted(hosts), CDN_SUFFIXES)]
    if options.connection_strategy != "lazy":
        wanted["connection_strategy"] = "lazy"
    if options.http2:
        wanted["http2"] = False
    if not options.stream_large_bodies:
        wanted["stream_large_bodies"] = "1m"
    if options.tcp_timeout == 600:  # mitmproxy's default
        wanted["tcp_timeout"] = 60
    return wanted
