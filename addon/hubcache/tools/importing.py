"""`hubcache import`: an OCI image layout tar into the store. Every blob file is hashed and every
image checked whole before anything is written (a tampered archive is refused, naming the bad
file); each blob is hashed once more as it is stored (BlobWriter), so a file that changes between
the two reads is not stored either. Tags are recorded with the times the archive carries.

Beside a running hubcache the store is opened with Store(beside=True) (the proxy keeps its lock)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from hubcache.decide import access
from hubcache.decide.ocilayout import (
    INDEX_FILE,
    LAYOUT_FILE,
    ArchiveError,
    ImagePlan,
    blob_path,
    digest_of_path,
    keeps_newer,
    parse_index,
    plan_import,
)
from hubcache.model import MAX_MANIFEST_BYTES
from hubcache.store import DigestMismatch, Store, StoreError, StoreInUse
from hubcache.tools import preflight
from hubcache.tools.archive import Bar, progress

READ = 1 << 20


def _members(tar: tarfile.TarFile) -> tuple[dict[str, tarfile.TarInfo], tarfile.TarInfo]:
    """The archive's blob files by digest, and its index.json; anything else but directories
    and oci-layout is refused (links too: a blob is a file)."""
    blobs, index = {}, None
    for m in tar.getmembers():
        name = m.name.removeprefix("./").rstrip("/")
        if m.isdir() or name == LAYOUT_FILE:
            continue
        digest = digest_of_path(name)
        if name == INDEX_FILE and m.isfile():
            index = m
        elif digest is not None and m.isfile():
            blobs[digest] = m
        else:
            raise ArchiveError(f"{m.name}: not part of an OCI image layout")
    if index is None:
        raise ArchiveError(f"no {INDEX_FILE}: not an OCI image layout archive")
    return blobs, index


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(m)
    assert f is not None  # a regular file
    return f.read()


def _check_digests(tar: tarfile.TarFile, blobs: dict[str, tarfile.TarInfo]) -> None:
    """Hash every blob file; the first that does not match its name is named."""
    with progress(sum(m.size for m in blobs.values()), "check") as bar:
        for digest, m in blobs.items():
            f = tar.extractfile(m)
            assert f is not None
            h, n = hashlib.sha256(), 0
            while chunk := f.read(READ):
                h.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
            if n != m.size or "sha256:" + h.hexdigest() != digest:
                raise ArchiveError(f"{blob_path(digest)} does not match its digest (its {n} bytes hash to "
                                   f"sha256:{h.hexdigest()}): the archive was altered or damaged")


def _open_store(path: str) -> tuple[Store, bool]:
    """The store to write, made if missing; (store, True) when a running hubcache holds it."""
    try:
        return Store(path), False
    except StoreInUse:
        pass
    except (StoreError, OSError) as e:
        raise preflight.Problem(f"{e}: give --store a directory hubcache may create and write",
                                preflight.EXIT_STORE_UNUSABLE) from e
    try:
        return Store(path, beside=True), True
    except StoreError as e:
        raise preflight.Problem(str(e), preflight.EXIT_STORE_UNUSABLE) from e


class _Writer:
    """Writes the plans into the store, counting what it wrote and what was there already."""

    def __init__(self, store: Store, tar: tarfile.TarFile, blobs: dict[str, tarfile.TarInfo], bar: Bar) -> None:
        self.store, self.tar, self.files, self.bar = store, tar, blobs, bar
        self.written = self.present = self.nbytes = 0
        self.kept: list[str] = []

    def image(self, plan: ImagePlan) -> None:
        seen = access.seen_as(plan.repository, False)  # the operator's import: for every client, as a public pull
        for b in plan.blobs:
            self.blob(b.digest, b.size, seen)
        for d in plan.manifests:
            self.store.put_manifest(d.digest, d.media_type, _read(self.tar, self.files[d.digest]), seen)
            self.bar.update(d.size)
        e = plan.entry
        if keeps_newer(self.store.tag_records(plan.repository, plan.tag), e):
            self.kept.append(e.reference)
            return
        for when in (e.fetched, e.confirmed):  # the change at its first time, then its last confirmation
            self.store.put_tag(plan.repository, plan.tag, e.top.media_type, e.top.digest, e.top.size, when)

    def blob(self, digest: str, size: int, seen: str) -> None:
        if self.store.blob_info(digest) is not None:
            self.store.note_repository(digest, seen)
            self.present += 1
            self.bar.update(size)
            return
        writer = self.store.begin_blob(digest, size, seen)
        f = self.tar.extractfile(self.files[digest])
        assert f is not None
        try:
            while chunk := f.read(READ):
                writer.write(chunk)
                self.bar.update(len(chunk))
            writer.commit()
            if self.store.blob_info(digest) is None:  # its pending write was recovered by a hubcache started meanwhile
                raise StoreError(f"{digest} was dropped while it was written (a hubcache opened the store): "
                                 "import again")
        except DigestMismatch:
            raise ArchiveError(f"{blob_path(digest)} changed while it was imported") from None
        finally:
            writer.abort()
        self.written += 1
        self.nbytes += size


def import_archive(store_path: str, archive: Path) -> str:
    """Check the whole archive, then write it to the store; returns the summary."""
    try:
        tar = tarfile.open(archive, "r:")
    except FileNotFoundError:
        raise preflight.Problem(f"{archive}: no such file", preflight.EXIT_USAGE) from None
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"not a tar archive ({e})") from None
    with tar:
        blobs, index = _members(tar)
        _check_digests(tar, blobs)

        def body(digest: str) -> bytes:
            if blobs[digest].size > MAX_MANIFEST_BYTES:
                raise ArchiveError(f"{blob_path(digest)}: a manifest over {MAX_MANIFEST_BYTES} bytes")
            return _read(tar, blobs[digest])

        plans = plan_import(parse_index(_read(tar, index)), {d: m.size for d, m in blobs.items()}, body)
        store, beside = _open_store(store_path)
        try:
            total = sum(d.size for p in plans for d in p.blobs + p.manifests)
            with progress(total, "import") as bar:
                w = _Writer(store, tar, blobs, bar)
                for plan in plans:
                    w.image(plan)
        except StoreError as e:
            raise preflight.Problem(f"the store could not take the archive: {e}", preflight.EXIT_STORE_UNUSABLE) from e
        finally:
            store.close()
    lines = [f"{p.entry.reference}: {len(p.left_out)} platforms of its index are not in the archive" for p in plans if p.left_out]
    lines += [f"{ref}: the store's tag is newer than the archive's; kept" for ref in w.kept]
    lines.append(f"imported {len(plans)} images ({', '.join(p.entry.reference for p in plans)}) into {store_path}"
                 f"{' beside the running hubcache' if beside else ''}: {w.written} blobs ({w.nbytes} bytes) written, "
                 f"{w.present} already there")
    return "\n".join(lines)
