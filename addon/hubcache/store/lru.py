"""What the size cap needs: the total size of the content, when each digest was last used, which
digests are being read right now (pinned), and eviction of the least recently used."""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from hubcache import logs
from hubcache.store.txn import Transactions, Txn

log = logging.getLogger(__name__)

EVICT_TO = 0.9  # after eviction, content is at most this share of the cap


class Lru:
    """The `atime` table (digest -> last use, 8 bytes big-endian ms), its index `lru` (those 8
    bytes + digest, so a cursor walks from the least recently used) and `meta`'s size total.
    Uses are buffered (touch) and written in batches (flush): a read must not wait for a write
    transaction. Methods taking a `txn` work inside a caller's write transaction."""

    def __init__(self, txns: Transactions, clock: Callable[[], float]) -> None:
        self._txns = txns
        self._clock = clock
        self._atime = txns.open_db(b"atime")
        self._lru = txns.open_db(b"lru")
        self._meta = txns.open_db(b"meta")
        self._pinned: Counter[str] = Counter()
        self._pin_lock = threading.Lock()
        self._touched: dict[str, int] = {}
        self._touch_lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- size ---------------------------------------------------------------------------------

    def size(self) -> int:
        raw = self._txns.read(lambda txn: txn.get(b"size", db=self._meta))
        return int(raw) if raw else 0

    def add_size(self, txn: Txn, delta: int) -> None:
        raw = txn.get(b"size", db=self._meta)
        self.set_size(txn, (int(raw) if raw else 0) + delta)

    def set_size(self, txn: Txn, size: int) -> None:
        txn.put(b"size", str(size).encode(), db=self._meta)

    # -- access times -------------------------------------------------------------------------

    def used_now(self, txn: Txn, key: bytes) -> None:
        """Record new content as used now (which also makes it a candidate for eviction)."""
        self._set_atime(txn, key, self._now_ms())

    def touch(self, digest: str) -> None:
        """Note a use of stored content; written by the next flush."""
        with self._touch_lock:
            self._touched[digest] = self._now_ms()

    def flush(self) -> None:
        """Write the uses noted since the last flush (of content still stored)."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return

        def op(txn: Txn) -> None:
            for digest, atime in touched.items():
                key = digest.encode()
                if txn.get(key, db=self._atime) is not None:
                    self._set_atime(txn, key, atime)

        self._txns.write(op)

    def _set_atime(self, txn: Txn, key: bytes, atime: int) -> None:
        old = txn.get(key, db=self._atime)
        if old is not None:
            txn.delete(old + key, db=self._lru)
        packed = struct.pack(">Q", atime)
        txn.put(key, packed, db=self._atime)
        txn.put(packed + key, b"", db=self._lru)

    def forget(self, txn: Txn, key: bytes) -> None:
        """Drop a deleted digest's access time and its place in the index."""
        old = txn.get(key, db=self._atime)
        if old is not None:
            txn.delete(old + key, db=self._lru)
            txn.delete(key, db=self._atime)

    # -- pins and eviction --------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, digest: str) -> Iterator[None]:
        """Keep `digest` from being evicted meanwhile (it is being read)."""
        with self._pin_lock:
            self._pinned[digest] += 1
        try:
            yield
        finally:
            with self._pin_lock:
                self._pinned[digest] -= 1
                if self._pinned[digest] <= 0:
                    del self._pinned[digest]

    def evict(self, max_size: int, delete: Callable[[str], None]) -> None:
        """Past `max_size` (0: no cap), delete the least recently used unpinned content until
        it is down to EVICT_TO of the cap."""
        if not max_size or self.size() <= max_size:
            return
        self.flush()
        target = int(max_size * EVICT_TO)
        while self.size() > target:
            victim = self._txns.read(self._oldest_unpinned)
            if victim is None:
                logs.event(log, logging.WARNING, "store_full",
                           f"store over its cap ({max_size >> 20} MiB) but everything left is being read: nothing "
                           "evicted now (raise hubcache_max_size if this repeats)", max_size=max_size, size=self.size())
                return
            delete(victim)

    def _oldest_unpinned(self, txn: Txn) -> str | None:
        with self._pin_lock:
            pinned = set(self._pinned)
        for key, _ in txn.cursor(db=self._lru):
            digest = key[8:].decode()
            if digest not in pinned:
                return digest
        return None
