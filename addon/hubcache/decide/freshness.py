"""The tag freshness policy: serve, revalidate with a HEAD, or fetch.

Pure. A HEAD on a manifest does not count against Docker Hub's pull limit; a GET does.
"""

from __future__ import annotations

import enum

from hubcache.model import TagRecord


class Decision(enum.Enum):
    HIT = "hit"  # fresh: serve from the store, no upstream request
    REVALIDATE = "revalidate"  # stale: HEAD upstream, serve from the store if the digest is unchanged
    FETCH = "fetch"  # nothing usable cached: GET upstream


def decide(record: TagRecord | None, manifest_cached: bool, now: float, ttl: float) -> Decision:
    if record is None or not manifest_cached:
        return Decision.FETCH
    if now - record.confirmed < ttl:
        return Decision.HIT
    return Decision.REVALIDATE
