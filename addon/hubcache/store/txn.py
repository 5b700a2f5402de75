"""Transactions on the store's LMDB environment: many readers and writers, or one map resize
alone; group commit of concurrent writes; giving back the map pages LMDB touched."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from hubcache import logs
from hubcache.store import pages
from hubcache.store.errors import StoreError

log = logging.getLogger(__name__)

GROUP_BYTES = 8 * 1024 * 1024  # batches of several downloads committed in one transaction
RELEASE_EVERY = 8 * 1024 * 1024  # blob bytes read or written (all threads together) between giving back the map pages LMDB touched

type Txn = lmdb.Transaction[bytes]  # the store's transactions hand out values as bytes (reading() excepted)


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

    def __init__(self, write: Callable[[Callable[[Txn], Any]], Any]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._queue: list[list[Any]] = []  # [fn, bytes, done event, result, error]
        self._thread: threading.Thread | None = None
        self._closed = False

    def run[T](self, fn: Callable[[Txn], T], nbytes: int = 0) -> T:
        """Run `fn` in a write transaction, maybe with others'; returns when it is committed."""
        return self.submit(fn, nbytes)()

    def submit[T](self, fn: Callable[[Txn], T], nbytes: int = 0) -> Callable[[], T]:
        """Queue `fn` for a write transaction and return at once; what is returned waits until it
        is committed and gives its result (or raises its error). Transactions commit in the order
        they were queued."""
        op: list[Any] = [fn, nbytes, threading.Event(), None, None]
        with self._cond:
            if self._closed:
                raise StoreError("store closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hubcache-commit", daemon=True)
                self._thread.start()
            self._queue.append(op)
            self._cond.notify()

        def committed() -> T:
            op[2].wait()
            if op[4] is not None:
                raise op[4]
            return op[3]

        return committed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _take(self) -> list[list[Any]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            group: list[list[Any]] = []
            size = 0
            while self._queue and (not group or size + self._queue[0][1] <= GROUP_BYTES):
                op = self._queue.pop(0)
                group.append(op)
                size += op[1]
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            try:
                results = self._write(lambda txn: [op[0](txn) for op in group])
                for op, result in zip(group, results, strict=True):
                    op[3] = result
            except BaseException:
                if len(group) == 1:
                    group[0][4] = sys.exc_info()[1]
                else:  # one of them failed the transaction: each alone, so only it fails
                    for op in group:
                        try:
                            op[3] = self._write(op[0])
                        except BaseException as e:  # handed to its caller
                            op[4] = e
            for op in group:
                op[2].set()


class Transactions:
    """Every transaction on the environment goes through here: the gate keeps them apart from
    a map resize, and the map's place in memory (for reads by file offset and for giving pages
    back) is known only while the gate is held."""

    def __init__(self, env: lmdb.Environment, path: Path, readonly: bool) -> None:
        self._env = env
        self._readonly = readonly
        self._data_mdb = str((path / "data.mdb").resolve())
        self._gate = _Gate()
        self._group = _GroupCommit(self.write)
        self._mapping: list[tuple[int, int, int]] = []  # where data.mdb is mapped; emptied by a resize
        self._since_release = 0
        self._release_lock = threading.Lock()

    def open_db(self, name: bytes, dupsort: bool = False) -> lmdb._Database:
        """A named database; created when missing unless the store is opened read-only (where
        a missing one raises lmdb.NotFoundError)."""
        return self._env.open_db(name, dupsort=dupsort, create=not self._readonly)

    def close(self) -> None:
        """Stop the group commit once what is queued is committed; group() then raises StoreError."""
        self._group.close()

    def write[T](self, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in a write transaction of its own, growing the map when it is full."""
        while True:
            size = self._env.info()["map_size"]
            try:
                with self._gate.shared(), self._env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow(size)
            except lmdb.MapResizedError:  # begin(): another process grew the map
                self._adopt()

    def group[T](self, fn: Callable[[Txn], T], nbytes: int = 0) -> T:
        """Run `fn` in a write transaction, maybe together with other threads' (`nbytes`: what
        it writes); returns once committed."""
        return self._group.run(fn, nbytes)

    def group_later[T](self, fn: Callable[[Txn], T], nbytes: int = 0) -> Callable[[], T]:
        """group() without waiting: returns what waits for the commit (and raises its error)."""
        return self._group.submit(fn, nbytes)

    def read[T](self, fn: Callable[[Txn], T]) -> T:
        while True:
            try:
                with self._gate.shared(), self._env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:  # begin(): another process grew the map
                self._adopt()

    @contextlib.contextmanager
    def reading(self) -> Iterator[lmdb.Transaction[memoryview]]:
        """A read transaction whose values are views into the map (`buffers=True`), valid until
        it ends; map_ranges() may be called inside it."""
        while True:
            with self._gate.shared():
                try:
                    txn = self._env.begin(buffers=True)
                except lmdb.MapResizedError:
                    pass
                else:
                    with txn:
                        yield txn
                    return
            self._adopt()

    def _adopt(self) -> None:
        """Another process (`hubcache import` beside this one) grew the map past this process's:
        take its size (LMDB's set_mapsize(0)), alone, as a resize of our own is done."""
        with self._gate.exclusive():
            self._env.set_mapsize(0)
            self._mapping = []  # the map moved

    def _grow(self, seen: int) -> None:
        with self._gate.exclusive():
            if self._env.info()["map_size"] == seen:  # another thread may have grown it already
                self._env.set_mapsize(seen * 2)
                self._mapping = []  # the map moved
                logs.event(log, logging.INFO, "store_grown", f"store map grown to {seen * 2 >> 20} MiB",
                           map_size=seen * 2)

    def map_size(self) -> int:
        return self._env.info()["map_size"]

    def map_ranges(self) -> list[tuple[int, int, int]]:
        """Where data.mdb is mapped now. Call with the gate held (inside a transaction from
        here): a resize moves the map and forgets where it was."""
        if not self._mapping:
            self._mapping = pages.mappings_of(self._data_mdb)
        return self._mapping

    def touched_pages(self, n: int) -> None:
        """Count blob bytes read or written; past RELEASE_EVERY, by all threads together, give
        back the map pages LMDB itself read meanwhile (B-tree and free-list pages: each touch maps
        a whole page-cache folio, see pages.py). The blob bytes themselves are never mapped."""
        with self._release_lock:
            self._since_release += n
            if self._since_release < RELEASE_EVERY:
                return
            self._since_release = 0
        self.release_pages()

    def release_pages(self) -> None:
        """Unmap data.mdb pages this process touched (see pages.py); RSS stays flat."""
        with self._gate.shared():  # no resize (which moves the map) meanwhile
            pages.release(self.map_ranges())
