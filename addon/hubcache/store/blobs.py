"""Blobs: a record per digest, the bytes as chunks under a random blob id, and the writes in
progress (`pending`), which readers follow as they grow.

Nothing becomes visible until its sha256 and size match its digest: a blob's chunks are written
under a fresh id registered in `pending`, and only the publishing transaction writes the record.
Whatever is left in `pending` when the store opens was interrupted, and is deleted (recover)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hubcache import logs
from hubcache.model import BlobInfo
from hubcache.store import pages
from hubcache.store.errors import StoreError
from hubcache.store.txn import Transactions, Txn

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024  # large enough for few keys, small enough to keep LMDB's free list healthy
DROP_RELEASE_CHUNKS = 16  # chunks deleted between giving back the map pages their deletion read


def chunk_key(blob_id: bytes, index: int) -> bytes:
    """Blob id (8 bytes) + chunk index (4 bytes, big-endian): a blob's chunks sort together, in order."""
    return blob_id + struct.pack(">I", index)


def pending_record(digest: str, started: float, expected_size: int | None, flushed: int) -> bytes:
    """What readers of an unfinished blob need: its size, and how many bytes are written."""
    return json.dumps({
        "digest": digest, "started": started, "size": expected_size,
        "flushed": flushed, "chunk_size": CHUNK_SIZE, "pid": os.getpid(),  # whose write (workers share a store)
    }).encode()


def matches(info: BlobInfo, pieces: Iterable[bytes]) -> bool:
    """Whether a blob's bytes are as long as its record says and hash to its digest."""
    h, n = hashlib.sha256(), 0
    for piece in pieces:
        h.update(piece)
        n += len(piece)
    return n == info.size and "sha256:" + h.hexdigest() == info.digest


class Blobs:
    """The `blobs`, `chunks` and `pending` tables, and data.mdb opened for reading chunks by
    offset. Methods taking a `txn` work inside a caller's write transaction."""

    def __init__(self, txns: Transactions, path: Path) -> None:
        self._txns = txns
        self._blobs = txns.open_db(b"blobs")
        self._chunks = txns.open_db(b"chunks")
        self._pending = txns.open_db(b"pending")
        self._data = os.open(path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)  # blob reads (pread)

    def close(self) -> None:
        os.close(self._data)

    # -- reading ------------------------------------------------------------------------------

    def info(self, digest: str) -> BlobInfo | None:
        raw = self._txns.read(lambda txn: txn.get(digest.encode(), db=self._blobs))
        return None if raw is None else _info(digest, raw)

    def has(self, txn: Txn, key: bytes) -> bool:
        return txn.get(key, db=self._blobs) is not None

    def infos(self) -> list[BlobInfo]:
        rows = self._txns.read(lambda txn: list(txn.cursor(db=self._blobs)))
        return [_info(key.decode(), raw) for key, raw in rows]

    def progress(self, digest: str, blob_id: bytes) -> tuple[str, int, int]:
        def op(txn: Txn) -> tuple[str, int, int]:
            raw = txn.get(digest.encode(), db=self._blobs)
            if raw is not None:
                r = json.loads(raw)
                if bytes.fromhex(r["id"]) == blob_id:
                    return ("published", r["size"], r["size"])
                return ("gone", 0, 0)
            raw = txn.get(blob_id, db=self._pending)
            if raw is None:
                return ("gone", 0, 0)
            r = json.loads(raw)
            size = r.get("size")
            return ("pending", r.get("flushed", 0), -1 if size is None else size)

        return self._txns.read(op)

    def pieces(self, info: BlobInfo, start: int, end: int | None, buf: memoryview) -> Iterator[memoryview]:
        """Walk the chunks of [start, end). Each piece is read into `buf` with pread from
        data.mdb, at the file offset of the chunk's pages, inside a read transaction (which keeps
        those pages from being reused), and yielded after it ended. Not through LMDB's map (see
        pages.py for why that costs RSS), unless /proc/self/maps cannot say where the map is."""
        end = info.size if end is None else min(end, info.size)
        pos = start
        while pos < end:
            index, offset = divmod(pos, info.chunk_size)
            key = chunk_key(info.blob_id, index)
            with self._txns.reading() as txn:
                chunk = txn.get(key, db=self._chunks)  # a pointer into the map; LMDB read only the page header
                if chunk is None:
                    raise StoreError(f"chunk {index} of {info.digest} is missing")
                n = min(len(chunk) - offset, end - pos)
                address, ranges = pages.address_of(chunk), self._txns.map_ranges()
                where = pages.file_offset(ranges, address)
                piece = buf[:n]
                if where is None:  # no /proc/self/maps to say where: a copy through the map
                    piece[:] = chunk[offset : offset + n]
                    got = n
                else:
                    got = os.preadv(self._data, [piece], where + offset)
                pages.release(pages.around(ranges, address))  # LMDB read the page header: its folio got mapped
            if got != n:
                raise StoreError(f"chunk {index} of {info.digest}: read {got} of {n} bytes")
            pos += n
            self._txns.touched_pages(n)  # the B-tree pages LMDB read (each maps its folio) go back now and then
            yield piece

    def count(self, txn: Txn) -> int:
        return txn.stat(self._blobs)["entries"]

    def total_size(self, txn: Txn) -> int:
        return sum(json.loads(v)["size"] for _, v in txn.cursor(db=self._blobs))

    # -- writing ------------------------------------------------------------------------------

    def write_batch(self, txn: Txn, blob_id: bytes, first: int, chunks: list[memoryview], pending: bytes) -> None:
        """Write chunks `first`, `first` + 1, ... of an unfinished blob, and its pending record."""
        txn.put(blob_id, pending, db=self._pending)
        self._put_chunks(txn, blob_id, first, chunks)

    def publish(self, txn: Txn, key: bytes, blob_id: bytes, size: int, first: int, chunks: list[memoryview]) -> bool:
        """Write the last chunks and the blob's record, which ends its pending write. Returns
        False, and drops the chunks, when another write published the digest meanwhile, or when
        its pending write is gone (a hubcache that opened the store meanwhile recovered it: an
        import beside a restarted proxy), so that no record ever lacks its first chunks."""
        gone = first > 0 and txn.get(blob_id, db=self._pending) is None  # earlier batches wrote pending
        if gone or txn.get(key, db=self._blobs) is not None:  # or a concurrent fetch won the race
            self.drop_chunks(txn, blob_id)
            return False
        self._put_chunks(txn, blob_id, first, chunks)
        txn.put(key, json.dumps({"id": blob_id.hex(), "size": size, "chunk_size": CHUNK_SIZE}).encode(), db=self._blobs)
        txn.delete(blob_id, db=self._pending)
        return True

    def _put_chunks(self, txn: Txn, blob_id: bytes, first: int, chunks: list[memoryview]) -> None:
        for i, chunk in enumerate(chunks, first):
            txn.put(chunk_key(blob_id, i), chunk, db=self._chunks)

    # -- deleting -----------------------------------------------------------------------------

    def remove(self, txn: Txn, key: bytes) -> int | None:
        """Delete a published blob and its chunks; returns its size, or None when there was none."""
        raw = txn.get(key, db=self._blobs)
        if raw is None:
            return None
        r = json.loads(raw)
        txn.delete(key, db=self._blobs)
        self.drop_chunks(txn, bytes.fromhex(r["id"]))
        return r["size"]

    def drop_chunks(self, txn: Txn, blob_id: bytes) -> None:
        """Delete a blob id's chunks and its pending record. Freeing an overflow page reads its
        header through the map, which maps the header's whole folio (pages.py): without giving
        them back as it goes, dropping a 1 GiB download that failed near its end would put
        ~1 GiB of the file in RSS. Inside a write transaction the map cannot move."""
        cur = txn.cursor(db=self._chunks)
        dropped = 0
        if cur.set_range(blob_id):
            while cur.key()[:8] == blob_id:
                if not cur.delete():
                    break
                dropped += 1
                if dropped % DROP_RELEASE_CHUNKS == 0:
                    pages.release(self._txns.map_ranges())
        txn.delete(blob_id, db=self._pending)

    def drop(self, blob_id: bytes) -> None:
        """drop_chunks in a transaction of its own, then give back what it left mapped."""
        self._txns.write(lambda txn: self.drop_chunks(txn, blob_id))
        self._txns.release_pages()

    def recover(self) -> int:
        """Delete every interrupted blob write. Returns how many there were."""
        n = self._drop_pending(lambda record: True)
        if n:
            logs.event(log, logging.INFO, "store_recovered", f"store: removed {n} interrupted blob writes", blobs=n)
        return n

    def drop_writes_of(self, pid: int) -> int:
        """Delete the interrupted writes of one process (a worker that died; its siblings' writes
        go on). Returns how many there were."""
        return self._drop_pending(lambda record: json.loads(record).get("pid") == pid)

    def _drop_pending(self, which: Callable[[bytes], bool]) -> int:
        """Delete the pending writes whose record `which` picks; how many."""
        ids = self._txns.read(lambda txn: [k for k, v in txn.cursor(db=self._pending) if which(v)])
        for blob_id in ids:
            self.drop(blob_id)
        return len(ids)

    def drop_orphans(self) -> int:
        """Delete chunks that neither a blob nor a pending write owns; returns how many blob ids
        they were under."""

        def orphans(txn: Txn) -> set[bytes]:
            owned = {bytes.fromhex(json.loads(v)["id"]) for _, v in txn.cursor(db=self._blobs)}
            owned |= {k for k, _ in txn.cursor(db=self._pending)}
            return {k[:8] for k in txn.cursor(db=self._chunks).iternext(keys=True, values=False) if k[:8] not in owned}

        ids = self._txns.read(orphans)
        for blob_id in ids:
            self.drop(blob_id)
        return len(ids)


def _info(digest: str, raw: bytes) -> BlobInfo:
    r = json.loads(raw)
    return BlobInfo(digest, r["size"], bytes.fromhex(r["id"]), r["chunk_size"])
