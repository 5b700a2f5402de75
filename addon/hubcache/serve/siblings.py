"""Single flight across the worker processes of `hubcache run --workers N`, which share one store.

Manifest GETs are shared the same way (hooks/manifests.py): one worker asks upstream, the others
wait for it to end and answer from the store, so N workers spend one counted pull, not N.

Each worker keeps its own flights (flights.py). A flight of a worker first claims its digest in
the store (store/claims.py). When a sibling worker holds the claim, the flight downloads nothing:
it follows the sibling's write in the store (`follow`), handing its own clients that write's blob
id, so the blob server streams them the sibling's bytes as they land, exactly as it does for a
download of its own process. When the sibling's download ends without publishing the blob (it
failed, or the worker died and its supervisor dropped its writes), the flight claims the digest
itself and downloads: the download is taken over.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from hubcache.model import BlobInfo
from hubcache.store import Store
from hubcache.store.claims import Claim

POLL_SECONDS = 0.05  # how often a follower looks at a sibling's claim and write


def owner_key(owner: str) -> str:
    """What a claim records of whose download it is: a hash (an owner may name a CDN URL with its
    signature, which the store must not keep)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32] if owner else ""


class Siblings:
    """The store's claims as a flight uses them."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def take(self, digest: str, owner: str) -> Claim | None | bool:
        """None: the download is ours now; True: the blob is stored already; else the live
        sibling's claim (to follow when its owner is ours)."""
        return self._store.claims.take(digest, owner_key(owner))

    def writing(self, digest: str, blob_id: bytes) -> None:
        self._store.claims.writing(digest, blob_id)

    def release(self, digest: str, keep: bool = False) -> None:
        self._store.claims.release(digest, keep=keep)

    def held(self, digest: str) -> Claim | None:
        return self._store.claims.held(digest)

    def blob_info(self, digest: str) -> BlobInfo | None:
        return self._store.blob_info(digest)

    def shares(self, claim: Claim, owner: str) -> bool:
        return claim.owner == owner_key(owner)

    def wait_end(self, name: str, claim: Claim, limit: float = 120) -> None:
        """Block until the sibling's claim on `name` ended (or `limit` seconds passed)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            held = self.held(name)
            if held is None or held.pid != claim.pid:
                return
            time.sleep(POLL_SECONDS)

    def follow(self, digest: str, claim: Claim, on_writing: Callable[[bytes, int], None],
               tick: Callable[[], None] = lambda: None) -> BlobInfo | None:
        """Follow a sibling's download of `digest` until it ends. `on_writing(blob_id, size)` is
        called whenever the download writes under a new blob id (size -1 while unknown), `tick`
        every poll. Returns the stored blob, or None when the download ended without storing it."""
        store, seen = self._store, b""
        while True:
            held = self.held(digest)
            if held is None or held.pid != claim.pid:  # it ended; or its worker died and another took over
                info: BlobInfo | None = store.blob_info(digest)
                if info is not None or held is None or held.owner != claim.owner:
                    return info
                claim = held
            elif held.blob_id and held.blob_id != seen:
                seen = held.blob_id
                state, _, size = store.progress(digest, seen)
                if state != "gone":
                    on_writing(seen, size)
            tick()
            time.sleep(POLL_SECONDS)
