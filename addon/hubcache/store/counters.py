"""What the store served, kept across restarts: per image reference and digest, per client, and in
total, pulls (and of them those answered from the store: saved upstream) and bytes (and of them
those sent from the store). Counts are buffered in memory (add) and merged into the `counters`
table in batches (flush), like access times: a request never waits for a write transaction."""

from __future__ import annotations

import json
import threading
from typing import Any

import lmdb

from hubcache.model import ClientCounter, ImageCounter
from hubcache.store.txn import Transactions, Txn

IMAGE, CLIENT, TOTAL = b"i\0", b"c\0", b"t\0all"  # key prefixes: i\0<reference>\0<digest>, c\0<client>
FIELDS = ("pulls", "hits", "bytes", "store_bytes")


def _merge(record: dict[str, Any] | None, delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(record or {})
    for f in FIELDS:
        out[f] = out.get(f, 0) + delta.get(f, 0)
    out["first"] = min(out.get("first", delta["first"]), delta["first"])
    out["last"] = max(out.get("last", delta["last"]), delta["last"])
    return out


class Counters:
    """The `counters` table (JSON {pulls, hits, bytes, store_bytes, first, last} per key). A
    read-only store made before it existed reads as empty."""

    def __init__(self, txns: Transactions) -> None:
        self._txns = txns
        try:
            self._db: lmdb._Database | None = txns.open_db(b"counters")
        except lmdb.NotFoundError:
            self._db = None
        self._pending: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, reference: str, digest: str, client: str, *, pull: bool, hit: bool, nbytes: int, store_bytes: int,
            when: float) -> None:
        """Count one request (written by the next flush)."""
        delta = {"pulls": int(pull), "hits": int(pull and hit), "bytes": nbytes, "store_bytes": store_bytes,
                 "first": when, "last": when}
        keys = [TOTAL]
        if reference:
            keys.append(IMAGE + reference.encode() + b"\0" + digest.encode())
        if client:
            keys.append(CLIENT + client.encode())
        with self._lock:
            for key in keys:
                self._pending[key] = _merge(self._pending.get(key), delta)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or self._db is None:
            return
        db = self._db

        def op(txn: Txn) -> None:
            for key, delta in pending.items():
                raw = txn.get(key, db=db)
                txn.put(key, json.dumps(_merge(json.loads(raw) if raw else None, delta)).encode(), db=db)

        self._txns.write(op)

    def records(self) -> dict[bytes, dict[str, Any]]:
        """Every record, by key."""
        if self._db is None:
            return {}
        db = self._db
        return self._txns.read(lambda txn: {bytes(k): json.loads(v) for k, v in txn.cursor(db=db)})

    def images(self, limit: int | None = None) -> list[ImageCounter]:
        """Per image reference and digest, most pulled first (then most bytes)."""
        rows = [image_counter(key, r) for key, r in self.records().items() if key.startswith(IMAGE)]
        rows.sort(key=lambda c: (-c.pulls, -c.bytes, c.reference, c.digest))
        return rows[:limit] if limit is not None else rows

    def clients(self) -> list[ClientCounter]:
        """Per client, most pulls first."""
        rows = [ClientCounter(key[len(CLIENT):].decode(), r["pulls"], r["bytes"], r["last"])
                for key, r in self.records().items() if key.startswith(CLIENT)]
        return sorted(rows, key=lambda c: (-c.pulls, -c.bytes, c.client))


def image_counter(key: bytes, r: dict[str, Any]) -> ImageCounter:
    reference, _, digest = key[len(IMAGE):].decode().partition("\0")
    return ImageCounter(reference, digest, r["pulls"], r["bytes"], r["first"], r["last"])
