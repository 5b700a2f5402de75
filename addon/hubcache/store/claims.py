"""Which worker process downloads which blob: the `claims` table, for single flight across the
workers of `hubcache run --workers N`, which share one store.

A worker's flight claims its digest before it asks upstream. A flight of another worker that
finds the claim held by a live sibling does not download: it follows the sibling's write in the
store (serve/flights.py). A claim names the worker's pid and the blob id it writes now (none until
upstream answered, another one when the download goes on from its next source), and is released
after the blob is published or the download failed. A worker that died leaves its claims and
pending writes behind: its supervisor drops them (release_all_of), and until then a claim of a pid
that is no longer alive counts as free, so a sibling takes the download over.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import lmdb

from hubcache.store.txn import Transactions, Txn


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (not a sibling, but not free either)
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """A download under way in a worker: its pid, the blob id it writes now (b"" before upstream
    answered), and whose download it is ("" when anyone may share it)."""

    pid: int
    blob_id: bytes = b""
    owner: str = ""
    done: float = 0.0  # when it ended, for a claim kept a moment after its end (release(keep=True))


RECENT = 10.0  # seconds an ended claim kept by release(keep=True) tells others its work was just done


class Claims:
    """The `claims` table: digest -> {pid, id, owner}. Writes commit at once (they are few: a
    download's start, its source's answer, its end)."""

    def __init__(self, txns: Transactions, published: Callable[[Txn, bytes], bool],
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self._txns = txns
        self._published = published  # (txn, digest): whether the blob is stored
        self._alive = alive
        try:
            self._db: lmdb._Database | None = txns.open_db(b"claims")
        except lmdb.NotFoundError:  # a read-only store made before workers existed
            self._db = None

    def _get(self, txn: Txn, key: bytes) -> Claim | None:
        raw = txn.get(key, db=self._db)
        if raw is None:
            return None
        r = json.loads(raw)
        return Claim(r["pid"], bytes.fromhex(r.get("id", "")), r.get("owner", ""), r.get("done", 0.0))

    def _put(self, txn: Txn, key: bytes, claim: Claim) -> None:
        record = {"pid": claim.pid, "id": claim.blob_id.hex(), "owner": claim.owner} | ({"done": claim.done} if claim.done else {})
        txn.put(key, json.dumps(record).encode(), db=self._db)

    def _busy(self, held: Claim | None, me: int) -> bool:
        """Whether a claim found keeps another process from taking it: a live sibling's under way,
        or a sibling's that ended within RECENT seconds (its result is to be used)."""
        if held is None or held.pid == me:
            return False
        if held.done:
            return time.time() - held.done < RECENT
        return self._alive(held.pid)

    def take(self, digest: str, owner: str, pid: int | None = None) -> Claim | None | bool:
        """Claim `digest` for this process. Returns None when it is now ours; True when the blob
        was published meanwhile (nothing to download); else the live sibling's claim to follow
        (or, with `done` set, the claim it kept a moment after its work ended)."""
        me, key = os.getpid() if pid is None else pid, digest.encode()

        def op(txn: Txn) -> Claim | None | bool:
            if self._published(txn, key):
                return True
            held = self._get(txn, key)
            if self._busy(held, me):
                return held
            self._put(txn, key, Claim(me, b"", owner))
            return None

        return self._txns.write(op)

    def writing(self, digest: str, blob_id: bytes, pid: int | None = None) -> None:
        """This process's download of `digest` now writes under `blob_id`."""
        me, key = os.getpid() if pid is None else pid, digest.encode()

        def op(txn: Txn) -> None:
            held = self._get(txn, key)
            if held is not None and held.pid == me:
                self._put(txn, key, Claim(me, blob_id, held.owner))

        self._txns.write(op)

    def release(self, digest: str, pid: int | None = None, keep: bool = False) -> None:
        """This process's download of `digest` ended (published, or failed). `keep`: the claim
        stays RECENT seconds, marked done, so that a sibling that looked in the store a moment
        ago and comes to take the work now uses its result instead (a manifest GET: done again,
        it would cost a counted pull)."""
        me, key = os.getpid() if pid is None else pid, digest.encode()

        def op(txn: Txn) -> None:
            held = self._get(txn, key)
            if held is not None and held.pid == me:
                if keep:
                    self._put(txn, key, Claim(me, held.blob_id, held.owner, time.time()))
                else:
                    txn.delete(key, db=self._db)

        self._txns.write(op)

    def held(self, digest: str) -> Claim | None:
        """The claim on `digest` of a live process whose work goes on, or None."""
        if self._db is None:
            return None
        claim = self._txns.read(lambda txn: self._get(txn, digest.encode()))
        return claim if claim is not None and not claim.done and self._alive(claim.pid) else None

    def release_all_of(self, pid: int) -> int:
        """Drop every claim of `pid` (a worker that died); returns how many."""
        def op(txn: Txn) -> int:
            mine = [k for k, v in txn.cursor(db=self._db) if json.loads(v)["pid"] == pid]
            for k in mine:
                txn.delete(k, db=self._db)
            return len(mine)

        return self._txns.write(op)

    def clear(self) -> int:
        """Drop every claim (the store opens: no worker runs yet)."""
        def op(txn: Txn) -> int:
            if self._db is None:
                return 0
            n = txn.stat(self._db)["entries"]
            txn.drop(self._db, delete=False)
            return n

        return self._txns.write(op)
