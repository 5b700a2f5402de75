"""Faults on the way in, each for a blob (through the CDN) and for a manifest (in the registry's
storage): the client gets an error, never bad bytes as a success; nothing is stored; the next pull
works and has to fetch the object again."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from harness.clients import skopeo_copy

pytestmark = pytest.mark.e2e
MiB = 1 << 20
CDN, REG = "production.cloudflare.docker.com", "registry-1.docker.io"
_seeds = itertools.count(12000)

BLOB_FAULTS = {
    "connection cut mid-body": dict(truncate_at=1 * MiB),
    "stalled upstream": dict(stall_at=1 * MiB, stall_seconds=20),
    "Content-Length longer than the body": dict(length_delta=+1000),
    "Content-Length shorter than the blob": dict(length_delta=-1000),
}


def _one_warning_no_traceback(log: str, what: str) -> None:
    """Upstream trouble is told in hubcache's terms (an error or rejected line naming the object),
    never as a traceback."""
    assert "Traceback" not in log, log
    told = [line for line in log.splitlines() if what in line and ("error" in line or "rejected" in line)]
    assert told, log


def pulls_ok(ref, dest, hub, certs) -> None:
    res = skopeo_copy(ref, dest, proxy=hub.url, cert_dir=certs)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("fault", BLOB_FAULTS, ids=list(BLOB_FAULTS))
def test_blob_fault(fault, upstream, start_hubcache, certs, tmp_path):
    name = "library/blobfault" + str(list(BLOB_FAULTS).index(fault))
    img = upstream.push_image(name, "1", [(3 * MiB, next(_seeds))])
    layer = img.layer_digests[0]
    hub = start_hubcache("tcp_timeout=3")  # the idle timeout that ends a stall
    with upstream.cdn_fault(layer, **BLOB_FAULTS[fault]):
        res = skopeo_copy(f"docker.io/{name}:1", tmp_path / "bad", proxy=hub.url, cert_dir=certs, timeout=60)
    assert res.returncode != 0
    got = tmp_path / "bad" / layer.split(":")[1]
    assert not got.exists() or hashlib.sha256(got.read_bytes()).hexdigest() != layer.split(":")[1] or res.returncode
    mark = upstream.mark()
    pulls_ok(f"docker.io/{name}:1", tmp_path / "good", hub, certs)
    assert hashlib.sha256((tmp_path / "good" / layer.split(":")[1]).read_bytes()).hexdigest() == layer.split(":")[1]
    cdn_gets = [r for r in upstream.requests_since(mark) if r.host == CDN and layer.split(":")[1] in r.path]
    assert len(cdn_gets) == 1  # the faulty transfer left nothing in the store
    _one_warning_no_traceback(hub.log(), layer)


# distribution parses a manifest before serving it (an unparsable one is its own 500), so the
# faults are manifests that still parse; an oversized manifest is refused in tests/unit/test_addon.py
MANIFEST_FAULTS = {
    "bytes changed": lambda good: good.replace(b"{", b"{ ", 1),
    "a field's bytes changed": lambda good: good.replace(b'"size":', b'"size": ', 1),
}


@pytest.mark.parametrize("fault", MANIFEST_FAULTS, ids=list(MANIFEST_FAULTS))
def test_manifest_fault(fault, upstream, start_hubcache, certs, tmp_path):
    name = "library/manifestfault" + str(list(MANIFEST_FAULTS).index(fault))
    img = upstream.push_image(name, "1", [(100_000, next(_seeds))])
    path = upstream.blob_file(img.manifest_digest)
    good = path.read_bytes()
    hub = start_hubcache()
    path.write_bytes(MANIFEST_FAULTS[fault](good))
    try:
        by_tag = skopeo_copy(f"docker.io/{name}:1", tmp_path / "t", proxy=hub.url, cert_dir=certs)
        by_digest = skopeo_copy(f"docker.io/{name}@{img.manifest_digest}", tmp_path / "d", proxy=hub.url, cert_dir=certs)
    finally:
        path.write_bytes(good)
    assert by_tag.returncode != 0 and by_digest.returncode != 0
    assert hub.log().count("rejected") == 2, hub.log()
    mark = upstream.mark()
    pulls_ok(f"docker.io/{name}:1", tmp_path / "good", hub, certs)
    assert (tmp_path / "good" / "manifest.json").read_bytes() == img.manifest_bytes
    gets = [r for r in upstream.requests_since(mark) if r.host == REG and r.method == "GET" and "/manifests/" in r.path]
    assert len(gets) == 1


@pytest.mark.parametrize("fault", BLOB_FAULTS, ids=list(BLOB_FAULTS))
def test_manifest_transfer_fault(fault, upstream, start_hubcache, certs, tmp_path):
    """The same transfer faults on manifests, injected by the registry host's front."""
    name = "library/manifesttransfer" + str(list(BLOB_FAULTS).index(fault))
    img = upstream.push_image(name, "1", [(100_000, next(_seeds))])
    # the same faults scaled to a manifest of a few hundred bytes
    scaled = {"truncate_at": 200, "stall_at": 200, "length_delta": 50}
    cut = {k: (scaled[k] * (1 if v > 0 else -1) if k in scaled else v) for k, v in BLOB_FAULTS[fault].items()}
    hub = start_hubcache("tcp_timeout=3")
    for ref, pulled in (("1", f"docker.io/{name}:1"), (img.manifest_digest, f"docker.io/{name}@{img.manifest_digest}")):
        with upstream.manifest_fault(ref, **cut):
            res = skopeo_copy(pulled, tmp_path / f"bad-{ref[:8]}", proxy=hub.url, cert_dir=certs, timeout=60)
        assert res.returncode != 0, pulled
    mark = upstream.mark()
    pulls_ok(f"docker.io/{name}:1", tmp_path / "good", hub, certs)
    assert (tmp_path / "good" / "manifest.json").read_bytes() == img.manifest_bytes
    gets = [r for r in upstream.requests_since(mark) if r.host == REG and r.method == "GET" and "/manifests/" in r.path]
    assert len(gets) == 1  # nothing of the faulty transfers was stored
    _one_warning_no_traceback(hub.log(), name)
