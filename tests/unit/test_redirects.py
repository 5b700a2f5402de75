"""hubcache follows a registry's redirects itself (registry.k8s.io sends every /v2/ request to an
Artifact Registry host that wants a Bearer token of its own realm): DockerHub.follow and
RegistryAuth.redirected_token, against a registry's answers as hubcache's requests see them."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from hubcache.decide import challenge
from hubcache.decide.redirects import MAX_REDIRECTS as MAX_HOPS
from hubcache.metrics import Metrics
from hubcache.upstream.client import UpstreamError, UpstreamResponse
from hubcache.upstream.dockerhub import DockerHub
from hubcache.upstream.registryauth import redirected_repository

K8S = "https://registry.k8s.io"
AR = "https://us-west1-docker.pkg.dev"
CHALLENGE = 'Bearer realm="https://us-west1-docker.pkg.dev/v2/token",service="us-west1-docker.pkg.dev"'
TOKEN = "anon-ar-token"


class Upstream:
    """registry.k8s.io (307 everything under /v2/) and Artifact Registry (a token of its realm)."""

    def __init__(self, grant: bool = True) -> None:
        self.grant = grant
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    async def request(self, method: str, url: str, headers: list[tuple[str, str]], kind: str = "") -> UpstreamResponse:
        self.sent.append((method, url, dict(headers)))
        parts = urlsplit(url)
        if url.startswith(K8S + "/v2/"):
            rest = parts.path[len("/v2/"):]
            where = f"{AR}/v2/" if not rest else f"{AR}/v2/k8s-artifacts-prod/images/{rest}"
            return UpstreamResponse(307, {"location": where}, b"")
        if parts.path == "/v2/token":
            return UpstreamResponse(200, {}, json.dumps({"token": TOKEN, "expires_in": 300}).encode())
        if dict(headers).get("Authorization") == f"Bearer {TOKEN}" and self.grant:
            return UpstreamResponse(200, {"docker-content-digest": "sha256:abc"}, b"{}")
        return UpstreamResponse(401, {"www-authenticate": CHALLENGE}, b"")


def hub(up: Upstream) -> DockerHub:
    dh = DockerHub(Metrics())
    dh.request = up.request  # type: ignore[method-assign]
    dh.others._request = up.request
    return dh


def test_a_manifest_get_follows_the_redirect_with_an_anonymous_token_of_the_new_hosts_realm():
    up = Upstream()
    resp = asyncio.run(hub(up).follow("GET", f"{K8S}/v2/pause/manifests/3.9",
                                      [("Accept", "x"), ("Authorization", "Bearer for-registry.k8s.io")]))
    assert resp.status == 200
    (m1, u1, h1), (_, u2, h2), (_, u3, _), (m4, u4, h4) = up.sent
    assert (m1, u1, h1["Authorization"]) == ("GET", f"{K8S}/v2/pause/manifests/3.9", "Bearer for-registry.k8s.io")
    assert u2 == f"{AR}/v2/k8s-artifacts-prod/images/pause/manifests/3.9" and "Authorization" not in h2
    query = parse_qs(urlsplit(u3).query)  # the realm the challenge named, for the redirected name
    assert u3.startswith(f"{AR}/v2/token?") and query == {"service": ["us-west1-docker.pkg.dev"],
                                                          "scope": ["repository:k8s-artifacts-prod/images/pause:pull"]}
    assert (m4, u4, h4) == ("GET", u2, {"Accept": "x", "Authorization": f"Bearer {TOKEN}"})


def test_a_refused_token_is_not_retried_again_and_the_401_is_the_answer():
    up = Upstream(grant=False)
    resp = asyncio.run(hub(up).follow("HEAD", f"{K8S}/v2/pause/manifests/3.9", []))
    assert resp.status == 401
    assert [u for _, u, _ in up.sent if "/token" not in u] == [
        f"{K8S}/v2/pause/manifests/3.9", f"{AR}/v2/k8s-artifacts-prod/images/pause/manifests/3.9",
        f"{AR}/v2/k8s-artifacts-prod/images/pause/manifests/3.9"]


def test_a_registrys_own_401_is_not_answered_with_a_token_and_redirect_loops_end():
    up = Upstream()
    resp = asyncio.run(hub(up).follow("GET", f"{AR}/v2/x/manifests/1", []))
    assert resp.status == 401 and len(up.sent) == 1  # not redirected: the client's own login decides

    async def loop(method, url, headers, kind=""):
        return UpstreamResponse(307, {"location": url + "x"}, b"")

    dh = hub(up)
    dh.request = loop  # type: ignore[method-assign]
    with pytest.raises(UpstreamError, match=f"more than {MAX_HOPS} redirects"):
        asyncio.run(dh.follow("GET", f"{K8S}/v2/a/manifests/1", []))

    async def plain(method, url, headers, kind=""):
        return UpstreamResponse(302, {"location": "http://elsewhere.example/v2/"}, b"")

    dh.request = plain  # type: ignore[method-assign]
    with pytest.raises(UpstreamError, match="non-HTTPS"):
        asyncio.run(dh.follow("GET", f"{K8S}/v2/a/manifests/1", []))


async def _challenge(dh: DockerHub) -> challenge.Challenge:
    dh.others.configure([], ())
    return await dh.others.challenge("registry.k8s.io")


def test_a_registry_that_redirects_its_v2_wants_no_login_when_hubcache_gets_the_token():
    up = Upstream()
    seen = asyncio.run(_challenge(hub(up)))
    assert seen == challenge.NONE  # so hubcache answers the client's /v2/ 200
    assert [u for _, u, _ in up.sent][:2] == [f"{K8S}/v2/", f"{AR}/v2/"]
    up = Upstream(grant=False)
    seen = asyncio.run(_challenge(hub(up)))
    assert seen.scheme == "bearer" and seen.realm == f"{AR}/v2/token"


def test_the_repository_of_a_redirected_url():
    assert redirected_repository(f"{AR}/v2/k8s-artifacts-prod/images/pause/manifests/3.9") == "k8s-artifacts-prod/images/pause"
    assert redirected_repository(f"{AR}/v2/a/b/blobs/sha256:00") == "a/b"
    assert redirected_repository(f"{AR}/v2/") == ""
    assert redirected_repository(f"{AR}/v2/a/tags/list") == ""


def test_plain_http_redirects_are_followed_only_for_a_plain_http_parent():
    from hubcache.decide.redirects import Hops

    https = Hops("https://mirror.internal/v2/x/blobs/sha256:a", [])
    with pytest.raises(ValueError, match="non-HTTPS"):  # an https parent may not send bytes over http
        https.redirected(307, "http://s3.internal/bucket/a")
    plain = Hops("http://mirror.internal:5000/v2/x/blobs/sha256:a", [("Authorization", "Basic x")], plain=True)
    assert plain.redirected(307, "http://s3.internal/bucket/a?sig=1")
    assert plain.url == "http://s3.internal/bucket/a?sig=1" and plain.headers == []  # no login to the storage host
