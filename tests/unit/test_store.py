import hashlib
import os

import lmdb
import pytest

from hubcache.model import sha256_digest
from hubcache.store import CHUNK_SIZE, DigestMismatch, Store


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def write_blob(store, data: bytes, piece=65536, repo="library/x"):
    w = store.begin_blob(digest(data), len(data), repo)
    for i in range(0, len(data), piece):
        w.write(data[i : i + piece])
    w.commit()
    return store.blob_info(digest(data))


def read_all(store, info, start=0, end=None):
    return b"".join(store.read_blob(info, start, end))


def entries(path, table: bytes) -> int:
    """How many entries a table of the store at `path` holds, read with py-lmdb directly. Only
    with the Store closed: LMDB wants one open environment per file in a process."""
    with lmdb.open(str(path), readonly=True, max_dbs=16) as env, env.begin() as txn:
        return txn.stat(env.open_db(table, txn=txn, create=False))["entries"]


def corrupt(path, table: bytes, key: bytes, value: bytes) -> None:
    """Overwrite one entry of the closed store at `path`, as a bad disk would."""
    with lmdb.open(str(path), max_dbs=16) as env, env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(table, txn=txn, create=False))


def test_blob_roundtrip_across_chunks(store):
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    info = write_blob(store, data)
    assert info.size == len(data)
    assert read_all(store, info) == data
    assert read_all(store, info, 100, CHUNK_SIZE + 7) == data[100 : CHUNK_SIZE + 7]
    assert store.size() == len(data)
    assert store.repositories(info.digest) == ["library/x"]


def test_empty_blob(store):
    info = write_blob(store, b"")
    assert info.size == 0 and read_all(store, info) == b""


def test_wrong_bytes_are_never_visible(tmp_path):
    store = Store(tmp_path / "s")
    good = os.urandom(20 * CHUNK_SIZE)  # large enough for intermediate batches
    w = store.begin_blob(digest(good), len(good), "r")
    bad = bytearray(good)
    bad[-1] ^= 1
    w.write(bytes(bad))
    with pytest.raises(DigestMismatch):
        w.commit()
    assert store.blob_info(digest(good)) is None
    assert store.size() == 0
    store.close()
    assert entries(tmp_path / "s", b"chunks") == 0


def test_short_body_is_refused(store):
    data = os.urandom(1000)
    w = store.begin_blob(digest(data), len(data) + 1, "r")
    w.write(data)
    with pytest.raises(DigestMismatch):
        w.commit()
    assert store.blob_info(digest(data)) is None


def test_interrupted_write_is_cleaned_at_next_open(tmp_path):
    s = Store(tmp_path / "s")
    data = os.urandom(40 * CHUNK_SIZE)  # several batches reach the disk
    w = s.begin_blob(digest(data), len(data), "r")
    w.write(data)  # no commit: the process "dies" here
    s.close()
    assert entries(tmp_path / "s", b"chunks") > 0
    s = Store(tmp_path / "s")
    assert s.blob_info(digest(data)) is None
    s.close()
    assert entries(tmp_path / "s", b"chunks") == 0
    assert entries(tmp_path / "s", b"pending") == 0


def test_manifest_must_match_its_digest(store):
    body = b'{"schemaVersion":2}'
    with pytest.raises(DigestMismatch):
        store.put_manifest("sha256:" + "0" * 64, "t", body, "r")
    store.put_manifest(sha256_digest(body), "application/x", body, "r")
    m = store.get_manifest(sha256_digest(body))
    assert (m.media_type, m.body) == ("application/x", body)


def test_tag_records_per_media_type(store):
    assert store.put_tag("r", "1", "a", "sha256:" + "1" * 64, 10, now=100.0) is True
    assert store.put_tag("r", "1", "a", "sha256:" + "1" * 64, 10, now=200.0) is False
    assert store.put_tag("r", "1", "b", "sha256:" + "2" * 64, 20, now=300.0) is True
    recs = store.tag_records("r", "1")
    assert set(recs) == {"a", "b"}
    assert (recs["a"].fetched, recs["a"].confirmed) == (100.0, 200.0)
    assert store.put_tag("r", "1", "a", "sha256:" + "3" * 64, 10, now=400.0) is True
    assert store.tag_records("r", "1")["a"].fetched == 400.0


class Clock:
    """A store's clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lru_eviction_keeps_recently_used(tmp_path):
    clock = Clock()
    s = Store(tmp_path / "s", max_size=5 * CHUNK_SIZE, clock=clock)
    blobs = [os.urandom(2 * CHUNK_SIZE) for _ in range(3)]
    infos = [write_blob(s, blobs[0])]
    clock.now += 1
    infos.append(write_blob(s, blobs[1]))
    clock.now += 1
    read_all(s, infos[0])  # blob 0 is now more recently used than blob 1
    s.flush_access()
    clock.now += 1
    write_blob(s, blobs[2])
    s.evict_if_needed()
    assert s.blob_info(digest(blobs[1])) is None
    assert s.blob_info(digest(blobs[0])) is not None
    assert s.blob_info(digest(blobs[2])) is not None
    assert s.size() <= 5 * CHUNK_SIZE
    s.close()


def test_pinned_blob_is_not_evicted(tmp_path):
    s = Store(tmp_path / "s", max_size=3 * CHUNK_SIZE)
    a, b = os.urandom(2 * CHUNK_SIZE), os.urandom(2 * CHUNK_SIZE)
    ia = write_blob(s, a)
    reader = s.read_blob(ia)
    first = next(reader)  # a is being served
    write_blob(s, b)
    s.evict_if_needed()
    assert first + b"".join(reader) == a
    assert s.blob_info(digest(b)) is None  # the only evictable one
    s.close()


def test_map_grows_instead_of_failing(tmp_path):
    s = Store(tmp_path / "s", map_size=1 << 20)
    data = os.urandom(8 << 20)
    info = write_blob(s, data)
    assert read_all(s, info) == data
    assert s.map_size() > 1 << 20
    s.close()


def test_one_process_per_store(tmp_path):
    from hubcache.store import StoreInUse

    s = Store(tmp_path / "s")
    with pytest.raises(StoreInUse, match="in use by pid"):
        Store(tmp_path / "s")
    s.close()
    Store(tmp_path / "s").close()


def test_tag_history_and_tag_at(store):
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    store.put_tag("library/pg", "12", "t", d1, 1, now=100.0)
    store.put_tag("library/pg", "12", "t", d1, 1, now=200.0)  # confirmed, not a change
    store.put_tag("library/pg", "12", "t", d2, 1, now=300.0)
    store.put_tag("library/pg", "13", "t", d2, 1, now=150.0)
    store.put_tag("library/pgx", "12", "t", d2, 1, now=150.0)  # another repository, same prefix
    assert [(t, when, d) for t, when, _, d in store.tag_history("library/pg", "12")] == [("12", 100.0, d1), ("12", 300.0, d2)]
    assert [t for t, *_ in store.tag_history("library/pg")] == ["12", "13", "12"]
    assert store.tag_at("library/pg", "12", 250.0)["t"].digest == d1
    assert store.tag_at("library/pg", "12", 300.0)["t"].digest == d2
    assert store.tag_at("library/pg", "12", 50.0) == {}


def test_verify_drops_what_does_not_match_and_orphan_chunks(tmp_path):
    s = Store(tmp_path / "s")
    good, bad = os.urandom(600_000), os.urandom(600_000)
    ig, ib = write_blob(s, good), write_blob(s, bad)
    body = b'{"schemaVersion":2}'
    s.put_manifest(sha256_digest(body), "t", body, "r")
    s.close()
    # rot one chunk of `bad` in place, and leave chunks that no blob owns
    from hubcache.store.blobs import chunk_key

    corrupt(tmp_path / "s", b"chunks", chunk_key(ib.blob_id, 1), b"x" * CHUNK_SIZE)
    corrupt(tmp_path / "s", b"chunks", chunk_key(b"orphan!!", 0), b"y")
    s = Store(tmp_path / "s")
    report = s.verify()
    assert report == {"manifests": 1, "blobs": 2, "bad": 1, "orphan_chunks": 1}
    assert s.blob_info(ib.digest) is None and read_all(s, s.blob_info(ig.digest)) == good
    assert s.size() == len(good) + len(body)
    assert s.verify()["bad"] == 0
    s.close()


def test_history_command_reads_a_store_in_use(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    s = Store(tmp_path / "s")
    s.put_tag("library/postgres", "12.2", "t", "sha256:" + "1" * 64, 1, now=1.0)
    s.put_tag("library/postgres", "12.2", "t", "sha256:" + "2" * 64, 1, now=2.0)
    hubcache = Path(sys.executable).parent / "hubcache"
    out = subprocess.run([hubcache, "history", "postgres:12.2", "--store", tmp_path / "s"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "docker.io/library/postgres:12.2" in lines[0]
    assert lines[0].split()[2] == "sha256:" + "1" * 64 and lines[1].split()[2] == "sha256:" + "2" * 64
    busy = subprocess.run([hubcache, "verify", "--store", tmp_path / "s"], capture_output=True, text=True)
    assert busy.returncode == 3 and "in use by pid" in busy.stderr  # EXIT_STORE_IN_USE, as for hubcache run (README)
    s.close()


def test_group_commit_joins_concurrent_writes_and_isolates_a_failing_one(tmp_path):
    import threading

    from hubcache.store.txn import Transactions

    env = lmdb.open(str(tmp_path), max_dbs=1)
    txns = Transactions(env, tmp_path, readonly=False)
    table = txns.open_db(b"t")
    results, errors = {}, {}

    def put(i):
        def op(txn):
            if i == 3:
                raise ValueError("this one is bad")
            txn.put(b"k%d" % i, b"v", db=table)
            return i

        try:
            results[i] = txns.group(op, 1 << 20)
        except ValueError as e:
            errors[i] = e

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2, 4, 5, 6, 7] and list(errors) == [3]
    assert all(txns.read(lambda txn, i=i: txn.get(b"k%d" % i, db=table)) == b"v" for i in results)
    txns.close()
    env.close()


def test_concurrent_writes_share_the_write_budget(tmp_path):
    MiB = 1 << 20
    s = Store(tmp_path / "s")
    assert s.batch_limit() == 4 * MiB
    writers = [s.begin_blob(f"sha256:{i:064x}", None, "P:r") for i in range(16)]
    for w in writers:
        w.register()
    assert s.batch_limit() == MiB // 2  # each holds two batches: 16 x 2 x 512 KiB = WRITE_BUDGET
    for w in writers:
        w.abort()
    assert s.batch_limit() == 4 * MiB and s.recover() == 0
    s.close()


def mapped_kib(path) -> int:
    """How much of `path` this process has mapped in memory (its share of RSS), from smaps."""
    total, inside = 0, False
    target = str(path.resolve())
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss", "Size")):
                inside = line.rstrip("\n").endswith(target)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's smaps")
def test_reading_blobs_leaves_none_of_the_store_file_in_rss(store):
    """Serving a blob must not grow the proxy's RSS by what it read. On this kernel a read
    through LMDB's map maps a whole 2 MiB page-cache folio per touch: reading a 32 MiB blob
    that way held up to 8 MiB (RELEASE_EVERY) plus a folio. Blob bytes go by pread, and the
    folio of the page header LMDB touches is given back at once; what stays mapped is the
    folio or two holding the B-tree pages."""
    data = os.urandom(32 * 1024 * 1024 + 4321)
    info = write_blob(store, data)
    store.release_pages()
    data_mdb = store.path / "data.mdb"
    base = mapped_kib(data_mdb)
    buf = memoryview(bytearray(CHUNK_SIZE))
    sent = bytearray()
    most = 0
    for piece in store.send_blob(info, buf):
        sent += piece
        most = max(most, mapped_kib(data_mdb) - base)
    assert bytes(sent) == data
    assert read_all(store, info, 5, len(data) - 5) == data[5:-5]
    most = max(most, mapped_kib(data_mdb) - base)
    assert most <= 4096, f"reading a 32 MiB blob mapped {most} KiB of the store file into memory"


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's smaps")
def test_dropping_a_failed_download_does_not_put_it_in_rss(store, monkeypatch):
    """Deleting a blob reads each chunk's page header through LMDB's map; on this kernel each
    such touch maps a whole page-cache folio, so a failed 1 GiB download, dropped, showed up to
    1 GiB of RSS. The pages are given back as the deletion goes."""
    from hubcache.store import pages

    data = os.urandom(64 * 1024 * 1024)
    w = store.begin_blob(digest(data), len(data) + 1, "library/x")  # one byte short: it will fail
    w.register()
    for i in range(0, len(data), 1 << 20):
        w.write(data[i : i + (1 << 20)])
    w.flush()
    store.release_pages()
    data_mdb = store.path / "data.mdb"
    seen: list[int] = []
    release = pages.release

    def measured(ranges):
        seen.append(mapped_kib(data_mdb))
        release(ranges)

    monkeypatch.setattr(pages, "release", measured)
    with pytest.raises(DigestMismatch):
        w.commit()
    assert store.blob_info(digest(data)) is None and seen
    assert max(seen) <= 12 * 1024, f"dropping 64 MiB held up to {max(seen)} KiB of the store file in memory"
    assert mapped_kib(data_mdb) <= 4096


def test_blobs_read_right_without_proc_maps_to_find_the_file_offset(store, monkeypatch):
    """Where /proc/self/maps cannot say where data.mdb is mapped, blob bytes are copied through
    LMDB's map instead of read by offset: the same bytes, never an error or junk."""
    from hubcache.store import pages

    data = os.urandom(2 * CHUNK_SIZE + 777)
    monkeypatch.setattr(pages, "mappings_of", lambda path: [])  # before the store first asks
    info = write_blob(store, data)
    assert read_all(store, info, 3, len(data) - 2) == data[3:-2]
    buf = memoryview(bytearray(CHUNK_SIZE))
    assert b"".join(bytes(p) for p in store.send_blob(info, buf, 1)) == data[1:]


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's smaps")
def test_reads_after_the_map_grew_still_leave_the_store_file_out_of_rss(tmp_path):
    """A resize moves LMDB's map: where the store last saw data.mdb mapped is then wrong, and
    reads must find it anew rather than copy through the map (which puts the blob in RSS)."""
    s = Store(tmp_path / "s", map_size=1 << 20)
    try:
        small = write_blob(s, os.urandom(CHUNK_SIZE))
        assert read_all(s, small)  # the store now knows where the map is
        before = s.map_size()
        data = os.urandom(32 * 1024 * 1024)
        info = write_blob(s, data)
        assert s.map_size() > before
        s.release_pages()
        data_mdb = s.path / "data.mdb"
        most, got = 0, bytearray()
        for piece in s.send_blob(info, memoryview(bytearray(CHUNK_SIZE))):
            got += piece
            most = max(most, mapped_kib(data_mdb))
        assert bytes(got) == data
        assert most <= 4096, f"after the map grew, reading 32 MiB mapped {most} KiB of the store file"
    finally:
        s.close()
