"""Whether an upstream manifest is what it claims to be (pure: no store, no network)."""

from __future__ import annotations

from hubcache.model import Manifest, Route, sha256_digest


def check(route: Route, content_type: str, claimed: str, body: bytes) -> Manifest | str:
    """The Manifest upstream sent for `route`, or why it is refused: its sha256 must be the
    digest asked for (by digest), and the Docker-Content-Digest upstream claimed (by tag)."""
    digest = sha256_digest(body)
    expected = route.reference if route.by_digest else (claimed or digest)
    if digest != expected or (claimed and claimed != digest):
        return f"upstream manifest hashes to {digest}, expected {expected}"
    return Manifest(digest, content_type.split(";")[0].strip(), body)
