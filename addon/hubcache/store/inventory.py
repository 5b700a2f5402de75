"""The store seen by image: which tagged images are stored, what they weigh and when they were last
used (`hubcache ls`), and which digests go when an image, or whatever was not used since a time,
is evicted (`hubcache evict`). An image is its tag's manifest and everything stored that it
references: an index's platform manifests, their configs and layers."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hubcache.store.catalog import references
from hubcache.store.txn import Transactions, Txn


@dataclass(frozen=True)
class CachedImage:
    repository: str  # the store's name: library/postgres, quay.io/org/app
    tag: str
    digest: str  # what the tag points to
    size: int  # bytes stored of it (manifests and blobs; a blob shared with other images counts in each)
    last_used: float  # epoch seconds of its most recent use (0: unknown)
    digests: frozenset[str]  # everything of it that is stored


class Inventory:
    def __init__(self, txns: Transactions) -> None:
        self._txns = txns
        self._tags = txns.open_db(b"tags")
        self._manifests = txns.open_db(b"manifests")
        self._blobs = txns.open_db(b"blobs")
        self._atime = txns.open_db(b"atime")
        self._lru = txns.open_db(b"lru")

    def images(self) -> list[CachedImage]:
        """Every tag whose manifest is stored, sorted by repository and tag."""
        return sorted(self._txns.read(self._images), key=lambda i: (i.repository, i.tag, i.digest))

    def _images(self, txn: Txn) -> list[CachedImage]:
        out = []
        for key, raw in txn.cursor(db=self._tags):
            repository, _, tag = bytes(key).decode().rpartition(":")
            for digest in sorted({r["digest"] for r in json.loads(raw).values()}):
                if txn.get(digest.encode(), db=self._manifests) is not None:
                    out.append(self._image(txn, repository, tag, digest))
        return out

    def _image(self, txn: Txn, repository: str, tag: str, digest: str) -> CachedImage:
        seen: set[str] = set()
        size, last, todo = 0, 0.0, [digest]
        while todo:
            d = todo.pop()
            if d in seen:
                continue
            raw = txn.get(d.encode(), db=self._manifests)
            if raw is not None:
                body = bytes(raw).partition(b"\n")[2]
                size += len(body)
                todo += references(body)
            elif (blob := txn.get(d.encode(), db=self._blobs)) is not None:
                size += json.loads(blob)["size"]
            else:
                continue  # referenced but not stored (another platform's manifest, say)
            seen.add(d)
            if (stamp := txn.get(d.encode(), db=self._atime)) is not None:
                last = max(last, struct.unpack(">Q", stamp)[0] / 1000)
        return CachedImage(repository, tag, digest, size, last, frozenset(seen))

    def unused_since(self, cutoff: float) -> list[str]:
        """Digests last used before `cutoff` (epoch seconds), least recently used first."""
        limit = struct.pack(">Q", int(cutoff * 1000))

        def op(txn: Txn) -> list[str]:
            out = []
            for key, _ in txn.cursor(db=self._lru):
                if bytes(key[:8]) >= limit:
                    break
                out.append(bytes(key[8:]).decode())
            return out

        return self._txns.read(op)

    def oldest(self) -> str | None:
        """The least recently used digest."""
        def op(txn: Txn) -> str | None:
            cur = txn.cursor(db=self._lru)
            return bytes(cur.key()[8:]).decode() if cur.first() else None

        return self._txns.read(op)


def only_theirs(images: Iterable[CachedImage], chosen: Iterable[CachedImage]) -> set[str]:
    """The digests of `chosen` that no other stored image uses (what evicting them frees)."""
    picked = list(chosen)
    keys = {(i.repository, i.tag, i.digest) for i in picked}
    kept = set().union(*(i.digests for i in images if (i.repository, i.tag, i.digest) not in keys))
    return set().union(*(i.digests for i in picked)) - kept

