"""Recognise registry requests: which registry object a (host, method, path) asks for.

Pure: no mitmproxy import. Names, tags and digests follow the OCI distribution grammar; anything
that does not parse is reported as an error kind so the addon can answer in the OCI error format.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from hubcache.model import DIGEST_RE, Kind, Route, is_digest

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
    for marker, kind in (("/manifests/", Kind.MANIFEST), ("/blobs/", Kind.BLOB)):
        name, sep, ref = rest.rpartition(marker)
        if not sep:
            continue
        if kind is Kind.BLOB and ref.startswith("uploads"):
            return Route(Kind.OTHER)  # pushes are not cached
        if bad := _check_name(name):
            return bad
        if kind is Kind.BLOB or ":" in ref:
            if bad := _check_digest(ref):
                return bad
        elif not TAG_RE.fullmatch(ref):
            return _invalid("TAG_INVALID", f"invalid tag: {ref[:150]!r}")
        if method not in ("GET", "HEAD"):
            return Route(Kind.OTHER, repository=name, reference=ref)
        return Route(kind, repository=name, reference=ref)
    return Route(Kind.OTHER)


def classify(host: str, method: str, path: str, *, registry_hosts, auth_hosts, cdn_hosts) -> Route | None:
    """Classify a request by host; None when the host is not one hubcache serves."""
    host = host.lower().rstrip(".")
    if host in registry_hosts:
        return classify_registry(method, path)
    if host in auth_hosts:
        if method == "GET" and path.split("?", 1)[0] in ("/token", "/token/"):
            return Route(Kind.TOKEN)
        return Route(Kind.OTHER)
    if host in cdn_hosts:
        return Route(Kind.CDN)
    return None


def parse_image(text: str) -> tuple[str, str | None]:
    """'postgres:12.2', 'docker.io/library/postgres', 'bitnami/redis:7' -> (repository, tag or None)
    as Docker Hub names them (official images live under library/)."""
    ref = text.strip()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    name, tag = ref, None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    if "/" not in name:
        name = f"library/{name}"
    if not NAME_RE.fullmatch(name) or (tag is not None and not TAG_RE.fullmatch(tag)):
        raise ValueError(f"not a Docker Hub image reference: {text!r}")
    return name, tag
