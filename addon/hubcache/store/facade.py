"""The LMDB store: manifests and blobs by digest, tag records, LRU eviction under a size cap.

Nothing becomes visible until its sha256 and size match its digest: a blob's chunks are written
under a fresh id registered in `pending`, and only the commit (one transaction) publishes it.
Whatever is left in `pending` when the store opens was interrupted, and is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb

from hubcache.store import pages
from hubcache.model import BlobInfo, Manifest, TagRecord, sha256_digest

log = logging.getLogger("hubcache.store")

CHUNK_SIZE = 256 * 1024  # large enough for few keys, small enough to keep LMDB's free list healthy
BATCH_BYTES = 4 * 1024 * 1024  # chunks a download hands over at once, when it is alone
WRITE_BUDGET = 16 * 1024 * 1024  # what all concurrent downloads together hold in batches
GROUP_BYTES = 8 * 1024 * 1024  # batches of several downloads committed in one transaction
EVICT_TO = 0.9  # after eviction, content is at most this share of the cap
DROP_RELEASE_CHUNKS = 16  # chunks deleted between giving back the map pages their deletion read
RELEASE_EVERY = 8 * 1024 * 1024  # blob bytes read or written (all threads together) between giving back the map pages LMDB touched
T = TypeVar("T")


class StoreError(Exception):
    pass


class DigestMismatch(StoreError):
    pass


class StoreInUse(StoreError):
    pass


def _chunk_key(blob_id: bytes, index: int) -> bytes:
    return blob_id + struct.pack(">I", index)


class _Gate:
    """Many transactions at once, or one map resize alone (LMDB needs no open transaction then)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _GroupCommit:
    """Write transactions of many threads (the flights' chunk batches and commits) committed
    together: LMDB runs one write transaction at a time and each commit waits for the disk
    (fdatasync), so N concurrent downloads would otherwise queue for N syncs where one does.
    Up to GROUP_BYTES of batches go in one transaction (its dirty pages are held in memory)."""

    def __init__(self, store: "Store") -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queue: list[list] = []  # [fn, bytes, done event, result, error]
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, fn: Callable[[lmdb.Transaction], T], nbytes: int = 0) -> T:
        """Run `fn` in a write transaction, maybe with others'; returns when it is committed."""
        op = [fn, nbytes, threading.Event(), None, None]
        with self._cond:
            if self._closed:
                raise StoreError("store closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hubcache-commit", daemon=True)
                self._thread.start()
            self._queue.append(op)
            self._cond.notify()
        op[2].wait()
        if op[4] is not None:
            raise op[4]
        return op[3]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _take(self) -> list[list] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            group, size = [], 0
            while self._queue and (not group or size + self._queue[0][1] <= GROUP_BYTES):
                op = self._queue.pop(0)
                group.append(op)
                size += op[1]
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            try:
                results = self._store._write(lambda txn: [op[0](txn) for op in group])
                for op, result in zip(group, results):
                    op[3] = result
            except BaseException:
                if len(group) == 1:
                    group[0][4] = sys.exc_info()[1]
                else:  # one of them failed the transaction: each alone, so only it fails
                    for op in group:
                        try:
                            op[3] = self._store._write(op[0])
                        except BaseException as e:  # handed to its caller
                            op[4] = e
            for op in group:
                op[2].set()


class Store:
    def __init__(self, path: str | os.PathLike, *, max_size: int = 0, map_size: int = 256 << 20, readonly: bool = False) -> None:
        self.path = Path(path)
        self.max_size = max_size
        self.readonly = readonly
        if readonly:
            self._open_readonly()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # One hubcache per store: opening drops interrupted writes, which would be another
        # process's writes in progress.
        self._lock = open(self.path / "hubcache.lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise StoreInUse(f"store {self.path} is in use by {holder}") from None
        self._lock.truncate(0)
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        self._env = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=16, max_readers=1024, metasync=False
        )
        self._data = os.open(self.path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)  # blob reads (pread)
        self._open_dbs(create=True)
        self.recovered = self.recover()  # interrupted writes dropped at open

    def _open_readonly(self) -> None:
        """For looking at a store while a proxy runs on it (history): no lock, no recovery."""
        if not (self.path / "data.mdb").exists():
            raise StoreError(f"no store at {self.path}")
        self._lock = None
        self._env = lmdb.open(str(self.path), readonly=True, max_dbs=16, max_readers=1024)
        self._data = os.open(self.path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._open_dbs(create=False)
        except lmdb.NotFoundError as e:
            raise StoreError(f"{self.path} is not a hubcache store: {e}") from e

    def _open_dbs(self, create: bool) -> None:
        self._gate = _Gate()

        def open_db(name: bytes, **kw):
            return self._env.open_db(name, create=create, **kw)

        self._manifests = open_db(b"manifests")
        self._blobs = open_db(b"blobs")
        self._chunks = open_db(b"chunks")
        self._pending = open_db(b"pending")
        self._tags = open_db(b"tags")
        self._repos = open_db(b"repos", dupsort=True)
        self._atime = open_db(b"atime")
        self._lru = open_db(b"lru")
        self._meta = open_db(b"meta")
        self._history = open_db(b"history")
        self._pinned: Counter[str] = Counter()
        self._pin_lock = threading.Lock()
        self._touched: dict[str, int] = {}
        self._touch_lock = threading.Lock()
        self._since_release = 0
        self._mapping: list[tuple[int, int, int]] = []  # where data.mdb is mapped; emptied by a resize
        self._group = _GroupCommit(self)
        self._writers = 0  # blob writes in progress (BlobWriter between register and commit/abort)

    def close(self) -> None:
        self._group.close()
        if not self.readonly:
            self.flush_access()
        self._env.close()
        os.close(self._data)
        if self._lock:
            self._lock.close()

    # -- transactions -------------------------------------------------------------------------

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        while True:
            size = self._env.info()["map_size"]
            try:
                with self._gate.shared(), self._env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow(size)

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self._gate.shared(), self._env.begin() as txn:
            return fn(txn)

    def _grow(self, seen: int) -> None:
        with self._gate.exclusive():
            if self._env.info()["map_size"] == seen:  # another thread may have grown it already
                self._env.set_mapsize(seen * 2)
                self._mapping = []  # the map moved
                log.info("store map grown to %d MiB", seen * 2 >> 20)

    def _count_writer(self, delta: int) -> None:
        with self._touch_lock:
            self._writers += delta

    def batch_limit(self) -> int:
        """Bytes a download may hold before handing them over: BATCH_BYTES alone, a share of
        WRITE_BUDGET when many run at once (group commit keeps the syncs few either way)."""
        return max(CHUNK_SIZE, min(BATCH_BYTES, WRITE_BUDGET // max(self._writers, 1)))

    def room_for(self, size: int) -> bool:
        """Whether the file system has room for `size` more bytes of content (with the slack a
        write needs: a batch in flight, LMDB's page overhead)."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize >= size + size // 16 + 2 * BATCH_BYTES

    def map_size(self) -> int:
        return self._env.info()["map_size"]

    def _touched_pages(self, n: int) -> None:
        """Count blob bytes read or written; past RELEASE_EVERY, by all threads together, give
        back the map pages LMDB itself read meanwhile (B-tree and free-list pages: each touch maps
        a whole page-cache folio, see pages.py). The blob bytes themselves are never mapped."""
        with self._touch_lock:
            self._since_release += n
            if self._since_release < RELEASE_EVERY:
                return
            self._since_release = 0
        self.release_pages()

    def release_pages(self) -> None:
        """Unmap data.mdb pages this process touched (see pages.py); RSS stays flat."""
        with self._gate.shared():  # no resize (which moves the map) meanwhile
            pages.release(self._map_ranges())

    def _map_ranges(self) -> list[tuple[int, int, int]]:
        """Where data.mdb is mapped now. Call with the gate held (shared): a resize (_grow)
        moves the map and forgets where it was."""
        if not self._mapping:
            self._mapping = pages.mappings_of(str((self.path / "data.mdb").resolve()))
        return self._mapping

    # -- manifests ----------------------------------------------------------------------------

    def get_manifest(self, digest: str) -> Manifest | None:
        raw = self._read(lambda txn: txn.get(digest.encode(), db=self._manifests))
        if raw is None:
            return None
        header, _, body = raw.partition(b"\n")
        self.touch(digest)
        return Manifest(digest, json.loads(header)["media_type"], body)

    def put_manifest(self, digest: str, media_type: str, body: bytes, repository: str) -> None:
        if sha256_digest(body) != digest:
            raise DigestMismatch(f"manifest body does not match {digest}")
        value = json.dumps({"media_type": media_type, "stored": time.time()}).encode() + b"\n" + body
        key = digest.encode()

        def op(txn: lmdb.Transaction) -> None:
            txn.put(key, repository.encode(), db=self._repos)
            if txn.get(key, db=self._manifests) is not None:
                return
            txn.put(key, value, db=self._manifests)
            self._add_size(txn, len(body))
            self._set_atime(txn, key, _now_ms())

        self._write(op)

    # -- tags ---------------------------------------------------------------------------------

    def tag_records(self, repository: str, tag: str) -> dict[str, TagRecord]:
        raw = self._read(lambda txn: txn.get(f"{repository}:{tag}".encode(), db=self._tags))
        if raw is None:
            return {}
        return {
            media_type: TagRecord(repository, tag, media_type, r["digest"], r["size"], r["fetched"], r["confirmed"])
            for media_type, r in json.loads(raw).items()
        }

    def put_tag(self, repository: str, tag: str, media_type: str, digest: str, size: int, now: float) -> bool:
        """Record that upstream says tag -> digest now. Returns True when the digest changed."""
        key = f"{repository}:{tag}".encode()

        def op(txn: lmdb.Transaction) -> bool:
            raw = txn.get(key, db=self._tags)
            records = json.loads(raw) if raw else {}
            old = records.get(media_type)
            changed = old is None or old["digest"] != digest
            fetched = now if changed else old["fetched"]
            records[media_type] = {"digest": digest, "size": size, "fetched": fetched, "confirmed": now}
            txn.put(key, json.dumps(records).encode(), db=self._tags)
            if changed:  # the tag's history: every change, with its time
                hkey = key + b"\0" + struct.pack(">Q", int(now * 1000))
                txn.put(hkey, json.dumps({"media_type": media_type, "digest": digest, "size": size}).encode(), db=self._history)
            return changed

        return self._write(op)

    def tag_history(self, repository: str, tag: str | None = None) -> list[tuple[str, float, str, str]]:
        """(tag, time, media type, digest) for every recorded change, oldest first."""
        prefix = f"{repository}:{tag}\0".encode() if tag else f"{repository}:".encode()

        def op(txn: lmdb.Transaction) -> list[tuple[str, float, str, str]]:
            out = []
            cur = txn.cursor(db=self._history)
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                name, stamp = key[:-9], key[-8:]  # repo:tag, NUL, 8-byte time
                r = json.loads(value)
                out.append((name.decode().split(":", 1)[1], struct.unpack(">Q", stamp)[0] / 1000, r["media_type"], r["digest"]))
            return out

        rows = self._read(op)
        return sorted(rows, key=lambda r: (r[1], r[0]))

    def tag_at(self, repository: str, tag: str, when: float) -> dict[str, TagRecord]:
        """What the tag pointed to at `when`, per media type (from its history)."""
        records: dict[str, TagRecord] = {}
        for _, t, media_type, digest in self.tag_history(repository, tag):
            if t <= when:
                records[media_type] = TagRecord(repository, tag, media_type, digest, 0, t, t)
        return records

    # -- blobs --------------------------------------------------------------------------------

    def blob_info(self, digest: str) -> BlobInfo | None:
        raw = self._read(lambda txn: txn.get(digest.encode(), db=self._blobs))
        if raw is None:
            return None
        r = json.loads(raw)
        return BlobInfo(digest, r["size"], bytes.fromhex(r["id"]), r["chunk_size"])

    def begin_blob(self, digest: str, expected_size: int | None, repository: str) -> "BlobWriter":
        return BlobWriter(self, digest, expected_size, repository)

    def read_blob(self, info: BlobInfo, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of a committed blob, chunk by chunk, each a new bytes object."""
        buf = memoryview(bytearray(info.chunk_size))
        for piece in self._chunks_of(info, start, end, buf):
            yield bytes(piece)

    def send_blob(self, info: BlobInfo, buf: memoryview, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Bytes [start, end) of a committed blob, read chunk by chunk into `buf` (at least
        info.chunk_size long): each piece is a view of `buf`, valid until the next one. The read
        transaction has ended before a piece is yielded, so a slow client holds nothing up."""
        return self._chunks_of(info, start, end, buf)

    def progress(self, digest: str, blob_id: bytes) -> tuple[str, int, int]:
        """How a blob being written under `blob_id` is getting on: ("published", size, size),
        ("pending", bytes written so far, size or -1 when unknown), or ("gone", 0, 0) when the
        write failed or was dropped (or another write published the digest)."""

        def op(txn: lmdb.Transaction) -> tuple[str, int, int]:
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

        return self._read(op)

    def _chunks_of(self, info: BlobInfo, start: int, end: int | None, buf: memoryview) -> Iterator[memoryview]:
        """Walk the chunks of [start, end). Each piece is read into `buf` with pread from
        data.mdb, at the file offset of the chunk's pages, inside a read transaction (which keeps
        those pages from being reused). Not through LMDB's map: see pages.py for why that costs RSS."""
        end = info.size if end is None else min(end, info.size)
        self._pin(info.digest)  # not evicted while being read
        try:
            self.touch(info.digest)
            pos = start
            while pos < end:
                index, offset = divmod(pos, info.chunk_size)
                key = _chunk_key(info.blob_id, index)
                with self._gate.shared(), self._env.begin(buffers=True) as txn:
                    chunk = txn.get(key, db=self._chunks)  # a pointer into the map; LMDB read only the page header
                    if chunk is None:
                        raise StoreError(f"chunk {index} of {info.digest} is missing")
                    n = min(len(chunk) - offset, end - pos)
                    address, ranges = pages.address_of(chunk), self._map_ranges()
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
                self._touched_pages(n)  # the B-tree pages LMDB read (each maps its folio) go back now and then
                yield piece
        finally:
            self._unpin(info.digest)

    def note_repository(self, digest: str, repository: str) -> None:
        self._write(lambda txn: txn.put(digest.encode(), repository.encode(), db=self._repos))

    def repositories(self, digest: str) -> list[str]:
        def op(txn: lmdb.Transaction) -> list[str]:
            cur = txn.cursor(db=self._repos)
            if not cur.set_key(digest.encode()):
                return []
            return [v.decode() for v in cur.iternext_dup()]

        return self._read(op)

    # -- recovery, size, eviction -------------------------------------------------------------

    def recover(self) -> int:
        """Delete every interrupted blob write. Returns how many there were."""
        ids = self._read(lambda txn: [k for k, _ in txn.cursor(db=self._pending)])
        for blob_id in ids:
            self._write(lambda txn, b=blob_id: self._drop_chunks(txn, b))
            self.release_pages()
        if ids:
            log.info("store: removed %d interrupted blob writes", len(ids))
        return len(ids)

    def _drop_chunks(self, txn: lmdb.Transaction, blob_id: bytes) -> None:
        """Delete a blob's chunks. Freeing an overflow page reads its header through the map,
        which maps the header's whole folio (pages.py): without giving them back as it goes,
        dropping a 1 GiB download that failed near its end would put ~1 GiB of the file in RSS.
        Called inside a write transaction, so the gate is held and the map cannot move."""
        cur = txn.cursor(db=self._chunks)
        dropped = 0
        if cur.set_range(blob_id):
            while cur.key()[:8] == blob_id:
                if not cur.delete():
                    break
                dropped += 1
                if dropped % DROP_RELEASE_CHUNKS == 0:
                    pages.release(self._map_ranges())
        txn.delete(blob_id, db=self._pending)

    def size(self) -> int:
        raw = self._read(lambda txn: txn.get(b"size", db=self._meta))
        return int(raw) if raw else 0

    def _add_size(self, txn: lmdb.Transaction, delta: int) -> None:
        raw = txn.get(b"size", db=self._meta)
        txn.put(b"size", str((int(raw) if raw else 0) + delta).encode(), db=self._meta)

    def counts(self) -> dict[str, int]:
        def op(txn: lmdb.Transaction) -> dict[str, int]:
            return {
                name: txn.stat(db)["entries"]
                for name, db in (("manifests", self._manifests), ("blobs", self._blobs), ("tags", self._tags))
            }

        return self._read(op)

    def touch(self, digest: str) -> None:
        with self._touch_lock:
            self._touched[digest] = _now_ms()

    def flush_access(self) -> None:
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return

        def op(txn: lmdb.Transaction) -> None:
            for digest, atime in touched.items():
                key = digest.encode()
                if txn.get(key, db=self._atime) is not None:
                    self._set_atime(txn, key, atime)

        self._write(op)

    def _set_atime(self, txn: lmdb.Transaction, key: bytes, atime: int) -> None:
        old = txn.get(key, db=self._atime)
        if old is not None:
            txn.delete(old + key, db=self._lru)
        packed = struct.pack(">Q", atime)
        txn.put(key, packed, db=self._atime)
        txn.put(packed + key, b"", db=self._lru)

    def _pin(self, digest: str) -> None:
        with self._pin_lock:
            self._pinned[digest] += 1

    def _unpin(self, digest: str) -> None:
        with self._pin_lock:
            self._pinned[digest] -= 1
            if self._pinned[digest] <= 0:
                del self._pinned[digest]

    def evict_if_needed(self) -> None:
        if not self.max_size or self.size() <= self.max_size:
            return
        self.flush_access()
        target = int(self.max_size * EVICT_TO)
        while self.size() > target:
            victim = self._read(self._oldest_unpinned)
            if victim is None:
                log.warning("store over its cap but everything left is in use")
                return
            self.delete(victim)

    def verify(self) -> dict[str, int]:
        """Re-hash every manifest and blob; drop what does not match its digest, chunks that no
        blob owns, and correct the size total. Returns counts."""
        report = {"manifests": 0, "blobs": 0, "bad": 0, "orphan_chunks": 0}
        bad: list[str] = []
        for key, raw in self._read(lambda txn: list(txn.cursor(db=self._manifests))):
            report["manifests"] += 1
            body = raw.partition(b"\n")[2]
            if sha256_digest(body) != key.decode():
                bad.append(key.decode())
        infos = [self.blob_info(k.decode()) for k, _ in self._read(lambda txn: list(txn.cursor(db=self._blobs)))]
        for info in infos:
            report["blobs"] += 1
            h, n = hashlib.sha256(), 0
            try:
                for piece in self.read_blob(info):
                    h.update(piece)
                    n += len(piece)
            except StoreError:
                bad.append(info.digest)
                continue
            if n != info.size or "sha256:" + h.hexdigest() != info.digest:
                bad.append(info.digest)
        for digest in bad:
            log.warning("verify: %s does not match its digest; dropped", digest)
            self.delete(digest)
        report["bad"] = len(bad)

        def owned(txn: lmdb.Transaction) -> set[bytes]:
            ids = {bytes.fromhex(json.loads(v)["id"]) for _, v in txn.cursor(db=self._blobs)}
            return ids | {k for k, _ in txn.cursor(db=self._pending)}

        def orphans(txn: lmdb.Transaction) -> set[bytes]:
            mine = owned(txn)
            return {k[:8] for k in txn.cursor(db=self._chunks).iternext(keys=True, values=False) if k[:8] not in mine}

        for blob_id in self._read(orphans):
            report["orphan_chunks"] += 1
            self._write(lambda txn, b=blob_id: self._drop_chunks(txn, b))
            self.release_pages()

        def total(txn: lmdb.Transaction) -> None:
            size = sum(json.loads(v)["size"] for _, v in txn.cursor(db=self._blobs))
            size += sum(len(v) - v.index(b"\n") - 1 for _, v in txn.cursor(db=self._manifests))
            txn.put(b"size", str(size).encode(), db=self._meta)

        self._write(total)
        return report

    def _oldest_unpinned(self, txn: lmdb.Transaction) -> str | None:
        with self._pin_lock:
            pinned = set(self._pinned)
        for key, _ in txn.cursor(db=self._lru):
            digest = key[8:].decode()
            if digest not in pinned:
                return digest
        return None

    def delete(self, digest: str) -> None:
        """Remove a manifest or blob and its bookkeeping."""
        key = digest.encode()

        def op(txn: lmdb.Transaction) -> None:
            raw = txn.get(key, db=self._manifests)
            if raw is not None:
                txn.delete(key, db=self._manifests)
                self._add_size(txn, -(len(raw) - raw.index(b"\n") - 1))
            raw = txn.get(key, db=self._blobs)
            if raw is not None:
                r = json.loads(raw)
                txn.delete(key, db=self._blobs)
                self._drop_chunks(txn, bytes.fromhex(r["id"]))
                self._add_size(txn, -r["size"])
            old = txn.get(key, db=self._atime)
            if old is not None:
                txn.delete(old + key, db=self._lru)
                txn.delete(key, db=self._atime)
            txn.delete(key, db=self._repos)

        self._write(op)
        self.release_pages()
        log.info("store: evicted %s", digest)


class BlobWriter:
    """Writes one blob under a fresh id; commit() publishes it only if sha256 and size match.

    Not thread-safe: one writer thread drives it (never the event loop: LMDB commits fsync).
    """

    def __init__(self, store: Store, digest: str, expected_size: int | None, repository: str) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = expected_size
        self.repository = repository
        self.blob_id = os.urandom(8)
        self.size = 0
        self._hash = hashlib.sha256()
        # Received bytes not yet written: one area, allocated once and reused, so that no chunk
        # costs an allocation. It is an anonymous mapping, not a bytearray: a page costs memory
        # only once written, so a download that shares WRITE_BUDGET with 15 others and flushes
        # every 1 MiB holds about 1 MiB, not the BATCH_BYTES that bytearray() zero-fills.
        self._area: mmap.mmap | None = None
        self._fill = 0
        self._index = 0  # chunks written so far
        self._registered = False
        self._done = False
        self._failed: Exception | None = None  # storing failed; hashing goes on so the client is still checked
        self._started = time.time()
        self._counted = False

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._failed:
            return
        if self._area is None:
            self._area = mmap.mmap(-1, BATCH_BYTES)
        view = memoryview(data)
        while view:
            n = min(len(view), BATCH_BYTES - self._fill)
            self._area[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill >= self.store.batch_limit() or self._fill == BATCH_BYTES:
                try:
                    self._flush()
                except lmdb.Error as e:
                    log.warning("store: writing %s failed: %s", self.digest, e)
                    self._failed = e
                    self._discard()
                    return

    @property
    def failed(self) -> Exception | None:
        """Why storing failed (the bytes are still hashed), or None."""
        return self._failed

    def register(self) -> None:
        """Make the write visible as in progress (readers can follow it with Store.progress),
        and count it among the concurrent writes that share WRITE_BUDGET."""
        if not self._counted:
            self._counted = True
            self.store._count_writer(+1)
        if not self._registered:
            self._flush()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.store._count_writer(-1)

    def flush(self) -> None:
        """Write the whole chunks received so far, so that readers following the blob get them."""
        if self._fill >= CHUNK_SIZE and not self._failed:
            self._flush()

    def _whole_chunks(self, final: bool = False) -> list[tuple[bytes, memoryview]]:
        """The area's whole chunks as (key, view), and with `final` the last partial one too;
        the views are valid until the area is next written."""
        if self._area is None:
            return []
        end = self._fill if final else self._fill - self._fill % CHUNK_SIZE
        area = memoryview(self._area)
        batch = []
        for offset in range(0, end, CHUNK_SIZE):
            batch.append((_chunk_key(self.blob_id, self._index), area[offset : min(offset + CHUNK_SIZE, end)]))
            self._index += 1
        return batch

    def _flush(self) -> None:
        store = self.store
        batch = self._whole_chunks()
        # What readers of an unfinished blob need: its size, and how many bytes are written.
        pending = json.dumps({
            "digest": self.digest, "started": self._started, "size": self.expected_size,
            "flushed": self._index * CHUNK_SIZE, "chunk_size": CHUNK_SIZE,
        }).encode()

        def op(txn: lmdb.Transaction) -> None:
            txn.put(self.blob_id, pending, db=store._pending)
            for key, chunk in batch:
                txn.put(key, chunk, db=store._chunks)

        store._group.run(op, len(batch) * CHUNK_SIZE)  # committed: LMDB has its own copy now
        self._registered = True
        store._touched_pages(len(batch) * CHUNK_SIZE)
        if batch:  # the partial chunk left over moves to the front
            done = len(batch) * CHUNK_SIZE
            rest = self._fill - done
            self._area[:rest] = self._area[done : self._fill]
            self._fill = rest

    def commit(self) -> None:
        """Verify and publish. Raises DigestMismatch (and drops everything) when the bytes are wrong."""
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
        store = self.store
        key = self.digest.encode()
        record = json.dumps({"id": self.blob_id.hex(), "size": self.size, "chunk_size": CHUNK_SIZE}).encode()
        batch = self._whole_chunks(final=True)

        def op(txn: lmdb.Transaction) -> None:
            txn.put(key, self.repository.encode(), db=store._repos)
            if txn.get(key, db=store._blobs) is not None:  # a concurrent fetch won the race
                store._drop_chunks(txn, self.blob_id)
                return
            for k, chunk in batch:
                txn.put(k, chunk, db=store._chunks)
            txn.put(key, record, db=store._blobs)
            txn.delete(self.blob_id, db=store._pending)
            store._add_size(txn, self.size)
            store._set_atime(txn, key, _now_ms())

        try:
            store._group.run(op, len(batch) * CHUNK_SIZE)
        except lmdb.Error as e:
            self._discard()
            raise StoreError(f"{self.digest} was not stored: {e}") from e
        self._done = True
        self._uncount()
        self._area = None  # unmapped once LMDB's views of it are gone

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()

    def _discard(self) -> None:
        self._uncount()
        self._area, self._fill = None, 0
        if self._registered:
            self.store._write(lambda txn: self.store._drop_chunks(txn, self.blob_id))
            self.store.release_pages()
            self._registered = False


def _now_ms() -> int:
    return int(time.time() * 1000)
