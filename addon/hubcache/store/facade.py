"""The store as the rest of hubcache sees it: opening (one process per store, interrupted writes
dropped), and each operation handed to the module that does it: catalog.py (manifests, tags),
blobs.py (blob records and reads), writer.py and sink.py (blob writes), lru.py (the size cap),
txn.py (transactions)."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO

import lmdb

from hubcache import logs
from hubcache.model import BlobInfo, ClientCounter, ImageCounter, Manifest, TagRecord, sha256_digest
from hubcache.store import format as storeformat
from hubcache.store.blobs import Blobs, matches
from hubcache.store.catalog import Catalog
from hubcache.store.claims import Claims
from hubcache.store.counters import Counters
from hubcache.store.errors import DigestMismatch, StoreError, StoreInUse
from hubcache.store.inventory import Inventory
from hubcache.store.lru import Lru
from hubcache.store.sink import StoreSink
from hubcache.store.txn import Transactions, Txn
from hubcache.store.writer import BATCH_BYTES, BlobWriter

log = logging.getLogger(__name__)


def _take_lock(path: Path, wait: bool = True) -> IO[str] | None:
    """Take the store's lock, or raise StoreInUse naming who has it (`wait` False: return None).
    One hubcache per store: opening drops interrupted writes, which would be another process's
    writes in progress."""
    lock = open(path / "hubcache.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        if not wait:
            return None
        raise StoreInUse(f"store {path} is in use by {holder}") from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


def probe(path: str | os.PathLike) -> None:
    """Whether a Store could open at `path`: the directory exists or can be made, and its lock is
    free (raises StoreInUse naming the holder, or StoreError saying what is wrong)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StoreError(f"store {p} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(p)
        if lock:
            lock.close()
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"store {p} cannot be used: {e.strerror or e}") from e


class Store:
    """hubcache's LMDB store at `path`, capped at `max_size` bytes of content (0: no cap).
    `clock` dates access times and manifests (tests pass their own, to order accesses)."""

    def __init__(self, path: str | os.PathLike, *, max_size: int = 0, map_size: int = 256 << 20, readonly: bool = False,
                 clock: Callable[[], float] = time.time, beside: bool = False, shared: bool = False) -> None:
        """`beside`: for writing next to a running hubcache (evict): when another process holds
        the lock, open without it, and leave its writes in progress and migrations to it.
        `shared`: a worker of `hubcache run --workers N`: its supervisor holds the lock, and
        recovered and migrated the store before starting the workers."""
        self.path = Path(path)
        self.max_size = max_size
        self.readonly = readonly
        self._clock = clock
        self.recovered = 0
        if readonly:
            self._open_readonly()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = None if shared else _take_lock(self.path, wait=not beside)
        env = lmdb.open(str(self.path), map_size=map_size, max_dbs=16, max_readers=1024, metasync=False)
        seen = storeformat.found(env)
        try:
            storeformat.check(self.path, seen)
        except StoreError:
            self._abandon(env)
            raise
        self._open_tables(env)
        if self._lock is not None:
            self._migrate(seen)

    def _migrate(self, seen: tuple[int, str] | None) -> None:
        """Drop interrupted writes; bring an older store to this format."""
        self.recovered = self.recover()
        if linked := self._catalog.link_all_references():
            logs.event(log, logging.INFO, "store_migrated",
                       f"linked the references of {linked} stored manifests to their repositories", manifests=linked)
        if seen is None or seen[0] < storeformat.FORMAT:
            storeformat.record(self._env)
        if seen is not None and seen[0] < storeformat.FORMAT:
            logs.event(log, logging.INFO, "store_migrated", f"store {self.path} migrated from format {seen[0]} "
                       f"to {storeformat.FORMAT}", format=storeformat.FORMAT)

    def _abandon(self, env: lmdb.Environment) -> None:
        env.close()
        if self._lock:
            self._lock.close()

    def _open_readonly(self) -> None:
        """For looking at a store while a proxy runs on it (history): no lock, no recovery."""
        if not (self.path / "data.mdb").exists():
            raise StoreError(f"no store at {self.path}")
        self._lock = None
        env = lmdb.open(str(self.path), readonly=True, max_dbs=16, max_readers=1024)
        try:
            storeformat.check(self.path, storeformat.found(env))
            self._open_tables(env)
        except lmdb.NotFoundError as e:
            env.close()
            raise StoreError(f"{self.path} is not a hubcache store: {e}") from e
        except StoreError:
            env.close()
            raise

    def _open_tables(self, env: lmdb.Environment) -> None:
        self._env = env
        self._txns = Transactions(env, self.path, self.readonly)
        self._catalog = Catalog(self._txns)
        self._lru = Lru(self._txns, self._clock)
        self._blobs = Blobs(self._txns, self.path)
        self._sink = StoreSink(self._txns, self._blobs, self._catalog, self._lru)
        self.counters = Counters(self._txns)  # what was served (stats): every record with records()
        self.inventory = Inventory(self._txns)  # the store by image (ls, evict)
        self.claims = Claims(self._txns, self._blobs.has)  # which worker downloads which blob (hubcache run --workers)

    def close(self) -> None:
        self._txns.close()
        if not self.readonly:
            self.flush_access()
        self._env.close()
        self._blobs.close()
        if self._lock:
            self._lock.close()

    # -- room ---------------------------------------------------------------------------------

    def batch_limit(self) -> int:
        """Bytes a download may hold before handing them over (BATCH_BYTES alone, a share
        of WRITE_BUDGET when many run)."""
        return self._sink.batch_limit()

    def room_for(self, size: int) -> bool:
        """Whether the file system has room for `size` more bytes of content (with the slack a
        write needs: a batch in flight, LMDB's page overhead)."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize >= size + size // 16 + 2 * BATCH_BYTES

    def map_size(self) -> int:
        return self._txns.map_size()

    def release_pages(self) -> None:
        """Unmap data.mdb pages this process touched (see pages.py); RSS stays flat."""
        self._txns.release_pages()

    # -- manifests and tags -------------------------------------------------------------------

    def get_manifest(self, digest: str) -> Manifest | None:
        m = self._catalog.get_manifest(digest)
        if m is not None:
            self._lru.touch(digest)
        return m

    def holds(self, digest: str) -> bool:
        """Whether a manifest or blob of this digest is stored (not an access: its LRU age stays)."""
        return self._blobs.info(digest) is not None or self._catalog.get_manifest(digest) is not None

    def put_manifest(self, digest: str, media_type: str, body: bytes, repository: str) -> None:
        if sha256_digest(body) != digest:
            raise DigestMismatch(f"manifest body does not match {digest}")
        key, stored = digest.encode(), self._clock()

        def op(txn: Txn) -> None:
            self._catalog.note_repository(txn, key, repository)
            self._catalog.link_references(txn, body, repository)
            if self._catalog.add_manifest(txn, key, media_type, body, stored):
                self._lru.add_size(txn, len(body))
                self._lru.used_now(txn, key)

        self._txns.write(op)

    def drop_tag(self, repository: str, tag: str) -> None:
        """Forget what a tag points to (it was deleted or pushed without a body hubcache could
        keep): the next pull asks upstream."""
        self._catalog.drop_tag(repository, tag, self._clock())

    def put_challenge(self, registry: str, header: str) -> None:
        self._catalog.put_challenge(registry, header)

    def challenges(self) -> dict[str, str]:
        """The WWW-Authenticate each registry other than Docker Hub asked for when last seen."""
        return self._catalog.challenges()

    def tags(self, repository: str) -> list[str]:
        """The tags of `repository` hubcache has a record of, sorted."""
        return self._catalog.tags(repository)

    def remove_from_repository(self, digest: str, repository: str, seen: list[str]) -> None:
        """A manifest deleted from `repository` upstream: it no longer belongs there (`seen`:
        its repos entries for that repository), and no tag of it points to it."""
        now = self._clock()
        self._txns.write(lambda txn: self._catalog.forget_in_repository(txn, digest, repository, seen, now))

    def tag_records(self, repository: str, tag: str) -> dict[str, TagRecord]:
        return self._catalog.tag_records(repository, tag)

    def put_tag(self, repository: str, tag: str, media_type: str, digest: str, size: int, now: float,
                only: bool = False, replaces: Collection[str] = ()) -> bool:
        """Record that upstream says tag -> digest now (see Catalog.put_tag for `only` and
        `replaces`). Returns True when the digest changed."""
        return self._catalog.put_tag(repository, tag, media_type, digest, size, now, only, replaces)

    def tag_history(self, repository: str, tag: str | None = None) -> list[tuple[str, float, str, str]]:
        """(tag, time, media type, digest) for every recorded change, oldest first."""
        return self._catalog.tag_history(repository, tag)

    def tag_at(self, repository: str, tag: str, when: float) -> dict[str, TagRecord]:
        """What the tag pointed to at `when`, per media type (from its history)."""
        return self._catalog.tag_at(repository, tag, when)

    def note_repository(self, digest: str, repository: str) -> None:
        self._txns.write(lambda txn: self._catalog.note_repository(txn, digest.encode(), repository))

    def repositories(self, digest: str) -> list[str]:
        return self._catalog.repositories(digest)

    # -- blobs --------------------------------------------------------------------------------

    def blob_info(self, digest: str) -> BlobInfo | None:
        return self._blobs.info(digest)

    def begin_blob(self, digest: str, expected_size: int | None, repository: str) -> BlobWriter:
        return BlobWriter(self._sink, digest, expected_size, repository)

    def read_blob(self, info: BlobInfo, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of a committed blob, chunk by chunk, each a new bytes object."""
        buf = memoryview(bytearray(info.chunk_size))
        for piece in self._pieces(info, start, end, buf):
            yield bytes(piece)

    def send_blob(self, info: BlobInfo, buf: memoryview, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Bytes [start, end) of a committed blob, read chunk by chunk into `buf` (at least
        info.chunk_size long): each piece is a view of `buf`, valid until the next one. The read
        transaction has ended before a piece is yielded, so a slow client holds nothing up."""
        return self._pieces(info, start, end, buf)

    def _pieces(self, info: BlobInfo, start: int, end: int | None, buf: memoryview) -> Iterator[memoryview]:
        with self._lru.pinned(info.digest):  # not evicted while being read
            self._lru.touch(info.digest)
            yield from self._blobs.pieces(info, start, end, buf)

    def progress(self, digest: str, blob_id: bytes) -> tuple[str, int, int]:
        """How a blob being written under `blob_id` is getting on: ("published", size, size),
        ("pending", bytes written so far, size or -1 when unknown), or ("gone", 0, 0) when the
        write failed or was dropped (or another write published the digest)."""
        return self._blobs.progress(digest, blob_id)

    # -- counters and images (hubcache stats, ls, evict) ----------------------------------------

    def count(self, reference: str, digest: str, client: str, *, pull: bool, hit: bool, nbytes: int,
              store_bytes: int) -> None:
        """Count a request served (buffered; written with the access times)."""
        self.counters.add(reference, digest, client, pull=pull, hit=hit, nbytes=nbytes, store_bytes=store_bytes,
                           when=self._clock())

    def image_counters(self, limit: int | None = None) -> list[ImageCounter]:
        """What was served per image reference and digest, most pulled first."""
        return self.counters.images(limit)

    def client_counters(self) -> list[ClientCounter]:
        return self.counters.clients()

    # -- recovery, size, eviction -------------------------------------------------------------

    def recover(self) -> int:
        """Delete every interrupted blob write, and every worker's claim on a download (no worker
        runs while the store opens). Returns how many writes there were."""
        self.claims.clear()
        return self._blobs.recover()

    def drop_writes_of(self, pid: int) -> int:
        """A worker process died: delete its interrupted writes and its claims, so that its
        siblings take those downloads over. Returns how many writes there were."""
        self.claims.release_all_of(pid)
        return self._blobs.drop_writes_of(pid)

    def reader_check(self) -> int:
        """Free the reader slots of processes that died (a worker killed mid-read), which would
        otherwise keep LMDB from reusing pages; returns how many."""
        return self._env.reader_check()

    def size(self) -> int:
        """Bytes of committed content (manifest bodies and blobs)."""
        return self._lru.size()

    def counts(self) -> dict[str, int]:
        def op(txn: Txn) -> dict[str, int]:
            manifests, tags = self._catalog.counts(txn)
            return {"manifests": manifests, "blobs": self._blobs.count(txn), "tags": tags}

        return self._txns.read(op)

    def touch(self, digest: str) -> None:
        self._lru.touch(digest)

    def flush_access(self) -> None:
        """Write the buffered access times and counters."""
        self._lru.flush()
        self.counters.flush()

    def evict_if_needed(self) -> None:
        """Over max_size, delete the least recently used content (never what is being read)."""
        self._lru.evict(self.max_size, self.delete)

    def verify(self) -> dict[str, int]:
        """Re-hash every manifest and blob; drop what does not match its digest, chunks that no
        blob owns, and correct the size total. Returns counts."""
        manifests = self._catalog.manifests()
        bad = [digest for digest, body in manifests if sha256_digest(body) != digest]
        infos = self._blobs.infos()
        bad += [info.digest for info in infos if not self._intact(info)]
        for digest in bad:
            logs.event(log, logging.WARNING, "verify_dropped", f"verify: {digest} does not match its digest; dropped",
                       digest=digest)
            self.delete(digest)
        orphans = self._blobs.drop_orphans()
        self._txns.write(lambda txn: self._lru.set_size(txn, self._blobs.total_size(txn) + self._catalog.manifests_size(txn)))
        return {"manifests": len(manifests), "blobs": len(infos), "bad": len(bad), "orphan_chunks": orphans}

    def _intact(self, info: BlobInfo) -> bool:
        try:
            return matches(info, self.read_blob(info))
        except StoreError:  # a chunk missing or short
            return False

    def delete(self, digest: str) -> None:
        """Remove a manifest or blob and its bookkeeping."""
        key = digest.encode()

        def op(txn: Txn) -> None:
            for freed in (self._catalog.remove_manifest(txn, key), self._blobs.remove(txn, key)):
                if freed is not None:
                    self._lru.add_size(txn, -freed)
            self._lru.forget(txn, key)
            self._catalog.forget_repositories(txn, key)

        self._txns.write(op)
        self._txns.release_pages()
        logs.event(log, logging.INFO, "evicted", f"store: evicted {digest}", digest=digest)
