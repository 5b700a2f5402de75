"""Content belongs to repositories: a stored manifest links what it references to its
repository, so the store answers under a repository only what the registry has there."""

import json

import lmdb

from hubcache.decide.taglist import page
from hubcache.model import sha256_digest
from hubcache.store import Store
from hubcache.store.catalog import references

CONFIG, L1, L2 = ("sha256:" + c * 64 for c in "cde")


def image(*layers: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "config": {"digest": CONFIG, "size": 1},
                       "layers": [{"digest": d, "size": 1} for d in layers]}).encode()


def test_a_manifest_references_its_config_and_layers_and_an_index_its_manifests():
    assert references(image(L1, L2)) == [CONFIG, L1, L2]
    index = json.dumps({"manifests": [{"digest": L1}, {"digest": L2, "platform": {}}]}).encode()
    assert references(index) == [L1, L2]
    assert references(b"not json") == [] and references(b"[1]") == [] and references(b'{"layers": [3]}') == []


def test_a_stored_manifest_links_what_it_references_to_its_repository_only(tmp_path):
    s = Store(tmp_path / "s")
    body = image(L1)
    s.put_manifest(sha256_digest(body), "application/vnd.oci.image.manifest.v1+json", body, "P:library/alpine")
    assert s.repositories(L1) == ["P:library/alpine"] and s.repositories(CONFIG) == ["P:library/alpine"]
    assert s.repositories(L2) == []
    s.close()


def test_a_store_from_before_links_its_manifests_references_once_when_opened(tmp_path):
    body = image(L1, L2)
    m = sha256_digest(body)
    s = Store(tmp_path / "s")
    s.put_manifest(m, "application/vnd.oci.image.manifest.v1+json", body, "C:acme/app")
    s.close()
    # as an older hubcache left it: the manifest's own entry only, and no links mark
    with lmdb.open(str(tmp_path / "s"), max_dbs=16) as env, env.begin(write=True) as txn:
        repos, meta = env.open_db(b"repos", txn=txn, dupsort=True), env.open_db(b"meta", txn=txn)
        for d in (CONFIG, L1, L2):
            txn.delete(d.encode(), db=repos)
        txn.delete(b"links", db=meta)
    s = Store(tmp_path / "s")
    assert s.repositories(L2) == ["C:acme/app"] and s.repositories(m) == ["C:acme/app"]
    s.close()


def test_tags_drop_and_delete_from_a_repository(tmp_path):
    s = Store(tmp_path / "s")
    body = image(L1)
    m = sha256_digest(body)
    s.put_manifest(m, "t", body, "P:x/app")
    for tag in ("1", "2", "latest"):
        s.put_tag("x/app", tag, "t", m, len(body), 100.0)
    s.put_tag("x/apps", "9", "t", m, len(body), 100.0)  # another repository sharing the prefix
    assert s.tags("x/app") == ["1", "2", "latest"]
    s.drop_tag("x/app", "2")
    assert s.tags("x/app") == ["1", "latest"] and s.tag_records("x/app", "2") == {}
    s.remove_from_repository(m, "x/app", ["P:x/app", "C:x/app"])
    assert s.tags("x/app") == [] and s.repositories(m) == []
    assert s.tags("x/apps") == ["9"]  # untouched
    assert [d for _, _, _, d in s.tag_history("x/app", "2")] == [m, ""]  # what it was, then its deletion
    s.close()


def test_a_tag_list_page_follows_the_registrys_n_and_last():
    tags = ["b", "a", "c", "d"]
    assert page(tags, "x/app", "") == (["a", "b", "c", "d"], "")
    assert page(tags, "x/app", "n=2") == (["a", "b"], '</v2/x/app/tags/list?n=2&last=b>; rel="next"')
    assert page(tags, "x/app", "n=2&last=b") == (["c", "d"], "")
    assert page(tags, "x/app", "last=c") == (["d"], "")
    assert page(tags, "x/app", "n=0") == ([], "")
    assert page(tags, "x/app", "n=many") == (["a", "b", "c", "d"], "")


def test_a_deleted_tag_is_in_its_history_and_a_replay_after_it_finds_nothing(tmp_path):
    clock = iter([100.0, 200.0, 300.0]).__next__
    s = Store(tmp_path / "s", clock=clock)
    body = image(L1)
    m = sha256_digest(body)
    s.put_tag("x/app", "1", "t", m, len(body), 50.0)
    s.drop_tag("x/app", "1")  # at 100
    assert [d for _, _, _, d in s.tag_history("x/app", "1")] == [m, ""]
    assert s.tag_at("x/app", "1", 60.0)["t"].digest == m
    assert s.tag_at("x/app", "1", 150.0) == {}
    s.put_tag("x/app", "1", "t", m, len(body), 250.0)  # pushed again
    assert s.tag_at("x/app", "1", 260.0)["t"].digest == m
    s.close()


def test_a_pushed_tag_replaces_every_media_type_the_tag_had(tmp_path):
    s = Store(tmp_path / "s")
    oci, v2s2 = "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"
    s.put_tag("x/app", "latest", oci, L1, 10, 100.0)
    s.put_tag("x/app", "latest", v2s2, L2, 10, 200.0, only=True)
    assert {m: r.digest for m, r in s.tag_records("x/app", "latest").items()} == {v2s2: L2}
    s.close()
