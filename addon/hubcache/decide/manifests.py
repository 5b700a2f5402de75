"""Whether an upstream manifest is what it claims to be, and what a HEAD says a tag points to
(pure: no store, no network)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hubcache.model import Manifest, Route, is_digest, sha256_digest


def check(route: Route, content_type: str, claimed: str, body: bytes) -> Manifest | str:
    """The Manifest upstream sent for `route`, or why it is refused: its sha256 must be the
    digest asked for (by digest), and the Docker-Content-Digest upstream claimed (by tag)."""
    digest = sha256_digest(body)
    expected = route.reference if route.by_digest else (claimed or digest)
    if digest != expected or (claimed and claimed != digest):
        return f"upstream manifest hashes to {digest}, expected {expected}"
    return Manifest(digest, content_type.split(";")[0].strip(), body)


@dataclass(frozen=True)
class TagHead:
    """What upstream's answer to a HEAD of a tag says the tag points to."""

    media_type: str
    digest: str
    size: int


def tag_head(header: Callable[[str], str]) -> TagHead | None:
    """TagHead from a 200 answer's headers (`header(name)` gives "" when absent), or None when
    they do not say all of it: then nothing is remembered about the tag."""
    media_type = header("content-type").split(";")[0].strip()
    digest = header("docker-content-digest")
    size = header("content-length")
    if not is_digest(digest) or not media_type or not size.isdigit():
        return None
    return TagHead(media_type, digest, int(size))
