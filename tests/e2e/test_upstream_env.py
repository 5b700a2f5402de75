"""The fake Docker Hub itself: pushes, direct pulls, and what its request log shows.

These prove the test environment, not hubcache; the proxy's e2e tests build on them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import time
from urllib.parse import urlsplit

import pytest

from harness.clients import dir_blob, skopeo_copy
from harness.hubenv import AUTH_HOST, CDN_HOST, REGISTRY_HOST, Req, missing_prerequisites

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_prerequisites() is not None,
                       reason=f"e2e upstream unavailable: {missing_prerequisites()}"),
]

MiB = 1 << 20


def https(up, method: str, url: str, headers: dict | None = None, source: str | None = None):
    """One request straight to the upstream (this process is in its namespaces), from the
    loopback address `source` if given (any 127.x.y.z: a client with another IP)."""
    u = urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(up.ca_cert))
    conn = http.client.HTTPSConnection(u.hostname, 443, context=ctx, timeout=30,
                                       source_address=(source, 0) if source else None)
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
    for digest, size in zip(image.layer_digests, image.layer_sizes, strict=True):
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


# ------------------------------------------------- Docker Hub's pull limit (hubfront.py)

W = ";w=21600"  # Docker Hub's window, the default
ANON_429 = ("You have reached your unauthenticated pull rate limit. "
            "https://www.docker.com/increase-rate-limit")


@pytest.fixture(scope="module")
def accounts(upstream):
    upstream.add_account("alice", "alicepw")  # a personal account
    upstream.add_account("pro", "propw")  # a paid one


@pytest.fixture
def limits(upstream):
    """upstream.set_limits for one test, from zero pulls; afterwards nobody is limited again."""
    upstream.reset_pulls()
    yield upstream.set_limits
    upstream.set_limits(None)
    upstream.reset_pulls()


def manifest(up, image, method: str = "GET", token: str | None = None, ref: str | None = None,
             source: str | None = None):
    """GET/HEAD on the image's manifest; headers come back with lower-case names."""
    headers = {"Accept": image.media_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, got, body = https(up, method,
                              f"https://{REGISTRY_HOST}/v2/{image.name}/manifests/{ref or image.tag}",
                              headers, source)
    return status, {k.lower(): v for k, v in got.items()}, body


def ratelimit(headers: dict) -> tuple:
    return (headers.get("ratelimit-limit"), headers.get("ratelimit-remaining"),
            headers.get("docker-ratelimit-source"))


def test_front_counts_anonymous_manifest_gets_per_ip(upstream, image, limits):
    limits({"anonymous": 5})
    tok = pull_token(upstream, "library/envtest")["token"]
    assert manifest(upstream, image)[0] == 401  # no token: the registry refuses, no pull
    seen = []
    for source in ("127.0.0.1", "127.0.0.1", "127.0.0.5"):
        status, headers, body = manifest(upstream, image, token=tok, source=source)
        assert status == 200 and body == image.manifest_bytes
        seen.append(ratelimit(headers))
    assert seen == [("5" + W, "4" + W, "127.0.0.1"), ("5" + W, "3" + W, "127.0.0.1"),
                    ("5" + W, "4" + W, "127.0.0.5")]
    assert upstream.pulls_by_account() == {"127.0.0.1": 2, "127.0.0.5": 1}


def test_front_heads_blob_gets_and_misses_are_no_pulls(upstream, image, limits):
    limits({"anonymous": 5})
    tok = pull_token(upstream, "library/envtest")["token"]
    for _ in range(3):
        status, headers, body = manifest(upstream, image, "HEAD", token=tok)
        assert status == 200 and body == b""
        assert ratelimit(headers) == ("5" + W, "5" + W, "127.0.0.1")
    status, headers, _ = https(
        upstream, "GET", f"https://{REGISTRY_HOST}/v2/library/envtest/blobs/{image.layer_digests[0]}",
        {"Authorization": f"Bearer {tok}"})
    assert status == 307 and "ratelimit-limit" not in {k.lower() for k in headers}
    assert manifest(upstream, image, token=tok, ref="nosuchtag")[0] == 404
    assert upstream.pulls_by_account() == {}
    status, headers, _ = manifest(upstream, image, token=tok, ref=image.manifest_digest)
    assert status == 200 and ratelimit(headers) == ("5" + W, "4" + W, "127.0.0.1")
    assert upstream.pulls_by_account() == {"127.0.0.1": 1}


def test_front_answers_429_over_the_limit(upstream, image, limits):
    limits({"anonymous": 2})
    tok = pull_token(upstream, "library/envtest")["token"]
    assert [manifest(upstream, image, token=tok)[0] for _ in range(2)] == [200, 200]
    mark = upstream.mark()
    status, headers, body = manifest(upstream, image, token=tok)
    assert status == 429
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"errors": [{"code": "TOOMANYREQUESTS", "message": ANON_429}]}
    assert ratelimit(headers) == ("2" + W, "0" + W, "127.0.0.1")
    assert manifest(upstream, image, token=tok, ref=image.manifest_digest)[0] == 429
    status, headers, _ = manifest(upstream, image, "HEAD", token=tok)  # HEAD still answered
    assert status == 200 and ratelimit(headers) == ("2" + W, "0" + W, "127.0.0.1")
    path = "/v2/library/envtest/manifests/"
    reqs = upstream.requests_since(mark)
    # The 429s come from the front (the registry never saw them), the HEAD from the registry.
    assert reqs == [Req(REGISTRY_HOST, "GET", path + "1", 429),
                    Req(REGISTRY_HOST, "GET", path + image.manifest_digest, 429),
                    Req(REGISTRY_HOST, "HEAD", path + "1", 200)]
    assert [r.extra.get("answered_by") for r in reqs] == ["hubfront", "hubfront", None]
    assert reqs[0].extra["account"] == "anonymous" and reqs[0].extra["source"] == "127.0.0.1"
    # Another IP has its own budget.
    assert manifest(upstream, image, token=tok, source="127.0.0.6")[0] == 200
    assert upstream.pulls_by_account() == {"127.0.0.1": 2, "127.0.0.6": 1}


def test_front_counts_an_accounts_token_against_the_account(upstream, image, limits, accounts):
    limits({"anonymous": 1, "alice": 2})
    alice = pull_token(upstream, "library/envtest", "alice:alicepw")["token"]
    assert jwt_claims(alice)["sub"] == "alice"
    seen = []
    for _ in range(2):
        status, headers, _ = manifest(upstream, image, token=alice)
        assert status == 200
        seen.append(ratelimit(headers))
    assert seen == [("2" + W, "1" + W, "alice"), ("2" + W, "0" + W, "alice")]
    status, headers, body = manifest(upstream, image, token=alice)
    assert status == 429 and ratelimit(headers) == ("2" + W, "0" + W, "alice")
    message = json.loads(body)["errors"][0]
    assert message["code"] == "TOOMANYREQUESTS"
    assert message["message"].startswith("You have reached your pull rate limit. ")
    # The same IP, anonymously: its own budget, untouched by alice's pulls.
    anon = pull_token(upstream, "library/envtest")["token"]
    status, headers, _ = manifest(upstream, image, token=anon)
    assert status == 200 and ratelimit(headers) == ("1" + W, "0" + W, "127.0.0.1")
    assert upstream.pulls_by_account() == {"alice": 2, "127.0.0.1": 1}


def test_front_unlimited_account_gets_no_ratelimit_headers(upstream, image, limits, accounts):
    limits({"*": 1, "pro": None})
    pro = pull_token(upstream, "library/envtest", "pro:propw")["token"]
    for method in ("GET", "GET", "GET", "HEAD"):
        status, headers, _ = manifest(upstream, image, method, token=pro)
        # as Hub answers a paid account: who is counted, no limit
        assert status == 200 and ratelimit(headers) == (None, None, "pro")
        assert not [k for k in headers if k.startswith("x-ratelimit")]
    # Any other name, anonymous included, falls under "*".
    alice = pull_token(upstream, "library/envtest", "alice:alicepw")["token"]
    status, headers, _ = manifest(upstream, image, token=alice)
    assert status == 200 and ratelimit(headers) == ("1" + W, "0" + W, "alice")
    assert manifest(upstream, image, token=alice)[0] == 429
    assert upstream.pulls_by_account() == {"pro": 3, "alice": 1}  # counted, never refused


def test_front_sends_the_x_ratelimit_family_with_its_window(upstream, image, limits, accounts):
    limits({"alice": 3, "pro": None}, window=3600, headers="x-ratelimit")
    alice = pull_token(upstream, "library/envtest", "alice:alicepw")["token"]
    status, headers, _ = manifest(upstream, image, token=alice)
    assert status == 200 and ratelimit(headers) == (None, None, "alice")  # not the documented family
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("3;w=3600", "2;w=3600")
    pro = pull_token(upstream, "library/envtest", "pro:propw")["token"]
    status, headers, _ = manifest(upstream, image, "HEAD", token=pro)
    assert status == 200 and {k for k in headers if "ratelimit" in k} == {"docker-ratelimit-source"}


def test_front_abuse_limit_is_a_bare_429_to_every_request(upstream, image, limits, accounts):
    limits({"alice": 100})
    alice = pull_token(upstream, "library/envtest", "alice:alicepw")["token"]
    mark = upstream.mark()
    upstream.abuse_limit(60)
    try:
        for method, path in (("GET", "manifests/1"), ("HEAD", "manifests/1"), ("GET", f"blobs/{image.config_digest}")):
            status, headers, body = https(upstream, method, f"https://{REGISTRY_HOST}/v2/library/envtest/{path}",
                                          {"Authorization": f"Bearer {alice}"})
            assert status == 429 and body == b"" and not [k for k in headers if "ratelimit" in k.lower()]
    finally:
        upstream.abuse_limit(0)
    assert manifest(upstream, image, token=alice)[0] == 200
    reqs = upstream.requests_since(mark)
    assert [r.status for r in reqs] == [429, 429, 429, 200]
    assert [r.extra.get("abuse") for r in reqs[:3]] == [True] * 3
    assert upstream.pulls_by_account() == {"alice": 1}  # the 429s counted no pull


def test_front_reset_window_and_restart(upstream, image, limits):
    limits({"anonymous": 1})
    tok = pull_token(upstream, "library/envtest")["token"]
    assert [manifest(upstream, image, token=tok)[0] for _ in range(2)] == [200, 429]
    upstream.reset_pulls()
    assert upstream.pulls_by_account() == {}
    status, headers, _ = manifest(upstream, image, token=tok)
    assert status == 200 and ratelimit(headers)[1] == "0" + W
    # The front keeps its count across a restart (it reads its log back).
    with upstream.down():
        pass
    assert manifest(upstream, image, token=tok)[0] == 429
    # A pull leaves the count when it leaves the window.
    limits({"anonymous": 1}, window=1)
    status, headers, _ = manifest(upstream, image, "HEAD", token=tok)
    assert ratelimit(headers)[:2] in {("1;w=1", "0;w=1"), ("1;w=1", "1;w=1")}
    time.sleep(1.1)
    assert upstream.pulls_by_account() == {}
    status, headers, _ = manifest(upstream, image, token=tok)
    assert status == 200 and ratelimit(headers)[:2] == ("1;w=1", "0;w=1")


def test_private_repo_refuses_anonymous_like_hub(upstream, limits, accounts):
    upstream.set_private("alice/secret", ["pusher", "alice"])
    info = upstream.push_image("alice/secret", "1", layers=[(4096, 51)])
    limits({"anonymous": 10, "alice": 10})
    anon = pull_token(upstream, "alice/secret")
    assert anon["status"] == 200  # Hub hands out a token, with no access in it
    assert jwt_claims(anon["token"])["access"] == [
        {"type": "repository", "name": "alice/secret", "actions": []}]
    status, headers, body = manifest(upstream, info, token=anon["token"])
    assert status == 401
    assert headers["www-authenticate"] == (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:alice/secret:pull",error="insufficient_scope"')
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    alice = pull_token(upstream, "alice/secret", "alice:alicepw")["token"]
    status, _, body = manifest(upstream, info, token=alice)
    assert status == 200 and body == info.manifest_bytes
    assert upstream.pulls_by_account() == {"alice": 1}  # the refused GET was no pull


def test_skopeo_pull_over_the_account_limit_fails_with_429(upstream, image, limits, accounts, tmp_path):
    # Retry-After: 0, or skopeo retries for 30 s (Hub sends none: see Upstream.set_limits).
    limits({"alice": 1}, retry_after=0)
    res = skopeo_copy("docker.io/library/envtest:1", tmp_path / "first", proxy=None,
                      cert_dir=upstream.cert_dir, creds="alice:alicepw")
    assert res.returncode == 0, res.stderr
    mark = upstream.mark()
    res = skopeo_copy("docker.io/library/envtest:1", tmp_path / "second", proxy=None,
                      cert_dir=upstream.cert_dir, creds="alice:alicepw")
    assert res.returncode != 0
    assert "toomanyrequests" in res.stderr.lower()
    assert "You have reached your pull rate limit" in res.stderr
    refused = [r for r in upstream.requests_since(mark) if r.status == 429]
    assert refused and all(r.extra["answered_by"] == "hubfront" and r.extra["account"] == "alice"
                           for r in refused)
    assert upstream.pulls_by_account() == {"alice": 1}
