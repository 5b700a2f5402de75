"""Writing one blob as it downloads: chunks handed over in batches, published by commit() only
when its sha256 and size match the digest."""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import time
from collections.abc import Callable
from typing import Protocol

import lmdb

from hubcache.store.blobs import CHUNK_SIZE, pending_record
from hubcache.store.errors import DigestMismatch, StoreError

log = logging.getLogger(__name__)

BATCH_BYTES = 4 * 1024 * 1024  # chunks a download hands over at once, when it is alone
WRITE_BUDGET = 16 * 1024 * 1024  # what all concurrent downloads together hold in batches (two each)
HASH_SPAN = 1024 * 1024  # received bytes hashed at once (while they are still in the CPU's cache)


class BlobSink(Protocol):
    """All a BlobWriter asks of the store (the store's is sink.StoreSink). publish and drop
    return once committed; write_batch at once, with what waits for its commit. Chunks are views
    of the writer's areas, valid until that wait (or publish) returned."""

    def batch_limit(self) -> int:
        """Bytes a write may hold before handing them over, with the writes now counted."""
        ...

    def count_writer(self, delta: int) -> None:
        """One more (+1) or one fewer (-1) write sharing WRITE_BUDGET."""
        ...

    def write_batch(self, blob_id: bytes, first: int, chunks: list[memoryview], pending: bytes) -> Callable[[], None]:
        """Queue chunks `first`, `first` + 1, ... of the write `blob_id` and its pending record;
        returns what waits until they are committed (and raises lmdb.Error if they were not).
        Batches commit in the order they were queued."""
        ...

    def publish(self, digest: str, repository: str, blob_id: bytes, size: int, first: int, chunks: list[memoryview]) -> None:
        """Store the last chunks and make the blob visible under `digest` (one transaction)."""
        ...

    def drop(self, blob_id: bytes) -> None:
        """Delete everything written under `blob_id`."""
        ...


class BlobWriter:
    """Writes one blob under a fresh id; commit() publishes it only if sha256 and size match.

    Not thread-safe: one writer thread drives it (never the event loop: LMDB commits fsync).

    A full batch is handed to the store's commit thread and the writer goes on receiving into
    its second area meanwhile: the download waits for a commit (and its fdatasync) only when the
    next batch is full before the last one is committed, not for every batch.
    """

    def __init__(self, sink: BlobSink, digest: str, expected_size: int | None, repository: str) -> None:
        self._sink = sink
        self.digest = digest
        self.expected_size = expected_size
        self.repository = repository
        self.blob_id = os.urandom(8)
        self.size = 0
        self._hash = hashlib.sha256()
        # Received bytes not yet written: two areas, allocated once and reused, so that no chunk
        # costs an allocation: one is filled while the other's batch is being committed. Each is
        # an anonymous mapping, not a bytearray: a page costs memory only once written, so a
        # download that shares WRITE_BUDGET with 15 others and flushes every 512 KiB holds about
        # 1 MiB, not the 2 * BATCH_BYTES that bytearray() zero-fills.
        self._area: mmap.mmap | None = None
        self._view: memoryview | None = None  # of _area
        self._spare: mmap.mmap | None = None  # the other area: its batch may be committing
        self._spare_view: memoryview | None = None
        self._hashed = 0  # the area's bytes up to here are hashed
        self._limit = sink.batch_limit()  # the batch size, as the sink said at the last hand-over
        self._committing: Callable[[], None] | None = None  # waits for the batch handed over last
        self._fill = 0
        self._index = 0  # chunks written so far
        self._registered = False
        self._done = False
        self._failed: Exception | None = None  # storing failed; hashing goes on so the client is still checked
        self._started = time.time()
        self._counted = False

    def write(self, data: bytes) -> None:
        """Take the next bytes of the blob (copied into the area)."""
        view = memoryview(data)
        while view:
            space = self.space()
            n = min(len(space), len(view))
            space[:n] = view[:n]
            self.wrote(n)
            view = view[n:]

    def space(self) -> memoryview:
        """Where the next bytes of the blob may be received (e.g. with recv_into): the free end
        of the area, never empty. Valid until wrote() is called; say what went there with it."""
        if self._view is None:
            self._area = mmap.mmap(-1, BATCH_BYTES)
            self._view = memoryview(self._area)
        return self._view[self._fill :]

    def wrote(self, n: int) -> None:
        """`n` more bytes of the blob are at the start of space(). Hashed in spans of HASH_SPAN
        (hashlib lets the GIL go for each call), handed over once the batch is full."""
        self._fill += n
        self.size += n
        if self._failed:  # nothing is stored any more: hash and forget
            self._hash_up()
            self._fill = self._hashed = 0
            return
        if self._fill - self._hashed >= HASH_SPAN:
            self._hash_up()
        if self._fill >= self._limit or self._fill == BATCH_BYTES:
            try:
                self._flush(wait=False)
            except lmdb.Error as e:
                self._give_up(e)

    def _hash_up(self) -> None:
        """Hash the area's bytes not hashed yet."""
        if self._view is not None and self._fill > self._hashed:
            self._hash.update(self._view[self._hashed : self._fill])
        self._hashed = self._fill

    @property
    def failed(self) -> Exception | None:
        """Why storing failed (the bytes are still hashed), or None."""
        return self._failed

    def register(self) -> None:
        """Make the write visible as in progress (readers can follow it with Store.progress),
        and count it among the concurrent writes that share WRITE_BUDGET."""
        if not self._counted:
            self._counted = True
            self._sink.count_writer(+1)
        if not self._registered:
            self._flush()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._sink.count_writer(-1)

    def flush(self, wait: bool = True) -> None:
        """Write the whole chunks received so far, so that readers following the blob get them;
        with `wait`, return once they and every batch handed over before are committed. A
        failure to store them sets `failed`, as write() does."""
        if self._failed:
            return
        try:
            if self._fill >= CHUNK_SIZE:
                self._flush(wait)
            elif wait:
                self._settle()
        except lmdb.Error as e:
            self._give_up(e)

    def _give_up(self, e: lmdb.Error) -> None:
        """Storing failed (a full disk): drop what was written; the bytes are still hashed."""
        log.debug("store: writing %s failed: %s", self.digest, e)  # the flight's end says so
        self._failed = e
        self._discard()

    def _whole_chunks(self, final: bool = False) -> tuple[int, list[memoryview]]:
        """The index of the area's first chunk and views of its whole chunks, with `final` the
        last partial one too; the views are valid until the area is next written."""
        first = self._index
        area = self._view
        if area is None:
            return first, []
        end = self._fill if final else self._fill - self._fill % CHUNK_SIZE
        batch = [area[offset : min(offset + CHUNK_SIZE, end)] for offset in range(0, end, CHUNK_SIZE)]
        self._index += len(batch)
        return first, batch

    def _settle(self) -> None:
        """Wait until the batch handed over last is committed (raises lmdb.Error if it was not)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            committing()

    def _flush(self, wait: bool = True) -> None:
        """Hand the area's whole chunks over; the area they leave is filled next only after they
        are committed. With `wait`, return once they are."""
        self._settle()  # the spare area is free again, and a failed batch stops the write here
        self._hash_up()  # before the bytes move on
        first, batch = self._whole_chunks()
        pending = pending_record(self.digest, self._started, self.expected_size, self._index * CHUNK_SIZE)
        self._committing = self._sink.write_batch(self.blob_id, first, batch, pending)
        self._registered = True
        self._limit = self._sink.batch_limit()
        if batch:  # the partial chunk left over moves to the front of the other area
            assert self._view is not None  # the batch was a view of it
            if self._spare_view is None:
                self._spare = mmap.mmap(-1, BATCH_BYTES)
                self._spare_view = memoryview(self._spare)
            done = len(batch) * CHUNK_SIZE
            rest = self._fill - done
            self._spare_view[:rest] = self._view[done : self._fill]
            self._area, self._spare = self._spare, self._area
            self._view, self._spare_view = self._spare_view, self._view
            self._fill = self._hashed = rest
        if wait:
            self._settle()

    def commit(self) -> None:
        """Verify and publish. Raises DigestMismatch (and drops everything) when the bytes are
        wrong, StoreError when they could not be stored."""
        self._hash_up()
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest or (self.expected_size is not None and self.size != self.expected_size):
            self.abort()
            raise DigestMismatch(
                f"upstream sent {self.size} bytes hashing to {actual}, expected {self.digest}"
                + (f" ({self.expected_size} bytes)" if self.expected_size is not None else "")
            )
        if self._failed:
            self._discard()
            raise StoreError(f"{self.digest} was not stored: {self._failed}")
        first, batch = self._whole_chunks(final=True)
        try:
            self._settle()  # every earlier chunk is committed before the record can point at them
            self._sink.publish(self.digest, self.repository, self.blob_id, self.size, first, batch)
        except lmdb.Error as e:
            self._discard()
            raise StoreError(f"{self.digest} was not stored: {e}") from e
        self._done = True
        self._uncount()
        self._drop_areas()

    def _drop_areas(self) -> None:
        """Let the areas go (unmapped once no view of them is left)."""
        self._area = self._spare = None
        self._view = self._spare_view = None
        self._fill = self._hashed = 0

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()

    def _discard(self) -> None:
        self._uncount()
        try:
            self._settle()  # a batch still committing would write chunks after the drop
        except lmdb.Error:
            pass  # it was not written
        self._hash_up()  # the client is still checked against the digest
        self._drop_areas()
        if self._registered:
            self._sink.drop(self.blob_id)
            self._registered = False
