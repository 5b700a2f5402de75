"""Manifests by digest, tags (what each points to now, and every change), and the repositories
each digest was seen in."""

from __future__ import annotations

import json
import struct

from hubcache.model import Manifest, TagRecord
from hubcache.store.txn import Transactions, Txn


class Catalog:
    """The `manifests`, `tags`, `history` and `repos` tables. Methods taking a `txn` work inside
    a caller's write transaction, so that the store can change other tables in the same one."""

    def __init__(self, txns: Transactions) -> None:
        self._txns = txns
        self._manifests = txns.open_db(b"manifests")
        self._tags = txns.open_db(b"tags")
        self._history = txns.open_db(b"history")
        self._repos = txns.open_db(b"repos", dupsort=True)

    # -- manifests ----------------------------------------------------------------------------

    def get_manifest(self, digest: str) -> Manifest | None:
        raw = self._txns.read(lambda txn: txn.get(digest.encode(), db=self._manifests))
        if raw is None:
            return None
        header, _, body = raw.partition(b"\n")
        return Manifest(digest, json.loads(header)["media_type"], body)

    def add_manifest(self, txn: Txn, key: bytes, media_type: str, body: bytes, stored: float) -> bool:
        """Store a manifest unless it is there already; returns whether it was added."""
        if txn.get(key, db=self._manifests) is not None:
            return False
        value = json.dumps({"media_type": media_type, "stored": stored}).encode() + b"\n" + body
        txn.put(key, value, db=self._manifests)
        return True

    def remove_manifest(self, txn: Txn, key: bytes) -> int | None:
        """Delete a manifest; returns the size of its body, or None when there was none."""
        raw = txn.get(key, db=self._manifests)
        if raw is None:
            return None
        txn.delete(key, db=self._manifests)
        return len(raw) - raw.index(b"\n") - 1

    def manifests(self) -> list[tuple[str, bytes]]:
        """(digest, body) of every manifest."""
        rows = self._txns.read(lambda txn: list(txn.cursor(db=self._manifests)))
        return [(key.decode(), raw.partition(b"\n")[2]) for key, raw in rows]

    def manifests_size(self, txn: Txn) -> int:
        """The bytes of all manifest bodies (what they count in the store's size)."""
        return sum(len(v) - v.index(b"\n") - 1 for _, v in txn.cursor(db=self._manifests))

    # -- tags ---------------------------------------------------------------------------------

    def tag_records(self, repository: str, tag: str) -> dict[str, TagRecord]:
        raw = self._txns.read(lambda txn: txn.get(f"{repository}:{tag}".encode(), db=self._tags))
        if raw is None:
            return {}
        return {
            media_type: TagRecord(repository, tag, media_type, r["digest"], r["size"], r["fetched"], r["confirmed"])
            for media_type, r in json.loads(raw).items()
        }

    def put_tag(self, repository: str, tag: str, media_type: str, digest: str, size: int, now: float) -> bool:
        """Record that upstream says tag -> digest now. Returns True when the digest changed."""
        key = f"{repository}:{tag}".encode()

        def op(txn: Txn) -> bool:
            raw = txn.get(key, db=self._tags)
            records = json.loads(raw) if raw else {}
            old = records.get(media_type)
            changed = old is None or old["digest"] != digest
            fetched = old["fetched"] if old is not None and not changed else now
            records[media_type] = {"digest": digest, "size": size, "fetched": fetched, "confirmed": now}
            txn.put(key, json.dumps(records).encode(), db=self._tags)
            if changed:  # the tag's history: every change, with its time
                hkey = key + b"\0" + struct.pack(">Q", int(now * 1000))
                txn.put(hkey, json.dumps({"media_type": media_type, "digest": digest, "size": size}).encode(), db=self._history)
            return changed

        return self._txns.write(op)

    def tag_history(self, repository: str, tag: str | None = None) -> list[tuple[str, float, str, str]]:
        """(tag, time, media type, digest) for every recorded change, oldest first."""
        prefix = f"{repository}:{tag}\0".encode() if tag else f"{repository}:".encode()

        def op(txn: Txn) -> list[tuple[str, float, str, str]]:
            out: list[tuple[str, float, str, str]] = []
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

        rows = self._txns.read(op)
        return sorted(rows, key=lambda r: (r[1], r[0]))

    def tag_at(self, repository: str, tag: str, when: float) -> dict[str, TagRecord]:
        """What the tag pointed to at `when`, per media type (from its history)."""
        records: dict[str, TagRecord] = {}
        for _, t, media_type, digest in self.tag_history(repository, tag):
            if t <= when:
                records[media_type] = TagRecord(repository, tag, media_type, digest, 0, t, t)
        return records

    # -- repositories -------------------------------------------------------------------------

    def note_repository(self, txn: Txn, key: bytes, repository: str) -> None:
        txn.put(key, repository.encode(), db=self._repos)

    def forget_repositories(self, txn: Txn, key: bytes) -> None:
        txn.delete(key, db=self._repos)

    def repositories(self, digest: str) -> list[str]:
        def op(txn: Txn) -> list[str]:
            cur = txn.cursor(db=self._repos)
            if not cur.set_key(digest.encode()):
                return []
            return [v.decode() for v in cur.iternext_dup()]

        return self._txns.read(op)

    def counts(self, txn: Txn) -> tuple[int, int]:
        """How many manifests and tags there are."""
        return txn.stat(self._manifests)["entries"], txn.stat(self._tags)["entries"]
