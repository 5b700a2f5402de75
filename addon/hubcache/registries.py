"""Which registries hubcache caches: a table of host patterns, and the name each registry's
content is stored under.

Pure: no mitmproxy, no I/O. A client connects to a host (and port); the table says whether that
host is a registry hubcache serves and which one. Docker Hub answers under three names
(registry-1.docker.io, index.docker.io, docker.io) that are one registry, `docker.io`; every
other host, wildcard entries included (`*-docker.pkg.dev`: each region is a registry of its own),
is a registry named by its host, with `:port` when not 443.

Names in the store: a repository of Docker Hub keeps its bare name (`library/postgres`), so stores
written before other registries were cached stay valid; any other registry's repositories are
stored under `<registry>/<repository>` (`quay.io/prometheus/node-exporter`), as `docker pull`
spells them. The two never collide: a Docker Hub name's first component has no `.` or `:`, and is
never `localhost`, while a registry's name has one of them, or is `localhost`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

DOCKER_HUB = "docker.io"
HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io")
HUB_CHALLENGE = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'

# What a runner's pipelines pull from, cached unless hubcache_registries removes it.
DEFAULT_PATTERNS = (
    *HUB_HOSTS,
    "ghcr.io",
    "quay.io",
    "gcr.io", "*.gcr.io",  # us.gcr.io, eu.gcr.io, asia.gcr.io, marketplace.gcr.io ...
    "*-docker.pkg.dev",  # Artifact Registry, one host per location
    "registry.k8s.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
    "registry.gitlab.com",
    "nvcr.io",
)

_HOST_RE = re.compile(r"(?:\*|\*?[a-z0-9-]+)(?:\.[a-z0-9-]+)*(?::\d{1,5})?|\[[0-9a-f:]+\](?::\d{1,5})?")


@dataclass(frozen=True)
class Registry:
    """One registry as hubcache serves it."""

    name: str  # docker.io, quay.io, registry.corp.example:5000
    budget: bool = False  # upstream reports a pull budget per account (Docker Hub): the pool's logic applies
    offline_challenge: str = ""  # the /v2/ challenge to give before one was seen (Docker Hub's only)

    @property
    def is_hub(self) -> bool:
        return self.name == DOCKER_HUB

    def qualify(self, repository: str) -> str:
        """The name the store keeps `repository` of this registry under."""
        return repository if self.is_hub else f"{self.name}/{repository}"


HUB = Registry(DOCKER_HUB, budget=True, offline_challenge=HUB_CHALLENGE)


def host_key(host: str, port: int = 443) -> str:
    """`host` as the table matches it: lower case, no trailing dot, `:port` unless 443."""
    host = host.lower().rstrip(".")
    return host if port == 443 else f"{host}:{port}"


@dataclass(frozen=True)
class RegistryTable:
    """Host patterns (fnmatch globs, `:port` when not 443) of the registries hubcache serves."""

    patterns: tuple[str, ...] = DEFAULT_PATTERNS

    def lookup(self, host: str, port: int = 443) -> Registry | None:
        """The registry a client reaches at host:port, or None when hubcache does not serve it."""
        key = host_key(host, port)
        if not any(fnmatchcase(key, p) for p in self.patterns):
            return None
        if key in HUB_HOSTS:
            return HUB
        return Registry(key)

    def named(self, name: str) -> Registry | None:
        """The registry of a registry's name (`host`, or `host:port` when not 443), or None when
        hubcache does not serve it."""
        host, colon, port = name.rpartition(":")
        return self.lookup(host, int(port)) if colon and port.isdigit() and not host.endswith(":") else self.lookup(name)

    def label(self, name: str) -> str:
        """`name` (a registry's, or a realm host's) as a metric label: itself, except a registry
        matched only by a wildcard entry (`us-docker.pkg.dev`), which is counted under that entry
        (`*-docker.pkg.dev`): clients choose the host, the table bounds the labels."""
        if name == DOCKER_HUB or name in self.patterns:
            return name
        return next((p for p in self.patterns if "*" in p and fnmatchcase(name, p)), name)

    def exact_hosts(self) -> list[str]:
        """The patterns without a wildcard (hosts to intercept by name)."""
        return [p for p in self.patterns if "*" not in p]


def parse(items: Iterable[str], defaults: Sequence[str] = DEFAULT_PATTERNS) -> RegistryTable:
    """hubcache_registries: `+host[:port]` adds to the defaults, `-host[:port]` removes from them;
    plain entries replace the defaults by that list (then + and - apply to it). Entries may also
    be comma-separated. Raises ValueError naming a bad entry."""
    adds: list[str] = []
    removes: set[str] = set()
    whole: list[str] | None = None
    for item in items:
        for raw in item.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            sign, pattern = (entry[0], entry[1:].strip()) if entry[0] in "+-" else ("", entry)
            pattern = pattern.removeprefix("https://").rstrip("/").removesuffix(":443")
            if not _HOST_RE.fullmatch(pattern):
                raise ValueError(f"not a registry host[:port]: {raw.strip()!r} (e.g. +registry.corp.example:5000, -quay.io)")
            if sign == "-":
                removes.add(pattern)
            elif sign == "+":
                adds.append(pattern)
            else:
                whole = (whole or []) + [pattern]
    base = list(defaults) if whole is None else whole
    if removes & set(HUB_HOSTS):  # Docker Hub's three names are one registry: in or out together
        removes.update(HUB_HOSTS)
    wanted = [h for p in base + adds for h in (HUB_HOSTS if p in HUB_HOSTS else (p,))]
    return RegistryTable(tuple(p for p in dict.fromkeys(wanted) if p not in removes))


def split_reference(text: str) -> tuple[str, str]:
    """An image reference's registry and the rest, as Docker splits it: a first component with
    a `.` or `:`, or `localhost`, names the registry; otherwise it is Docker Hub."""
    first, slash, rest = text.strip().partition("/")
    if slash and (first == "localhost" or any(c in first for c in ".:")):
        key = first.lower()
        return (DOCKER_HUB if key in HUB_HOSTS else key.removesuffix(":443")), rest
    return DOCKER_HUB, text.strip()


def image_name(stored: str) -> str:
    """A repository's store name as `docker pull` spells the image: docker.io/library/x, quay.io/org/y."""
    return stored if split_reference(stored)[0] != DOCKER_HUB else f"{DOCKER_HUB}/{stored}"
