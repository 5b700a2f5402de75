"""The store's format version, in `meta` under `format`: JSON {"format": N, "hubcache": version
that wrote it}. A store of an older format is migrated when opened for writing (read-only, it is
read as it is); one of a newer format is refused, naming the hubcache that wrote it.

Formats: 1, everything before the version was recorded; 2, the `counters` table (what was
served, per image and client), created empty when a format 1 store is migrated."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb

from hubcache import __version__
from hubcache.store.errors import StoreError

FORMAT = 2
KEY = b"format"


class NewerFormat(StoreError):
    """The store was written by a newer hubcache, in a format this one does not read."""


def found(env: lmdb.Environment) -> tuple[int, str] | None:
    """(format, hubcache version that wrote it) of the store in `env`; None for a new, empty one."""
    with env.begin() as txn:
        if txn.get(b"meta") is None:  # the main database names the tables: no meta, no store yet
            return None
    meta = env.open_db(b"meta", create=False)
    with env.begin() as txn:
        raw = txn.get(KEY, db=meta)
    if raw is None:
        return 1, "0.1.0 or older"
    r = json.loads(raw)
    return int(r["format"]), str(r.get("hubcache", "?"))


def check(path: Path, seen: tuple[int, str] | None) -> None:
    """Refuse a store of a newer format than this hubcache reads."""
    if seen is not None and seen[0] > FORMAT:
        raise NewerFormat(f"store {path} has format {seen[0]}, written by hubcache {seen[1]}; this hubcache "
                          f"{__version__} reads formats up to {FORMAT}: open it with hubcache {seen[1]} or later")


def record(env: lmdb.Environment) -> None:
    """Write this hubcache's format (after the tables of that format exist)."""
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(KEY, json.dumps({"format": FORMAT, "hubcache": __version__}).encode(), db=meta)
