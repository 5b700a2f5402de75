"""How a BlobWriter's batches reach the tables: through group commit, with the chunks, the
pending record and, at publishing, the bookkeeping of the other tables in the same transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable

from hubcache.store.blobs import CHUNK_SIZE, Blobs
from hubcache.store.catalog import Catalog
from hubcache.store.lru import Lru
from hubcache.store.txn import Transactions, Txn
from hubcache.store.writer import BATCH_BYTES, WRITE_BUDGET


class StoreSink:
    """The store as its BlobWriters see it (writer.BlobSink)."""

    def __init__(self, txns: Transactions, blobs: Blobs, catalog: Catalog, lru: Lru) -> None:
        self._txns = txns
        self._blobs = blobs
        self._catalog = catalog
        self._lru = lru
        self._writers = 0  # blob writes in progress (BlobWriter between register and commit/abort)
        self._lock = threading.Lock()

    def batch_limit(self) -> int:
        """Bytes a download may hold before handing them over: BATCH_BYTES alone, a share of
        WRITE_BUDGET when many run at once (group commit keeps the syncs few either way). A
        download holds two batches, the one being committed and the one it fills meanwhile."""
        return max(CHUNK_SIZE, min(BATCH_BYTES, WRITE_BUDGET // (2 * max(self._writers, 1))))

    def count_writer(self, delta: int) -> None:
        with self._lock:
            self._writers += delta

    def write_batch(self, blob_id: bytes, first: int, chunks: list[memoryview], pending: bytes) -> Callable[[], None]:
        nbytes = len(chunks) * CHUNK_SIZE
        committed = self._txns.group_later(lambda txn: self._blobs.write_batch(txn, blob_id, first, chunks, pending), nbytes)

        def wait() -> None:
            committed()
            self._txns.touched_pages(nbytes)

        return wait

    def publish(self, digest: str, repository: str, blob_id: bytes, size: int, first: int, chunks: list[memoryview]) -> None:
        key = digest.encode()

        def op(txn: Txn) -> None:
            self._catalog.note_repository(txn, key, repository)
            if self._blobs.publish(txn, key, blob_id, size, first, chunks):
                self._lru.add_size(txn, size)
                self._lru.used_now(txn, key)

        self._txns.group(op, len(chunks) * CHUNK_SIZE)

    def drop(self, blob_id: bytes) -> None:
        self._blobs.drop(blob_id)
