"""`hubcache export` / `import`: the OCI layout archive's index (pure), what an import refuses
before it writes anything, and a real store's images going through a real tar into another store,
also beside a process that holds the store as a running hubcache does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hubcache.decide.ocilayout import CONTAINERD_NAME, REF_NAME, ArchiveError, Descriptor, Entry, index_json, keeps_newer, parse_index, plan_import
from hubcache.model import OCI_INDEX, OCI_MANIFEST, TagRecord, sha256_digest
from hubcache.store import CHUNK_SIZE, Store

HUBCACHE = Path(sys.executable).parent / "hubcache"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
T0, T1 = 1_600_000_000.0, 1_700_000_000.0  # when the tag was first seen, and last confirmed


def desc(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def image(seed: int, sizes=(CHUNK_SIZE * 6 + 999, 5000)) -> tuple[bytes, dict[str, bytes]]:
    """An image manifest and its blobs (config, layers) by digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [os.urandom(n) for n in sizes]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(CONFIG, config),
                       "layers": [desc(LAYER, la) for la in layers]}).encode()
    return body, {sha256_digest(b): b for b in [config, *layers]}


def fill(store: Store, repository: str, tag: str, body: bytes, blobs: dict[str, bytes], media_type=OCI_MANIFEST) -> str:
    for d, data in blobs.items():
        w = store.begin_blob(d, len(data), "P:" + repository)
        w.write(data)
        w.commit()
    digest = sha256_digest(body)
    store.put_manifest(digest, media_type, body, "P:" + repository)
    store.put_tag(repository, tag, media_type, digest, len(body), T0)
    store.put_tag(repository, tag, media_type, digest, len(body), T1)
    return digest


def hubcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), *args], capture_output=True, text=True, timeout=120)


def contents(store: Store, digests) -> dict[str, bytes]:
    out = {}
    for d in digests:
        m = store.get_manifest(d)
        out[d] = m.body if m else b"".join(store.read_blob(store.blob_info(d)))
    return out


# -- the index (pure) ---------------------------------------------------------------------------

def test_index_names_each_image_by_full_reference_for_skopeo_and_containerd_and_keeps_the_times():
    top = Descriptor(OCI_MANIFEST, sha256_digest(b"m"), 1)
    raw = index_json([Entry("docker.io/library/postgres:12.2", top, T0, T1)])
    doc = json.loads(raw)
    notes = doc["manifests"][0]["annotations"]
    assert notes[REF_NAME] == notes[CONTAINERD_NAME] == "docker.io/library/postgres:12.2"
    assert doc["mediaType"] == OCI_INDEX and doc["manifests"][0]["digest"] == top.digest
    assert parse_index(raw) == [Entry("docker.io/library/postgres:12.2", top, T0, T1)]


@pytest.mark.parametrize("doc, says", [
    (b"not json", "index.json is not JSON"),
    (b'{"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:00", "size": 1}]}',
     "is not a sha256 digest"),
    (json.dumps({"manifests": [desc(OCI_MANIFEST, b"m")]}).encode(), "names no image"),
    (json.dumps({"manifests": [desc(LAYER, b"m", annotations={REF_NAME: "x:1"})]}).encode(), "not a manifest"),
])
def test_a_bad_index_is_refused_saying_what_is_wrong(doc, says):
    with pytest.raises(ArchiveError, match=says):
        parse_index(doc)


def plan(entries, files: dict[str, bytes]):
    return plan_import(entries, {d: len(b) for d, b in files.items()}, lambda d: files[d])


def test_an_image_missing_a_layer_or_with_a_wrong_size_is_refused_naming_the_blob():
    body, blobs = image(1, (10, 20))
    files = {sha256_digest(body): body, **blobs}
    entry = Entry("docker.io/library/x:1", Descriptor(OCI_MANIFEST, sha256_digest(body), len(body)), T0, T1)
    [p] = plan([entry], files)
    assert (p.repository, p.tag) == ("library/x", "1")
    assert {b.digest for b in p.blobs} == set(blobs) and [m.digest for m in p.manifests] == [entry.top.digest]
    layer = list(blobs)[-1]
    with pytest.raises(ArchiveError, match=f"blobs/sha256/{layer[7:]} .* is not in the archive"):
        plan([entry], {d: b for d, b in files.items() if d != layer})
    with pytest.raises(ArchiveError, match=f"blobs/sha256/{layer[7:]} is 21 bytes, its descriptor says 20"):
        plan([entry], {**files, layer: files[layer] + b"!"})
    with pytest.raises(ArchiveError, match="names no tag"):
        plan([Entry(f"docker.io/library/x@{entry.top.digest}", entry.top, T0, T1)], files)


def test_an_index_may_lack_platforms_but_not_all():
    amd, amd_blobs = image(1, (10,))
    arm, _ = image(2, (11,))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, amd, platform={"os": "linux", "architecture": "amd64"}),
        desc(OCI_MANIFEST, arm, platform={"os": "linux", "architecture": "arm64"})]}).encode()
    files = {sha256_digest(index): index, sha256_digest(amd): amd, **amd_blobs}
    entry = Entry("ghcr.io/org/app:v1", Descriptor(OCI_INDEX, sha256_digest(index), len(index)), T0, T1)
    [p] = plan([entry], files)
    assert p.repository == "ghcr.io/org/app" and p.left_out == (sha256_digest(arm),)
    assert [m.digest for m in p.manifests] == [sha256_digest(amd), sha256_digest(index)]  # children first
    with pytest.raises(ArchiveError, match="none of the index's manifests"):
        plan([entry], {sha256_digest(index): index})


def test_an_import_never_moves_a_tag_back_to_an_older_image():
    entry = Entry("docker.io/library/x:1", Descriptor(OCI_MANIFEST, "sha256:" + "a" * 64, 1), T0, T1)
    newer = TagRecord("library/x", "1", OCI_MANIFEST, "sha256:" + "b" * 64, 1, T1, T1 + 1)
    assert keeps_newer({OCI_MANIFEST: newer}, entry)
    assert not keeps_newer({OCI_MANIFEST: TagRecord("library/x", "1", OCI_MANIFEST, "sha256:" + "b" * 64, 1, T0, T0)}, entry)
    assert not keeps_newer({}, entry)


# -- a real store through a real tar ------------------------------------------------------------

@pytest.fixture
def exported(tmp_path):
    """A store holding two images, and the archive `hubcache export` made of them."""
    src = tmp_path / "src"
    s = Store(src)
    body_a, blobs_a = image(1)
    body_b, blobs_b = image(2, (300,))
    top_a = fill(s, "library/app", "1.0", body_a, blobs_a)
    top_b = fill(s, "ghcr.io/org/tool", "v2", body_b, blobs_b)
    s.close()
    out = tmp_path / "images.tar"
    res = hubcache("export", "--store", str(src), "-o", str(out), "app:1.0", "ghcr.io/org/tool:v2")
    assert res.returncode == 0, res.stderr
    assert "exported 2 images (docker.io/library/app:1.0, ghcr.io/org/tool:v2)" in res.stdout
    expected = {top_a: body_a, top_b: body_b, **blobs_a, **blobs_b}
    return out, expected, (top_a, top_b)


def test_export_then_import_into_an_empty_store_gives_the_same_bytes_tags_and_times(exported, tmp_path):
    out, expected, (top_a, top_b) = exported
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json"} | {f"blobs/sha256/{d[7:]}" for d in expected} <= names
    res = hubcache("import", "--store", str(tmp_path / "dst"), str(out))
    assert res.returncode == 0, res.stderr
    assert "imported 2 images" in res.stdout and f"{len(expected) - 2} blobs" in res.stdout
    s = Store(tmp_path / "dst", readonly=True)
    try:
        assert contents(s, expected) == expected
        [rec] = s.tag_records("library/app", "1.0").values()
        assert (rec.digest, rec.fetched, rec.confirmed) == (top_a, T0, T1)
        assert s.tag_history("ghcr.io/org/tool", "v2") == [("v2", T0, OCI_MANIFEST, top_b)]
        assert s.repositories(top_a) == ["P:library/app"]
    finally:
        s.close()


def flip_one_byte(archive: Path, digest: str) -> None:
    """Flip a byte of a blob file inside the tar, in place, as a damaged copy would."""
    with tarfile.open(archive) as tar:
        offset = tar.getmember(f"blobs/sha256/{digest[7:]}").offset_data
    with open(archive, "r+b") as f:
        f.seek(offset + 100)
        b = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([b[0] ^ 1]))


def test_an_archive_with_one_flipped_byte_is_refused_naming_the_blob_and_nothing_is_written(exported, tmp_path):
    out, expected, _ = exported
    layer = max(expected, key=lambda d: len(expected[d]))
    flip_one_byte(out, layer)
    res = hubcache("import", "--store", str(tmp_path / "dst"), str(out))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"hubcache: {out}: blobs/sha256/{layer[7:]} does not match its digest (its {len(expected[layer])} bytes hash to "
        f"{res.stderr.split('hash to ')[1].split(')')[0]}): the archive was altered or damaged: nothing was imported"]
    assert not (tmp_path / "dst").exists()  # checked before the store was even opened


def test_import_beside_a_process_holding_the_store_and_its_map_grows_under_it(exported, tmp_path):
    out, expected, (top_a, _) = exported
    held = Store(tmp_path / "dst", map_size=1 << 20)  # as a running hubcache holds it; a map smaller than the import
    try:
        res = hubcache("import", "--store", str(tmp_path / "dst"), str(out))
        assert res.returncode == 0, res.stderr
        assert "beside the running hubcache" in res.stdout
        assert contents(held, expected) == expected  # the holder reads what the other process wrote
        assert held.tag_records("library/app", "1.0")[OCI_MANIFEST].digest == top_a
        assert held.map_size() > 1 << 20  # it took the map the import grew
    finally:
        held.close()


def test_export_refuses_what_the_store_does_not_hold_and_writes_no_file(tmp_path):
    s = Store(tmp_path / "src")
    body, blobs = image(3, (10, 20))
    fill(s, "library/gone", "1", body, blobs)
    s.delete(list(blobs)[-1])  # evicted since
    s.close()
    out = tmp_path / "x.tar"
    res = hubcache("export", "--store", str(tmp_path / "src"), "-o", str(out), "gone:1")
    assert res.returncode == 1 and "is no longer in the store (evicted): pull it again" in res.stderr
    res = hubcache("export", "--store", str(tmp_path / "src"), "-o", str(out), "never:1")
    assert res.returncode == 1 and "docker.io/library/never:1 is not in the store" in res.stderr
    assert not out.exists() and list(tmp_path.glob(".x.tar*")) == []
    res = hubcache("export", "--store", str(tmp_path / "nostore"), "-o", str(out), "gone:1")
    assert res.returncode == 4 and not (tmp_path / "nostore").exists()


def test_a_write_whose_pending_record_was_recovered_meanwhile_publishes_nothing(tmp_path):
    """An import beside a hubcache that restarts: the proxy's recovery drops the import's pending
    write; the import's publish must then not make a record whose first chunks are gone."""
    from hubcache.store import BATCH_BYTES

    s = Store(tmp_path / "s")
    try:
        data = os.urandom(BATCH_BYTES + CHUNK_SIZE + 5)
        w = s.begin_blob(sha256_digest(data), len(data), "P:library/x")
        w.write(data[:BATCH_BYTES])
        w.flush()  # one batch committed, with its pending record
        assert s.recover() == 1  # as a hubcache opening the store does
        w.write(data[BATCH_BYTES:])
        w.commit()
        assert s.blob_info(sha256_digest(data)) is None
        assert s.verify()["orphan_chunks"] == 0  # its chunks went with it
    finally:
        s.close()


def test_a_read_only_store_reads_what_another_process_wrote_past_its_map(tmp_path):
    """`hubcache export` (and `history`) open the store read-only beside a running hubcache, whose
    writes may grow the map past the size it had when they opened it."""
    Store(tmp_path / "s", map_size=1 << 20).close()
    ro = Store(tmp_path / "s", readonly=True)
    try:
        before = ro.map_size()
        code = ("import os, sys\nfrom hubcache.store import Store\nfrom hubcache.model import sha256_digest\n"
                "s = Store(sys.argv[1], map_size=1 << 20)\ndata = os.urandom(int(sys.argv[2]))\n"
                "w = s.begin_blob(sha256_digest(data), len(data), 'P:library/x')\nw.write(data)\nw.commit()\n"
                "print(sha256_digest(data))\ns.close()\n")
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s"), str(2 * before)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        info = ro.blob_info(res.stdout.strip())
        assert info is not None and sha256_digest(b"".join(ro.read_blob(info))) == info.digest
        assert ro.map_size() > before
    finally:
        ro.close()


def test_export_and_import_show_a_progress_bar_on_a_terminal_and_none_in_a_log(exported, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    out, _, _ = exported
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a terminal has a size
    try:
        res = subprocess.run([str(HUBCACHE), "import", "--store", str(tmp_path / "dst"), str(out)],
                             stdout=subprocess.PIPE, stderr=slave, timeout=120)
        assert res.returncode == 0
        os.close(slave)
        shown = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and read
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
    assert b"check:" in shown and b"import:" in shown and b"B/s]" in shown
    piped = hubcache("import", "--store", str(tmp_path / "dst2"), str(out))
    assert piped.returncode == 0 and piped.stderr == ""
