"""The store's counters (kept across restarts), its format version, and its view by image (ls, evict)."""

import json
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from hubcache.model import OCI_MANIFEST, ClientCounter, ImageCounter, sha256_digest
from hubcache.store import Store, StoreError
from hubcache.store import format as storeformat

HUBCACHE = Path(sys.executable).parent / "hubcache"


def hubcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), *args], capture_output=True, text=True, timeout=60)


def put_blob(store, data: bytes, repo="library/x") -> str:
    d = sha256_digest(data)
    w = store.begin_blob(d, len(data), repo)
    w.write(data)
    w.commit()
    return d


def put_image(store, repo: str, tag: str, layers: list[bytes], now: float = 1000.0) -> tuple[str, list[str]]:
    digests = [put_blob(store, b, repo) for b in layers]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"digest": digests[0], "size": len(layers[0])},
                       "layers": [{"digest": d, "size": len(b)} for d, b in zip(digests[1:], layers[1:], strict=True)]}).encode()
    md = sha256_digest(body)
    store.put_manifest(md, OCI_MANIFEST, body, repo)
    store.put_tag(repo, tag, OCI_MANIFEST, md, len(body), now)
    return md, digests


def test_counters_survive_a_restart_and_add_up(tmp_path):
    s = Store(tmp_path / "s", clock=lambda: 100.0)
    s.count("docker.io/library/postgres:12.2", "sha256:a", "runner1", pull=True, hit=False, nbytes=10, store_bytes=0)
    s.count("docker.io/library/postgres:12.2", "sha256:a", "runner1", pull=False, hit=False, nbytes=90, store_bytes=0)
    s.close()
    s = Store(tmp_path / "s", clock=lambda: 200.0)
    s.count("docker.io/library/postgres:12.2", "sha256:a", "runner2", pull=True, hit=True, nbytes=100, store_bytes=100)
    s.count("docker.io/library/alpine:3", "sha256:b", "runner2", pull=True, hit=True, nbytes=5, store_bytes=5)
    s.close()
    ro = Store(tmp_path / "s", readonly=True)
    try:
        assert ro.image_counters() == [
            ImageCounter("docker.io/library/postgres:12.2", "sha256:a", 2, 200, 100.0, 200.0),
            ImageCounter("docker.io/library/alpine:3", "sha256:b", 1, 5, 200.0, 200.0)]
        assert ro.image_counters(limit=1)[0].reference == "docker.io/library/postgres:12.2"
        assert ro.client_counters() == [ClientCounter("runner2", 2, 105, 200.0), ClientCounter("runner1", 1, 100, 100.0)]
    finally:
        ro.close()
    res = hubcache("stats", "--store", str(tmp_path / "s"), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["total"] == {"pulls": 3, "saved": 2, "upstream": 1, "bytes": 205, "store_bytes": 105}
    assert doc["images"][0]["reference"] == "docker.io/library/postgres:12.2" and doc["images"][0]["saved"] == 1
    text = hubcache("stats", "--store", str(tmp_path / "s"))
    assert "served 3 pulls: 2 from the store" in text.stdout and "docker.io/library/alpine:3" in text.stdout


def test_a_new_store_records_its_format_and_an_old_one_is_migrated(tmp_path):
    s = Store(tmp_path / "new")
    s.close()
    assert storeformat.found(lmdb.open(str(tmp_path / "new"), max_dbs=16)) == (storeformat.FORMAT, storeformat.__version__)
    # a format 1 store: the tables of then, no format record, no counters table
    env = lmdb.open(str(tmp_path / "old"), max_dbs=16)
    meta = env.open_db(b"meta")
    for name in (b"manifests", b"tags", b"history", b"repos", b"atime", b"lru", b"blobs", b"chunks", b"pending"):
        env.open_db(name, dupsort=name == b"repos")
    with env.begin(write=True) as txn:
        txn.put(b"size", b"0", db=meta)
    env.close()
    ro = Store(tmp_path / "old", readonly=True)  # read as it is: no counters yet
    assert ro.image_counters() == []
    ro.close()
    s = Store(tmp_path / "old")
    s.count("docker.io/library/x:1", "sha256:a", "c", pull=True, hit=True, nbytes=1, store_bytes=1)
    s.close()
    with lmdb.open(str(tmp_path / "old"), max_dbs=16) as env:
        assert storeformat.found(env)[0] == storeformat.FORMAT
    s = Store(tmp_path / "old", readonly=True)
    assert [c.pulls for c in s.image_counters()] == [1]
    s.close()


def test_a_store_of_a_newer_format_is_refused_naming_who_reads_it(tmp_path):
    Store(tmp_path / "s").close()
    with lmdb.open(str(tmp_path / "s"), max_dbs=16) as env:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", json.dumps({"format": storeformat.FORMAT + 1, "hubcache": "9.9.0"}).encode(), db=meta)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=rf"format {storeformat.FORMAT + 1}, written by hubcache 9.9.0.*"
                                             r"open it with hubcache 9.9.0 or later"):
            Store(tmp_path / "s", readonly=readonly)
    res = hubcache("stats", "--store", str(tmp_path / "s"))
    assert res.returncode == 4 and "hubcache 9.9.0 or later" in res.stderr and "Traceback" not in res.stderr
    Store(tmp_path / "s2").close()  # the refused store was not touched: still refused, still a store
    with pytest.raises(StoreError):
        Store(tmp_path / "s")


def test_ls_lists_images_with_sizes_and_evict_of_an_image_keeps_what_others_share(tmp_path):
    s = Store(tmp_path / "s")
    shared = b"shared base layer" * 100
    pg, pg_blobs = put_image(s, "library/postgres", "12.2", [b"cfg-pg", shared, b"pg layer" * 50])
    al, al_blobs = put_image(s, "library/alpine", "3", [b"cfg-al", shared])
    images = {(i.repository, i.tag): i for i in s.inventory.images()}
    assert set(images) == {("library/postgres", "12.2"), ("library/alpine", "3")}
    pg_body = s.get_manifest(pg).body
    assert images[("library/postgres", "12.2")].size == len(pg_body) + len(b"cfg-pg") + len(shared) + 400
    assert images[("library/postgres", "12.2")].digest == pg and images[("library/postgres", "12.2")].last_used > 0
    s.close()
    res = hubcache("ls", "--store", str(tmp_path / "s"), "postgres:*")
    assert res.returncode == 0, res.stderr
    assert "docker.io/library/postgres:12.2" in res.stdout and "alpine" not in res.stdout
    assert hubcache("ls", "--store", str(tmp_path / "s"), "nginx*").returncode == 1
    res = hubcache("evict", "--store", str(tmp_path / "s"), "postgres:12.2")
    assert res.returncode == 0, res.stderr
    assert "evicted 3 manifests and blobs" in res.stdout  # its manifest, config and own layer
    s = Store(tmp_path / "s", readonly=True)
    try:
        assert s.get_manifest(pg) is None and s.blob_info(pg_blobs[2]) is None
        assert s.blob_info(shared_digest := pg_blobs[1]) is not None and shared_digest == al_blobs[1]
        assert [(i.repository, i.tag) for i in s.inventory.images()] == [("library/alpine", "3")]
    finally:
        s.close()
    res = hubcache("evict", "--store", str(tmp_path / "s"), "nginx:1")
    assert res.returncode == 2 and "nginx:1 is not in the store" in res.stderr


def test_evict_to_size_and_older_than_go_least_recently_used_first(tmp_path):
    t = [1000.0]
    s = Store(tmp_path / "s", clock=lambda: t[0])
    old = put_blob(s, b"o" * 4000)
    t[0] = 2000.0
    new = put_blob(s, b"n" * 4000)
    s.close()
    res = hubcache("evict", "--store", str(tmp_path / "s"), "--to-size", "5000")
    assert res.returncode == 0 and "evicted 1 manifests and blobs" in res.stdout, res.stdout + res.stderr
    s = Store(tmp_path / "s")
    assert s.blob_info(old) is None and s.blob_info(new) is not None
    s.close()
    assert hubcache("evict", "--store", str(tmp_path / "s"), "--older-than", "1h").stdout.startswith("evicted 1 ")
    res = hubcache("evict", "--store", str(tmp_path / "s"), "--older-than", "soon")
    assert res.returncode == 2 and "30d" in res.stderr
    assert hubcache("evict", "--store", str(tmp_path / "s")).returncode == 2


def test_evict_works_beside_a_store_held_by_a_running_hubcache(tmp_path):
    held = Store(tmp_path / "s")  # as a running proxy holds it
    try:
        d = put_blob(held, b"x" * 3000)
        held.flush_access()
        res = hubcache("evict", "--store", str(tmp_path / "s"), "--to-size", "0")
        assert res.returncode == 0, res.stderr
        assert held.blob_info(d) is None and held.size() == 0
    finally:
        held.close()


def test_read_only_commands_create_no_store(tmp_path):
    for cmd in ("stats", "ls", "evict"):
        res = hubcache(cmd, "--store", str(tmp_path / "none"), *(["--to-size", "1g"] if cmd == "evict" else []))
        assert res.returncode == 4 and "nothing was created" in res.stderr
    assert not (tmp_path / "none").exists()
