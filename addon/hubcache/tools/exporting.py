"""`hubcache export`: images of the store, by tag, into an OCI image layout tar. The store is
opened read-only, so a running hubcache keeps serving it; every byte is hashed again on its way
out, so a damaged store makes no archive."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hubcache.decide import access
from hubcache.decide.ocilayout import INDEX_FILE, LAYOUT_BODY, LAYOUT_FILE, Descriptor, Entry, blob_path, index_json, platform_of, reference
from hubcache.decide.routes import parse_reference
from hubcache.model import INDEX_TYPES, BlobInfo, Manifest, TagRecord, is_digest
from hubcache.store import Store, StoreError
from hubcache.store.catalog import references
from hubcache.tools import preflight
from hubcache.tools.archive import Bar, progress


@dataclass
class _Content:
    """What goes in the archive: manifests by digest, blobs by digest, images in order."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, BlobInfo] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _record(records: dict[str, TagRecord]) -> TagRecord:
    """The tag's record to export: an index when the store has one (every platform a client
    pulled), else the one confirmed last."""
    return max(records.values(), key=lambda r: (r.media_type in INDEX_TYPES, r.confirmed))


def _blobs_of(store: Store, m: Manifest) -> tuple[dict[str, BlobInfo], str]:
    """The blobs an image manifest references, or ({}, the first digest the store lacks)."""
    found = {}
    for digest in references(m.body):
        info = store.blob_info(digest)
        if info is None:
            return {}, digest
        found[digest] = info
    return found, ""


def _add_image(store: Store, text: str, out: _Content) -> None:
    try:
        repository, tag = parse_reference(text)
    except ValueError as e:
        raise preflight.Problem(str(e), preflight.EXIT_USAGE) from None
    if tag is not None and is_digest(tag):
        raise preflight.Problem(f"{text}: export names images by tag (the archive records the tag)", preflight.EXIT_USAGE)
    tag = tag or "latest"
    ref = reference(repository, tag)
    records = store.tag_records(repository, tag)
    if not records:
        raise preflight.Problem(f"{ref} is not in the store: pull it through hubcache first (or check the name with "
                                f"`hubcache history`)", preflight.EXIT_PROBLEM)
    rec = _record(records)
    top = store.get_manifest(rec.digest)
    if top is None:
        raise preflight.Problem(f"{ref}: its manifest {rec.digest} is no longer in the store (evicted): pull it again",
                                preflight.EXIT_PROBLEM)
    if access.visibility(store.repositories(rec.digest), repository) == "private":
        raise preflight.Problem(f"{ref} was pulled with a client's own login (private content): not exported",
                                preflight.EXIT_PROBLEM)
    if top.media_type in INDEX_TYPES:
        _add_children(store, ref, top, out)
    else:
        blobs, missing = _blobs_of(store, top)
        if missing:
            raise preflight.Problem(f"{ref}: blob {missing} is no longer in the store (evicted): pull it again",
                                    preflight.EXIT_PROBLEM)
        out.blobs.update(blobs)
    out.manifests[top.digest] = top.body
    out.entries.append(Entry(ref, Descriptor(top.media_type, top.digest, len(top.body)), rec.fetched, rec.confirmed))


def _add_children(store: Store, ref: str, index: Manifest, out: _Content) -> None:
    """An index's platforms that the store holds whole; the others are left out, and said so."""
    whole = 0
    for child in json.loads(index.body).get("manifests") or []:
        digest, platform = child.get("digest", ""), platform_of(child) or child.get("digest", "")
        m = store.get_manifest(digest)
        blobs, missing = _blobs_of(store, m) if m is not None else ({}, digest)
        if missing:
            if platform != "unknown/unknown":  # attestations: nobody pulls them, nobody misses them
                out.notes.append(f"{ref}: {platform} left out ({missing} is not in the store)")
            continue
        assert m is not None
        out.manifests[m.digest] = m.body
        out.blobs.update(blobs)
        whole += 1
    if not whole:
        raise preflight.Problem(f"{ref}: the store holds none of its platforms whole: pull it again",
                                preflight.EXIT_PROBLEM)


class _HashingReader:
    """A blob's bytes from the store as a file for tarfile, hashed as they go."""

    def __init__(self, pieces: Iterator[bytes], bar: Bar) -> None:
        self._pieces = pieces
        self._piece, self._pos = b"", 0
        self._bar = bar
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        out = []
        while n != 0:
            if self._pos == len(self._piece):
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._piece, self._pos = piece, 0
            take = len(self._piece) - self._pos if n < 0 else min(n, len(self._piece) - self._pos)
            out.append(self._piece[self._pos : self._pos + take])
            self._pos += take
            n -= take if n > 0 else 0
        data = b"".join(out)
        self.sha.update(data)
        self._bar.update(len(data))
        return data


def _member(tar: tarfile.TarFile, name: str, size: int, data: IO[bytes] | _HashingReader, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, mtime
    tar.addfile(info, data)


def _write(store: Store, content: _Content, path: Path) -> None:
    mtime = int(time.time())
    total = sum(len(b) for b in content.manifests.values()) + sum(i.size for i in content.blobs.values())
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar, progress(total, "export") as bar:
        _member(tar, LAYOUT_FILE, len(LAYOUT_BODY), io.BytesIO(LAYOUT_BODY), mtime)
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for digest, blob in content.blobs.items():
            reader = _HashingReader(store.read_blob(blob), bar)
            _member(tar, blob_path(digest), blob.size, reader, mtime)
            if "sha256:" + reader.sha.hexdigest() != digest:
                raise preflight.Problem(f"blob {digest} in the store does not match its digest: run `hubcache verify` "
                                        "(proxy stopped), then pull the image again", preflight.EXIT_PROBLEM)
        for digest, body in content.manifests.items():
            _member(tar, blob_path(digest), len(body), io.BytesIO(body), mtime)
            bar.update(len(body))
        index = index_json(content.entries)
        _member(tar, INDEX_FILE, len(index), io.BytesIO(index), mtime)


def export(store_path: str, images: list[str], out: Path) -> str:
    """Write the archive of `images` to `out` (whole, or not at all); returns the summary line."""
    store = preflight.open_existing(store_path, readonly=True)
    content = _Content()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        for text in images:
            _add_image(store, text, content)
        try:
            _write(store, content, tmp)
        except StoreError as e:
            raise preflight.Problem(f"the store could not be read: {e}: run `hubcache verify` (proxy stopped)",
                                    preflight.EXIT_PROBLEM) from e
        except OSError as e:
            raise preflight.Problem(f"cannot write {out}: {e.strerror or e}", preflight.EXIT_USAGE) from e
        os.replace(tmp, out)
    finally:
        store.close()
        tmp.unlink(missing_ok=True)
    size = sum(len(b) for b in content.manifests.values()) + sum(i.size for i in content.blobs.values())
    lines = content.notes + [f"exported {len(content.entries)} images ({', '.join(e.reference for e in content.entries)}): "
                             f"{len(content.manifests)} manifests and {len(content.blobs)} blobs, {size} bytes, to {out}"]
    return "\n".join(lines)
