"""The parent registry of the fleet tests (harness.parent, issue 13) behaves as distribution 2.8 in
proxy mode does in front of Docker Hub: it pulls through on a miss as its own account (counted in
the fake Hub's book) and serves what it has stored afterwards without asking Hub again. Served over
TLS it is `mirror.internal` with a CA of its own, which a client must be given (the fake Hub's CA
does not do); on S3 it keeps its blobs in a moto bucket."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from harness.clients import dir_files, skopeo_copy
from harness.parent import PARENT_HOST, PARENT_IP, Parent

pytestmark = pytest.mark.e2e
_seeds = itertools.count(99000)
ACCOUNT = ("parentbot", "parent-pw")


def _pull(ref: str, dest: Path, cert_dir: Path, *extra: str):
    return skopeo_copy(ref, dest, proxy=None, cert_dir=cert_dir, extra_args=list(extra))


def _image(upstream, name: str, tmp: Path):
    """Push NAME:1 (two layers) to the fake Hub; its direct pull (the bytes to compare with)."""
    img = upstream.push_image(name, "1", [(400_000, next(_seeds)), (300_000, next(_seeds))])
    res = _pull(f"docker.io/{name}:1", tmp / f"direct-{name.replace('/', '_')}", upstream.cert_dir)
    assert res.returncode == 0, res.stderr
    return img, tmp / f"direct-{name.replace('/', '_')}"


@pytest.fixture(scope="module")
def tls_parent(upstream, tmp_path_factory):
    """One parent over TLS as https://mirror.internal (port 443) for this file's TLS tests."""
    upstream.add_account(*ACCOUNT)
    with Parent(tmp_path_factory.mktemp("tlsparent"), upstream, ACCOUNT, tls=True) as parent:
        yield parent


def test_mirror_internal_resolves_in_the_namespace_with_no_parent_started(upstream):
    assert f"{PARENT_IP} {PARENT_HOST}\n" in Path("/etc/hosts").read_text()  # the namespace's hosts file
    assert socket.gethostbyname(PARENT_HOST) == PARENT_IP
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((PARENT_HOST, 5002), timeout=5).close()  # a name only: nobody listens


def test_the_parent_pulls_through_as_its_own_account_and_then_serves_from_its_storage(upstream, certs, tmp_path):
    img = upstream.push_image("library/viaparent", "1", [(500_000, next(_seeds))])
    upstream.add_account(*ACCOUNT)
    direct = skopeo_copy("docker.io/library/viaparent:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    with Parent(tmp_path / "parent", upstream, ACCOUNT) as parent:
        assert parent.url == f"http://127.0.0.1:{parent.port}"
        ref = f"{parent.name}/library/viaparent:1"
        before = upstream.pulls_by_account().get("parentbot", 0)
        first = skopeo_copy(ref, tmp_path / "first", proxy=None, cert_dir=certs, extra_args=["--src-tls-verify=false"])
        assert first.returncode == 0, first.stderr
        assert dir_files(tmp_path / "first") == dir_files(tmp_path / "direct")
        assert upstream.pulls_by_account().get("parentbot", 0) == before + 1  # its own account's pull
        parent.wait_stored(img.layer_digests)  # stored in its storage (in the background)
        assert parent.blob_file(img.layer_digests[0]).is_file()
        mark = upstream.mark()
        by_digest = skopeo_copy(f"{parent.name}/library/viaparent@{img.manifest_digest}", tmp_path / "again",
                                proxy=None, cert_dir=certs, extra_args=["--src-tls-verify=false"])
        assert by_digest.returncode == 0, by_digest.stderr
        assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
        assert not [r for r in upstream.requests_since(mark) if "/blobs/" in r.path]  # blobs from its storage


def test_over_tls_it_is_mirror_internal_trusted_with_its_own_ca_and_refused_with_the_hubs(upstream, tls_parent, tmp_path):
    parent = tls_parent
    assert (parent.url, socket.gethostbyname(PARENT_HOST)) == (f"https://{PARENT_HOST}", PARENT_IP)
    img, direct = _image(upstream, "library/tlsparent", tmp_path)
    ref = f"{PARENT_HOST}/library/tlsparent:1"

    mark = parent.mark()
    refused = _pull(ref, tmp_path / "hubca", upstream.cert_dir)  # trusts the fake Hub's CA only
    assert refused.returncode != 0
    assert "certificate signed by unknown authority" in refused.stderr, refused.stderr
    assert parent.requests_since(mark) == []  # no request got through the handshake
    assert not (tmp_path / "hubca" / "manifest.json").exists()

    before = upstream.pulls_by_account().get(ACCOUNT[0], 0)
    ok = _pull(ref, tmp_path / "viaparent", parent.cert_dir)
    assert ok.returncode == 0, ok.stderr
    assert dir_files(tmp_path / "viaparent") == dir_files(direct)
    assert upstream.pulls_by_account().get(ACCOUNT[0], 0) == before + 1
    asked = parent.requests_since(mark)
    assert {r.host for r in asked} == {PARENT_HOST}
    blob_gets = sorted(r.path for r in asked if r.method == "GET" and "/blobs/" in r.path and r.status == 200)
    assert blob_gets == sorted(f"/v2/library/tlsparent/blobs/{d}" for d in [img.config_digest, *img.layer_digests])
    parent.wait_stored(img.layer_digests)
    for d in img.layer_digests:
        assert parent.stored_blob(d) == (direct / d.split(":", 1)[1]).read_bytes()


def test_on_another_port_it_stops_and_starts_again_on_the_same_storage(upstream, tmp_path):
    img, direct = _image(upstream, "library/restarted", tmp_path)
    upstream.add_account(*ACCOUNT)
    with Parent(tmp_path / "parent", upstream, ACCOUNT, tls=True, port=5000) as parent:
        assert (parent.url, parent.name) == (f"https://{PARENT_HOST}:5000", f"{PARENT_HOST}:5000")
        by_digest = f"{parent.name}/library/restarted@{img.manifest_digest}"
        first = _pull(f"{parent.name}/library/restarted:1", tmp_path / "first", parent.cert_dir)
        assert first.returncode == 0, first.stderr
        parent.wait_stored([img.config_digest, *img.layer_digests])  # stored in the background
        parent.stop()
        down = _pull(by_digest, tmp_path / "down", parent.cert_dir, "--retry-times=0")
        assert down.returncode != 0 and "connection refused" in down.stderr, down.stderr
        mark, hub_mark = parent.mark(), upstream.mark()
        parent.start()
        again = _pull(by_digest, tmp_path / "again", parent.cert_dir)
        assert again.returncode == 0, again.stderr
        assert dir_files(tmp_path / "again") == dir_files(direct)
        assert [r for r in upstream.requests_since(hub_mark) if "/blobs/" in r.path] == []  # from its storage
        assert len([r for r in parent.requests_since(mark) if "/blobs/" in r.path]) == 1 + len(img.layer_digests)


@pytest.mark.parametrize("redirect", [False, True], ids=["streamed", "redirected"])
def test_on_s3_it_keeps_the_blobs_in_the_bucket(upstream, tmp_path, redirect):
    pytest.importorskip("moto", reason="storage='s3' needs moto[server] (the test extra)")
    name = f"library/ons3{int(redirect)}"
    img, direct = _image(upstream, name, tmp_path)
    upstream.add_account(*ACCOUNT)
    with Parent(tmp_path / "parent", upstream, ACCOUNT, tls=True, port=5001, storage="s3", s3_redirect=redirect) as parent:
        first = _pull(f"{parent.name}/{name}:1", tmp_path / "first", parent.cert_dir)
        assert first.returncode == 0, first.stderr
        assert dir_files(tmp_path / "first") == dir_files(direct)
        parent.wait_stored([img.config_digest, *img.layer_digests])
        keys = parent.bucket_keys()
        for d in [img.config_digest, *img.layer_digests]:
            assert keys.get(parent.blob_key(d)) == (direct / d.split(":", 1)[1]).stat().st_size
            assert parent.stored_blob(d) == (direct / d.split(":", 1)[1]).read_bytes()
        assert not (tmp_path / "parent" / "storage").exists()  # nothing on disk
        mark, hub_mark = parent.mark(), upstream.mark()
        again = _pull(f"{parent.name}/{name}@{img.manifest_digest}", tmp_path / "again", parent.cert_dir)
        assert again.returncode == 0, again.stderr
        assert dir_files(tmp_path / "again") == dir_files(direct)
        assert [r for r in upstream.requests_since(hub_mark) if "/blobs/" in r.path] == []
        statuses = {r.status for r in parent.requests_since(mark) if r.method == "GET" and "/blobs/" in r.path}
        # redirect disabled: the parent streams the blob; enabled: 307 to a presigned URL at the store
        assert statuses == ({307} if redirect else {200})
