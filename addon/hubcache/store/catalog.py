"""Manifests by digest, tags (what each points to now, and every change), and the repositories
each digest belongs to.

A manifest stored for a repository links what it references (an image's config and layers, an
index's child manifests) to that repository too: content is served from the store under a
repository only when it belongs there, as the registry itself answers (a blob pushed to one
repository is unknown in another until it is pushed or mounted there), and a warm pull still
needs no upstream request, since every blob it asks for is referenced by the manifest it pulled."""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Iterator

import lmdb

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
        self._meta = txns.open_db(b"meta")

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

    def link_references(self, txn: Txn, body: bytes, seen: str) -> None:
        """Link what a manifest references to the repository it was stored for (`seen`, as in
        the repos table: visibility prefix and repository)."""
        for digest in references(body):
            txn.put(digest.encode(), seen.encode(), db=self._repos)

    def put_challenge(self, registry: str, header: str) -> None:
        """The WWW-Authenticate a registry asks for ("" for none), kept for answering /v2/ offline."""
        self._txns.write(lambda txn: txn.put(b"challenge:" + registry.encode(), header.encode(), db=self._meta))

    def challenges(self) -> dict[str, str]:
        """Every registry's kept challenge, by registry name."""
        def op(txn: Txn) -> dict[str, str]:
            return {key[len(b"challenge:"):].decode(): value.decode()
                    for key, value in _prefixed(txn, self._meta, b"challenge:")}

        return self._txns.read(op)

    def link_all_references(self) -> int:
        """Once per store made before manifests linked their references: link them now, for
        every repository each manifest was seen in. Returns how many manifests were read."""
        if self._txns.read(lambda txn: txn.get(b"links", db=self._meta)) == LINKS_VERSION:
            return 0

        def op(txn: Txn) -> int:
            n = 0
            for key, raw in txn.cursor(db=self._manifests):
                n += 1
                cur = txn.cursor(db=self._repos)
                seen = [v.decode() for v in cur.iternext_dup()] if cur.set_key(bytes(key)) else []
                for s in seen:
                    self.link_references(txn, bytes(raw).partition(b"\n")[2], s)
            txn.put(b"links", LINKS_VERSION, db=self._meta)
            return n

        return self._txns.write(op)

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

    def put_tag(self, repository: str, tag: str, media_type: str, digest: str, size: int, now: float,
                only: bool = False, replaces: Collection[str] = ()) -> bool:
        """Record that upstream says tag -> digest now, for clients asking for `media_type`. The
        records of the media types in `replaces` go (upstream chose this one over them), and with
        `only` all others (a push replaced whatever the tag was). Returns True when the digest
        changed."""
        key = f"{repository}:{tag}".encode()

        def op(txn: Txn) -> bool:
            raw = txn.get(key, db=self._tags)
            records = json.loads(raw) if raw else {}
            old = records.get(media_type)
            if only:
                records = {}
            for other in replaces:
                records.pop(other, None)
            changed = old is None or old["digest"] != digest
            fetched = old["fetched"] if old is not None and not changed else now
            records[media_type] = {"digest": digest, "size": size, "fetched": fetched, "confirmed": now}
            txn.put(key, json.dumps(records).encode(), db=self._tags)
            if changed:  # the tag's history: every change, with its time
                hkey = key + b"\0" + struct.pack(">Q", int(now * 1000))
                txn.put(hkey, json.dumps({"media_type": media_type, "digest": digest, "size": size}).encode(), db=self._history)
            return changed

        return self._txns.write(op)

    def drop_tag(self, repository: str, tag: str, now: float, digest: str | None = None) -> None:
        """Forget what a tag points to (all media types, or only those pointing to `digest`):
        the next pull asks upstream. The history records that from `now` on the tag pointed to
        nothing hubcache knows (a deletion: `tag_at` answers nothing after it)."""
        key = f"{repository}:{tag}".encode()

        def op(txn: Txn) -> None:
            raw = txn.get(key, db=self._tags)
            if raw is not None:
                self._drop_records(txn, key, json.loads(raw), now, digest)

        self._txns.write(op)

    def _drop_records(self, txn: Txn, key: bytes, records: dict[str, dict], now: float, digest: str | None) -> None:
        kept = {m: r for m, r in records.items() if digest is not None and r["digest"] != digest}
        if kept:
            txn.put(key, json.dumps(kept).encode(), db=self._tags)
        else:
            txn.delete(key, db=self._tags)
            hkey = key + b"\0" + struct.pack(">Q", int(now * 1000))
            txn.put(hkey, json.dumps({"media_type": "", "digest": "", "size": 0}).encode(), db=self._history)

    def forget_in_repository(self, txn: Txn, digest: str, repository: str, seen: Iterable[str], now: float) -> None:
        """A manifest deleted from `repository`: no tag of it points to it any more, and it no
        longer belongs there (`seen`: its repos entries for that repository). One pass over the
        repository's tags, inside the caller's write transaction."""
        found = []
        for key, raw in _prefixed(txn, self._tags, f"{repository}:".encode()):
            records = json.loads(raw)
            if any(r["digest"] == digest for r in records.values()):
                found.append((key, records))
        for key, records in found:  # changed after the walk: a cursor's table is not written under it
            self._drop_records(txn, key, records, now, digest)
        self.unlink(txn, digest.encode(), seen)

    def tags(self, repository: str) -> list[str]:
        """The tags of `repository` that hubcache has a record of, sorted."""
        prefix = f"{repository}:".encode()

        def op(txn: Txn) -> list[str]:
            return [key[len(prefix):].decode() for key, _ in _prefixed(txn, self._tags, prefix)]

        return sorted(self._txns.read(op))

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
        """What the tag pointed to at `when`, per media type (from its history; nothing after
        a deletion until the next change)."""
        records: dict[str, TagRecord] = {}
        for _, t, media_type, digest in self.tag_history(repository, tag):
            if t > when:
                break
            if not digest:
                records.clear()
            else:
                records[media_type] = TagRecord(repository, tag, media_type, digest, 0, t, t)
        return records

    # -- repositories -------------------------------------------------------------------------

    def note_repository(self, txn: Txn, key: bytes, repository: str) -> None:
        txn.put(key, repository.encode(), db=self._repos)

    def unlink(self, txn: Txn, key: bytes, seen: Iterable[str]) -> None:
        """Remove these repos entries of a digest (a manifest deleted from a repository)."""
        for s in seen:
            txn.delete(key, s.encode(), db=self._repos)

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


def _prefixed(txn: Txn, db: lmdb._Database, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of `db` whose key starts with `prefix`, in key order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    for key, value in cur:
        key = bytes(key)
        if not key.startswith(prefix):
            return
        yield key, bytes(value)


LINKS_VERSION = b"1"  # meta["links"]: the store's manifests have linked their references


def references(body: bytes) -> list[str]:
    """The digests a manifest references: an image's config and layers, an index's manifests
    (a body that is not a JSON object references nothing)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    found: list[str] = []
    config = doc.get("config")
    for item in [config] + list(doc.get("layers") or []) + list(doc.get("manifests") or []):
        if isinstance(item, dict) and isinstance(item.get("digest"), str):
            found.append(item["digest"])
    return found
