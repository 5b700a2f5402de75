"""The fake Docker Hub itself: pushes, direct pulls, and what its request log shows.

These prove the test environment, not hubcache; the proxy's e2e tests build on them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
from urllib.parse import urlsplit

import pytest

from support.clients import dir_blob, skopeo_copy
from support.hubenv import CDN_HOST, REGISTRY_HOST, AUTH_HOST, Req, missing_prerequisites

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_prerequisites() is not None,
                       reason=f"e2e upstream unavailable: {missing_prerequisites()}"),
]

MiB = 1 << 20


def https(up, method: str, url: str, headers: dict | None = None):
    """One request straight to the upstream (this process is in its namespaces)."""
    u = urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(up.ca_cert))
    conn = http.client.HTTPSConnection(u.hostname, 443, context=ctx, timeout=30)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def pull_token(up, repo: str, user_pass: str | None = None, actions: str = "pull") -> dict:
    headers = {}
    if user_pass:
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
    status, _, body = https(
        up, "GET",
        f"https://{AUTH_HOST}/token?service=registry.docker.io&scope=repository:{repo}:{actions}",
        headers,
    )
    return {"status": status, **(json.loads(body) if status == 200 else {})}


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def image(upstream):
    return upstream.push_image("library/envtest", "1", layers=[(3 * MiB, 11), (MiB + 7, 12)])


def test_direct_pull_returns_pushed_bytes(upstream, image, tmp_path):
    out = tmp_path / "pulled"
    res = skopeo_copy("docker.io/library/envtest:1", out, proxy=None, cert_dir=upstream.cert_dir)
    assert res.returncode == 0, res.stderr
    assert (out / "manifest.json").read_bytes() == image.manifest_bytes
    assert dir_blob(out, image.config_digest).read_bytes() == image.config_bytes
    for digest, size in zip(image.layer_digests, image.layer_sizes):
        data = dir_blob(out, digest).read_bytes()
        assert len(data) == size
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        assert data == upstream.blob_file(digest).read_bytes()


def test_pull_request_sequence(upstream, image, tmp_path):
    mark = upstream.mark()
    res = skopeo_copy("docker.io/library/envtest:1", tmp_path / "p", proxy=None,
                      cert_dir=upstream.cert_dir)
    assert res.returncode == 0, res.stderr
    reqs = upstream.requests_since(mark)
    seen = [(r.host, r.method, r.path.split("?")[0], r.status) for r in reqs]

    def index(host, method, path, status, after=-1):
        for i in range(after + 1, len(seen)):
            if seen[i] == (host, method, path, status):
                return i
        raise AssertionError(f"no {method} {host}{path} {status} after #{after} in {seen}")

    challenge = index(REGISTRY_HOST, "GET", "/v2/", 401)
    token = index(AUTH_HOST, "GET", "/token", 200, challenge)
    assert "scope=repository%3Alibrary%2Fenvtest%3Apull" in reqs[token].path
    assert reqs[token].extra["account"] == "anonymous"
    manifest = index(REGISTRY_HOST, "GET", "/v2/library/envtest/manifests/1", 200, token)
    for digest in image.layer_digests:
        redirect = index(REGISTRY_HOST, "GET", f"/v2/library/envtest/blobs/{digest}", 307, manifest)
        cdn_path = "/" + str(upstream.blob_file(digest).relative_to(upstream.storage))
        cdn = index(CDN_HOST, "GET", cdn_path, 200, redirect)
        assert reqs[cdn].bytes == upstream.blob_file(digest).stat().st_size


def test_manifest_head_is_logged_as_head(upstream, image):
    tok = pull_token(upstream, "library/envtest")
    mark = upstream.mark()
    status, headers, body = https(
        upstream, "HEAD", f"https://{REGISTRY_HOST}/v2/library/envtest/manifests/1",
        {"Authorization": f"Bearer {tok['token']}", "Accept": image.media_type},
    )
    assert status == 200 and body == b""
    assert headers["Docker-Content-Digest"] == image.manifest_digest
    assert upstream.requests_since(mark) == [
        Req(REGISTRY_HOST, "HEAD", "/v2/library/envtest/manifests/1", 200)
    ]


def test_v2s2_image_round_trip(upstream, tmp_path):
    info = upstream.push_image("library/envdocker", "v1", layers=[(MiB, 21)], fmt="v2s2")
    assert info.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    res = skopeo_copy("docker.io/library/envdocker:v1", tmp_path / "p", proxy=None,
                      cert_dir=upstream.cert_dir)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p" / "manifest.json").read_bytes() == info.manifest_bytes


def test_token_server_accounts(upstream):
    anon = pull_token(upstream, "library/envtest", actions="pull,push")
    assert anon["status"] == 200 and anon["expires_in"] == 300
    claims = jwt_claims(anon["token"])
    assert claims["sub"] == "anonymous" and claims["aud"] == "registry.docker.io"
    assert claims["access"] == [{"type": "repository", "name": "library/envtest", "actions": ["pull"]}]

    pusher = jwt_claims(pull_token(upstream, "library/envtest", "pusher:pushpass", "pull,push")["token"])
    assert pusher["sub"] == "pusher" and pusher["access"][0]["actions"] == ["pull", "push"]

    assert pull_token(upstream, "library/envtest", "pusher:wrong")["status"] == 401


def test_cdn_serves_ranges_and_head(upstream, image):
    digest = image.layer_digests[0]
    path = "/" + str(upstream.blob_file(digest).relative_to(upstream.storage))
    whole = upstream.blob_file(digest).read_bytes()
    status, headers, body = https(upstream, "GET", f"https://{CDN_HOST}{path}", {"Range": "bytes=10-19"})
    assert status == 206 and body == whole[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    status, headers, body = https(upstream, "HEAD", f"https://{CDN_HOST}{path}")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(whole)
    assert https(upstream, "GET", f"https://{CDN_HOST}/etc/passwd")[0] == 404


def test_tampered_blob_is_served_and_caught_by_client(upstream, tmp_path):
    info = upstream.push_image("library/envtamper", "1", layers=[(MiB, 31)])
    blob = upstream.blob_file(info.layer_digests[0])
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # same size, wrong content
    blob.write_bytes(bytes(data))
    res = skopeo_copy("docker.io/library/envtamper:1", tmp_path / "p", proxy=None,
                      cert_dir=upstream.cert_dir)
    assert res.returncode != 0
    assert "digest" in res.stderr.lower()


def test_multi_platform_index(upstream, image, tmp_path):
    idx = upstream.push_index("library/envmulti", "1", {"amd64": image, "arm64": [(MiB, 41)]})
    assert idx.media_type == "application/vnd.oci.image.index.v1+json"
    out = tmp_path / "all"
    res = skopeo_copy("docker.io/library/envmulti:1", out, proxy=None,
                      cert_dir=upstream.cert_dir, all_platforms=True)
    assert res.returncode == 0, res.stderr
    assert (out / "manifest.json").read_bytes() == idx.manifest_bytes
    arm = idx.manifests["arm64"]
    assert arm.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert json.loads(arm.config_bytes)["architecture"] == "arm64"
    # skopeo without --all picks this machine's platform (amd64) from the index.
    res = skopeo_copy("docker.io/library/envmulti:1", tmp_path / "one", proxy=None,
                      cert_dir=upstream.cert_dir)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "one" / "manifest.json").read_bytes() == image.manifest_bytes
