"""skopeo pulls through a running `hubcache run` from the real distribution registry set up like
Docker Hub (token auth at auth.docker.io, blob 307s to the CDN host). Requests are counted at the
upstream (registry, token server and CDN logs), never in the proxy."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from harness.clients import dir_files, proxied_request, pull_ok, skopeo_copy

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(1000)


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]






def hosts_count(reqs, host: str, method: str | None = None, contains: str = "") -> int:
    return sum(1 for r in reqs if r.host == host and (method is None or r.method == method) and contains in r.path)


REG, AUTH, CDN = "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com"


def test_cold_pull_is_identical_and_fetches_each_object_once(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/coldpull", "1", layers(1 * MiB, 3 * MiB, 300_000))
    hub = start_hubcache()
    direct = pull_ok("docker.io/library/coldpull:1", tmp_path / "direct", None, certs)
    mark = upstream.mark()
    through = pull_ok("docker.io/library/coldpull:1", tmp_path / "through", hub, certs)
    assert dir_files(through) == dir_files(direct)
    reqs = upstream.requests_since(mark)
    blobs = [img.config_digest, *img.layer_digests]
    assert hosts_count(reqs, REG, "GET", "/manifests/") == 1
    assert hosts_count(reqs, REG, "HEAD") == 0
    for d in blobs:
        assert hosts_count(reqs, REG, "GET", f"/blobs/{d}") == 1
        assert hosts_count(reqs, CDN, "GET", d.split(":")[1]) == 1
    assert hosts_count(reqs, REG, "GET") == 1 + len(blobs)  # no /v2/ ping: hubcache answers it
    assert hosts_count(reqs, AUTH) == 1  # hubcache's own token for the repository


@pytest.mark.parametrize("login", [None, "alice:alice-pw"], ids=["pool", "own login"])
def test_blobs_redirected_to_a_storage_host_no_option_names_are_fetched_by_hubcache(
        upstream, start_hubcache, certs, tmp_path, login):
    """Hub has moved its blob redirects from Cloudflare to R2, CloudFront and S3: wherever they
    point, hubcache follows them itself; neither the client nor any hubcache option needs the host."""
    from harness.hubenv import S3_HOST

    img = upstream.push_image(f"library/s3redirect{bool(login):d}", "1", layers(2 * MiB, 300_000))
    ref = f"docker.io/library/s3redirect{bool(login):d}:1"
    hub = start_hubcache()
    assert S3_HOST not in hub.log()
    with upstream.redirect_blobs_to(S3_HOST):
        direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs, creds=login)
        assert direct.returncode == 0, direct.stderr
        mark = upstream.mark()
        cold = skopeo_copy(ref, tmp_path / "cold", proxy=hub.url, cert_dir=certs, creds=login)
        assert cold.returncode == 0, cold.stderr
        assert dir_files(tmp_path / "cold") == dir_files(tmp_path / "direct")
        reqs = upstream.requests_since(mark)
        for d in (img.config_digest, *img.layer_digests):
            assert hosts_count(reqs, S3_HOST, "GET", d.split(":")[1]) == 1, reqs  # hubcache's own download
        assert hosts_count(reqs, CDN) == 0
        mark = upstream.mark()
        warm = skopeo_copy(ref, tmp_path / "warm", proxy=hub.url, cert_dir=certs, creds=login)
        assert warm.returncode == 0, warm.stderr
        assert dir_files(tmp_path / "warm") == dir_files(tmp_path / "direct")
        reqs = upstream.requests_since(mark)
        if login:  # private to the login until upstream confirms it: free HEADs and the login's token
            assert all(r.method == "HEAD" or r.host == AUTH for r in reqs), reqs
        else:
            assert reqs == []


def test_warm_pull_makes_no_upstream_request(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/warmpull", "2.0", layers(2 * MiB, 64 * 1024))
    hub = start_hubcache()
    cold = pull_ok("docker.io/library/warmpull:2.0", tmp_path / "cold", hub, certs)
    mark = upstream.mark()
    warm = pull_ok("docker.io/library/warmpull:2.0", tmp_path / "warm", hub, certs)
    assert upstream.requests_since(mark) == []
    assert dir_files(warm) == dir_files(cold)
    assert "hit" in hub.log()


def test_warm_pull_survives_a_proxy_restart(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/restart", "1", layers(1 * MiB))
    hub = start_hubcache()
    cold = pull_ok("docker.io/library/restart:1", tmp_path / "cold", hub, certs)
    hub.stop()
    hub.start()
    mark = upstream.mark()
    warm = pull_ok("docker.io/library/restart:1", tmp_path / "warm", hub, certs)
    assert upstream.requests_since(mark) == []
    assert dir_files(warm) == dir_files(cold)


def test_pull_by_digest_after_the_tag_moved_gets_the_old_content(upstream, start_hubcache, certs, tmp_path):
    v1 = upstream.push_image("library/moving", "stable", layers(1 * MiB))
    hub = start_hubcache()
    first = pull_ok("docker.io/library/moving:stable", tmp_path / "v1", hub, certs)
    upstream.push_image("library/moving", "stable", layers(1 * MiB))
    mark = upstream.mark()
    by_digest = pull_ok(f"docker.io/library/moving@{v1.manifest_digest}", tmp_path / "v1-digest", hub, certs)
    assert upstream.requests_since(mark) == []
    assert dir_files(by_digest) == dir_files(first)
    # within the freshness window the tag is still served as it was, without asking upstream
    again = pull_ok("docker.io/library/moving:stable", tmp_path / "v1-again", hub, certs)
    assert upstream.requests_since(mark) == []
    assert dir_files(again) == dir_files(first)


def test_stale_tag_is_revalidated_with_head_and_refetched_only_when_changed(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/revalidate", "1", layers(1 * MiB))
    hub = start_hubcache("hubcache_tag_ttl=0")
    first = pull_ok("docker.io/library/revalidate:1", tmp_path / "a", hub, certs)

    mark = upstream.mark()
    same = pull_ok("docker.io/library/revalidate:1", tmp_path / "b", hub, certs)
    reqs = upstream.requests_since(mark)
    assert dir_files(same) == dir_files(first)
    assert hosts_count(reqs, REG, "HEAD", "/manifests/1") == 1
    assert hosts_count(reqs, REG, "GET") == 0 and hosts_count(reqs, CDN) == 0
    assert "revalidated" in hub.log()

    v2 = upstream.push_image("library/revalidate", "1", layers(1 * MiB))
    direct = pull_ok("docker.io/library/revalidate:1", tmp_path / "direct", None, certs)
    mark = upstream.mark()
    changed = pull_ok("docker.io/library/revalidate:1", tmp_path / "c", hub, certs)
    reqs = upstream.requests_since(mark)
    assert dir_files(changed) == dir_files(direct)
    assert hosts_count(reqs, REG, "HEAD", "/manifests/1") == 1
    assert hosts_count(reqs, REG, "GET", "/manifests/1") == 1
    assert hosts_count(reqs, REG, "GET", f"/blobs/{v2.layer_digests[0]}") == 1


def test_tampered_upstream_blob_is_refused_and_not_stored(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/tamper", "1", layers(2 * MiB))
    layer = img.layer_digests[0]
    path = upstream.blob_file(layer)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    hub = start_hubcache()
    path.write_bytes(bytes(bad))
    try:
        res = skopeo_copy("docker.io/library/tamper:1", tmp_path / "bad", proxy=hub.url, cert_dir=certs)
    finally:
        path.write_bytes(good)
    assert res.returncode != 0
    assert "rejected" in hub.log()
    mark = upstream.mark()
    ok = pull_ok("docker.io/library/tamper:1", tmp_path / "good", hub, certs)
    assert hashlib.sha256((ok / layer.split(":")[1]).read_bytes()).hexdigest() == layer.split(":")[1]
    # the refused bytes were not kept: the layer had to come from the CDN again
    assert hosts_count(upstream.requests_since(mark), CDN, "GET", layer.split(":")[1]) == 1


def test_one_gib_layer_cold_and_warm(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/big", "1", layers(1 << 30))
    layer = img.layer_digests[0].split(":")[1]
    hub = start_hubcache()
    for run in ("cold", "warm"):
        mark = upstream.mark()
        dest = pull_ok("docker.io/library/big:1", tmp_path / run, hub, certs)
        h = hashlib.sha256()
        with open(dest / layer, "rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        assert h.hexdigest() == layer
        (dest / layer).unlink()
        if run == "warm":
            assert upstream.requests_since(mark) == []


def test_truncated_upstream_blob_is_an_error_and_not_stored(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/truncated", "1", layers(3 * MiB))
    layer = img.layer_digests[0]
    hub = start_hubcache()
    with upstream.cdn_truncates(layer, after=1 * MiB):
        res = skopeo_copy("docker.io/library/truncated:1", tmp_path / "bad", proxy=hub.url, cert_dir=certs)
    assert res.returncode != 0
    mark = upstream.mark()
    ok = pull_ok("docker.io/library/truncated:1", tmp_path / "good", hub, certs)
    assert hashlib.sha256((ok / layer.split(":")[1]).read_bytes()).hexdigest() == layer.split(":")[1]
    assert hosts_count(upstream.requests_since(mark), CDN, "GET", layer.split(":")[1]) == 1


def test_hits_by_digest_carry_registry_headers_for_get_and_head(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/headers", "1", layers(700_000))
    hub = start_hubcache()
    pull_ok("docker.io/library/headers:1", tmp_path / "cold", hub, certs)
    mark = upstream.mark()
    layer, size = img.layer_digests[0], img.layer_sizes[0]
    for method in ("HEAD", "GET"):
        status, h, body = proxied_request(hub.port, hub.ca_cert, method, REG, f"/v2/library/headers/blobs/{layer}")
        assert (status, h["docker-content-digest"], int(h["content-length"])) == (200, layer, size)
        assert body == (b"" if method == "HEAD" else (tmp_path / "cold" / layer.split(":")[1]).read_bytes())
        status, h, body = proxied_request(hub.port, hub.ca_cert, method, REG, f"/v2/library/headers/manifests/{img.manifest_digest}")
        assert (status, h["content-type"], h["docker-content-digest"]) == (200, img.media_type, img.manifest_digest)
        assert int(h["content-length"]) == len(img.manifest_bytes)
        assert body == (b"" if method == "HEAD" else img.manifest_bytes)
    status, h, body = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/library/headers/blobs/{layer}",
                                      [("Range", "bytes=100-199")])
    assert (status, body) == (206, (tmp_path / "cold" / layer.split(":")[1]).read_bytes()[100:200])
    assert upstream.requests_since(mark) == []


def test_size_cap_evicts_least_recently_used(upstream, start_hubcache, certs, tmp_path):
    a = upstream.push_image("library/capa", "1", layers(2 * MiB))
    b = upstream.push_image("library/capb", "1", layers(2 * MiB))
    hub = start_hubcache("hubcache_max_size=3m")
    pull_ok("docker.io/library/capa:1", tmp_path / "a", hub, certs)
    pull_ok("docker.io/library/capb:1", tmp_path / "b", hub, certs)
    mark = upstream.mark()
    pull_ok("docker.io/library/capb:1", tmp_path / "b2", hub, certs)  # the newer image is still whole
    assert upstream.requests_since(mark) == []
    hub.stop()
    from hubcache.store import Store

    store = Store(hub.store)
    try:
        assert store.size() <= 3 * MiB
        assert store.blob_info(a.layer_digests[0]) is None
        assert store.blob_info(b.layer_digests[0]) is not None
    finally:
        store.close()


def test_with_json_logs_every_line_of_a_pull_is_an_object_with_the_request_fields(upstream, start_hubcache, certs, tmp_path):
    import json

    img = upstream.push_image("library/jsonlogged", "1", [(300_000, 77)])
    hub = start_hubcache("hubcache_log_format=json")
    pull_ok("docker.io/library/jsonlogged:1", tmp_path / "pulled", hub, certs)
    lines = [line for line in hub.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "event", "message"} <= r.keys() for r in records)
    requests = [r for r in records if r["event"] == "request"]
    assert {r["reference"] for r in requests} >= {"1", *img.layer_digests}
    for r in requests:
        assert r["outcome"] in {"hit", "miss", "revalidated", "stale", "passthrough", "rejected", "refused", "error"}
        assert {"kind", "registry", "repository", "status", "bytes", "duration_ms", "client", "account", "note"} <= r.keys()
        assert r["client"].startswith("127.0.0.1:")
    assert any(r["event"] == "start" and r["store"] for r in records)
    opened = [r for r in records if r["event"] == "store_opened"]
    assert len(opened) == 1 and opened[0]["store"] == str(hub.store) and isinstance(opened[0]["bytes"], int)
    stored = {r["digest"]: r for r in records if r["event"] == "blob_stored"}
    layer = stored[img.layer_digests[0]]
    assert layer["bytes"] == upstream.blob_file(img.layer_digests[0]).stat().st_size
    assert layer["repository"] == "library/jsonlogged"
    hub.stop()
    last = json.loads(hub.log().splitlines()[-1])
    assert last["event"] == "stop" and last["store"] == str(hub.store)
