"""Recognise registry requests: which registry object a (host, method, path) asks for.

Pure: no mitmproxy import. Names, tags and digests follow the OCI distribution grammar; anything
that does not parse is reported as an error kind so the addon can answer in the OCI error format.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection
from urllib.parse import unquote

from hubcache.model import DIGEST_RE, Kind, Route, is_digest
from hubcache.registries import DOCKER_HUB, Registry, RegistryTable, split_reference

# OCI distribution spec, "Pulling manifests": repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_ANY_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_NAME_LENGTH = 255


def _invalid(code: str, message: str) -> Route:
    return Route(Kind.INVALID, error_code=code, error_message=message)


def _check_name(name: str) -> Route | None:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        return _invalid("NAME_INVALID", f"invalid repository name: {name[:300]!r}")
    return None


def _check_digest(ref: str) -> Route | None:
    if DIGEST_RE.fullmatch(ref):
        return None
    if _ANY_DIGEST_RE.fullmatch(ref):
        return _invalid("DIGEST_INVALID", f"unsupported digest algorithm or form: {ref[:100]!r}")
    return _invalid("DIGEST_INVALID", f"invalid digest: {ref[:100]!r}")


def classify_registry(method: str, raw_path: str) -> Route:
    """Classify a request on a registry host (registry-1.docker.io and its aliases)."""
    path = raw_path.split("?", 1)[0]
    # Percent-encoding has no place in a registry path; decoding it could smuggle '/' or '..'.
    if "%" in path or "\\" in path:
        if unquote(path) != path:
            return _invalid("NAME_INVALID", "percent-encoded characters are not allowed in registry paths")
    if path in ("/v2", "/v2/"):
        return Route(Kind.ROOT)
    if not path.startswith("/v2/"):
        return Route(Kind.OTHER)
    rest = path[4:]
    if rest.endswith("/tags/list"):
        name = rest[: -len("/tags/list")]
        return bad if (bad := _check_name(name)) else Route(Kind.TAGS if method in ("GET", "HEAD") else Kind.OTHER, name)
    for marker, kind in (("/manifests/", Kind.MANIFEST), ("/blobs/", Kind.BLOB)):
        name, sep, ref = rest.rpartition(marker)
        if not sep:
            continue
        if bad := _check_name(name):
            return bad
        if kind is Kind.BLOB and (ref == "uploads" or ref.startswith("uploads/")):
            return Route(Kind.OTHER, name)  # a blob push: relayed as it comes
        if kind is Kind.BLOB or ":" in ref:
            if bad := _check_digest(ref):
                return bad
        elif not TAG_RE.fullmatch(ref):
            return _invalid("TAG_INVALID", f"invalid tag: {ref[:150]!r}")
        if method not in ("GET", "HEAD"):
            return Route(Kind.MANIFEST_WRITE if kind is Kind.MANIFEST else Kind.OTHER, repository=name, reference=ref)
        return Route(kind, repository=name, reference=ref)
    name, sep, _ = rest.rpartition("/referrers/")
    if sep and not _check_name(name):
        return Route(Kind.OTHER, name)  # OCI 1.1 referrers: relayed with a token for the repository
    return Route(Kind.OTHER)


def classify(host: str, method: str, path: str, *, registries: RegistryTable, auth_hosts: Collection[str],
             cdn_hosts: Collection[str], port: int = 443, token_paths: Collection[str] = ()) -> Route | None:
    """Classify a request by host; None when the host is not one hubcache serves. `token_paths`:
    the paths of the token realms known on this host (a registry's realm may be on its own host:
    ghcr.io/token, quay.io/v2/auth)."""
    host = host.lower().rstrip(".")
    bare = path.split("?", 1)[0].rstrip("/") or "/"
    registry = registries.lookup(host, port)
    if method == "GET" and bare in token_paths:
        return Route(Kind.TOKEN, registry=registry.name if registry else DOCKER_HUB)
    if registry is not None:
        route = classify_registry(method, path)
        if not route.repository:
            return dataclasses.replace(route, registry=registry.name)
        if registry.is_hub:  # stored under its own name
            return route
        return dataclasses.replace(route, registry=registry.name, name=route.repository,
                                   repository=registry.qualify(route.repository))
    if host in auth_hosts:
        return Route(Kind.TOKEN if method == "GET" and bare == "/token" else Kind.OTHER)
    if host in cdn_hosts:
        return Route(Kind.CDN)
    return None


def logged_registry(route: Route, host: str, registries: RegistryTable, hub_realm_host: str, port: int = 443) -> str:
    """The registry a request is logged and counted under: its route's (docker.io on Docker Hub's
    hosts, its realm's and its CDN's), except a token realm's on a host of its own other than
    Docker Hub's (gitlab.com/jwt/auth), whose request names no registry: that host."""
    host = host.lower().rstrip(".")
    if route.kind in (Kind.TOKEN, Kind.OTHER) and host != hub_realm_host and registries.lookup(host, port) is None:
        return host
    return route.registry


def parse_image(text: str) -> tuple[str, str | None]:
    """An image reference as `docker pull` takes it -> (repository, tag or digest, or None) on Docker Hub.

    `postgres:12.2` -> ("library/postgres", "12.2"); `docker.io/bitnami/redis` -> ("bitnami/redis",
    None); `alpine@sha256:<hex>` and `alpine:3@sha256:<hex>` -> ("library/alpine", "sha256:<hex>").
    Docker's normalisation, for Docker Hub only (the only registry hubcache caches):
    - a first component with a `.` or `:`, or `localhost`, names the registry: docker.io,
      index.docker.io and registry-1.docker.io (Hub's API host) are stripped, any other is an error;
    - a one-component name is an official image, under `library/`;
    - a digest wins over a tag (`docker pull` drops the tag); only sha256, the one hubcache serves;
    - neither tag nor digest gives None: the caller picks its default (`docker pull` takes latest).
    Names and tags follow the OCI grammar (NAME_RE, TAG_RE). Anything else raises ValueError.
    """
    ref = text.strip()
    domain, slash, path = ref.partition("/")
    if slash and (domain == "localhost" or any(c in domain for c in ".:")):
        if domain not in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            raise ValueError(f"{text!r} is not on Docker Hub but on {domain}")
        ref = path
    ref, at, digest = ref.partition("@")
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    if "/" not in name:
        name = f"library/{name}"
    bad_tag = tag is not None and not TAG_RE.fullmatch(tag)
    if not NAME_RE.fullmatch(name) or bad_tag or (at and not is_digest(digest)):
        raise ValueError(f"not a Docker Hub image reference: {text!r}")
    return name, digest if at else tag


def parse_reference(text: str) -> tuple[str, str | None]:
    """An image reference on any registry -> (its store name, tag or digest or None):
    `quay.io/org/app:v1` -> ("quay.io/org/app", "v1"), `postgres:12.2` -> ("library/postgres",
    "12.2") as parse_image gives for Docker Hub. Raises ValueError."""
    registry, rest = split_reference(text)
    if registry == DOCKER_HUB:
        return parse_image(rest)
    ref, at, digest = rest.partition("@")
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    bad_tag = tag is not None and not TAG_RE.fullmatch(tag)
    if not NAME_RE.fullmatch(name) or bad_tag or (at and not is_digest(digest)):
        raise ValueError(f"not an image reference: {text!r}")
    return Registry(registry).qualify(name), digest if at else tag
