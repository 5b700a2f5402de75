"""The harness's registries beside the fake Hub (harness.registries) behave like the real ones, shown
with direct skopeo pulls (no hubcache): ghcr.io's token realm on its own host, registry.gitlab.com's
on gitlab.com, mcr.microsoft.com anonymous with blobs redirected to its data host, and a corp
registry on :5000 with Basic auth from a docker config.json. Later tests pull from them through
hubcache and compare against what these pulls establish."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import socket
import ssl
from urllib.parse import urlencode, urlsplit

import pytest

from harness.clients import dir_files, direct_request, skopeo_copy
from harness.hubenv import (
    CORP_PASSWORD,
    CORP_REGISTRY,
    CORP_USER,
    GHCR_HOST,
    GITLAB_AUTH_HOST,
    GITLAB_HOST,
    HUB,
    MCR_DATA_HOST,
    MCR_HOST,
    REGISTRIES,
)
from harness.registries import BY_NAME

pytestmark = pytest.mark.e2e
_seeds = itertools.count(83000)
EXTRA = [GHCR_HOST, GITLAB_HOST, MCR_HOST, CORP_REGISTRY]
TOKEN = {GHCR_HOST: ("https://ghcr.io/token", "ghcr.io", GHCR_HOST),
         GITLAB_HOST: ("https://gitlab.com/jwt/auth", "container_registry", GITLAB_AUTH_HOST)}
HUB_HOSTS = {"registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com"}


def _hosts(registry: str) -> set[str]:
    """Every host name a request to this registry may be logged under."""
    spec = BY_NAME[registry]
    return {spec.name} | {h for h, _ in spec.addresses[1:]}


def _pull(upstream, registry: str, name: str, tag: str, dest, **kw):
    """A direct skopeo pull (no proxy); the corp registry with the config.json login unless told."""
    if registry == CORP_REGISTRY and "creds" not in kw:
        kw.setdefault("authfile", upstream.docker_config)
    return skopeo_copy(f"{registry}/{name}:{tag}", dest, proxy=None, cert_dir=upstream.cert_dir, **kw)


def _assert_same_as_pushed(upstream, registry: str, info, dest) -> None:
    """The pull holds the manifest bytes pushed and every blob as the registry stores it."""
    files = dir_files(dest)
    assert files["manifest.json"] == info.manifest_bytes
    for digest in (info.config_digest, *info.layer_digests):
        data = files[digest.split(":", 1)[1]]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        assert data == upstream.blob_file(digest, registry).read_bytes()


@pytest.fixture(scope="module")
def pushed(upstream):
    """One image on each registry (the Hub's included), pushed once for this module."""
    return {reg: upstream.push_image("harness/regs", "1", [(300_000, next(_seeds)), (40_000, next(_seeds))], registry=reg)
            for reg in REGISTRIES}


@pytest.mark.parametrize("registry", EXTRA)
def test_each_registry_pulls_back_what_was_pushed_and_logs_it_under_its_own_hosts(upstream, pushed, tmp_path, registry):
    info = upstream.push_image("team/app", "v1", [(700_000, next(_seeds)), (5_000, next(_seeds))], fmt="v2s2",
                               registry=registry)
    assert upstream.blob_file(info.layer_digests[0], registry).is_file()
    assert not upstream.blob_file(info.layer_digests[0]).exists()  # its own storage, not the Hub's
    mark = upstream.mark()
    res = _pull(upstream, registry, "team/app", "v1", tmp_path / "pulled")
    assert res.returncode == 0, res.stderr
    _assert_same_as_pushed(upstream, registry, info, tmp_path / "pulled")
    reqs = upstream.requests_since(mark)
    assert {r.host for r in reqs} <= _hosts(registry) and not {r.host for r in reqs} & HUB_HOSTS
    manifest_gets = [r for r in reqs if r.host == registry and r.method == "GET" and r.path == "/v2/team/app/manifests/v1"]
    assert [r.status for r in manifest_gets] == [200]
    assert manifest_gets[0].extra["answered_by"] == "registry"  # forwarded to distribution by the front


def test_an_index_goes_to_any_registry_with_a_child_pushed_elsewhere_first(upstream, pushed, tmp_path):
    idx = upstream.push_index("team/multi", "1", {"amd64": pushed[HUB], "arm64": [(60_000, next(_seeds))]},
                              registry=GITLAB_HOST)  # the amd64 child's blobs come from the Hub's storage
    res = _pull(upstream, GITLAB_HOST, "team/multi", "1", tmp_path / "all", all_platforms=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "all" / "manifest.json").read_bytes() == idx.manifest_bytes
    for child in idx.manifests.values():
        for digest in (child.config_digest, *child.layer_digests):
            assert upstream.blob_file(digest, GITLAB_HOST).read_bytes() == (tmp_path / "all" / digest.split(":")[1]).read_bytes()


@pytest.mark.parametrize("registry", list(TOKEN))
def test_token_registry_challenge_and_realm_are_the_real_ones(upstream, pushed, registry):
    realm, service, realm_host = TOKEN[registry]
    status, headers, body = direct_request(upstream.ca_cert, "GET", registry, "/v2/")
    assert status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert headers["www-authenticate"] == f'Bearer realm="{realm}",service="{service}"'
    assert headers["docker-distribution-api-version"] == "registry/2.0"

    # an anonymous token for a public repository, from the realm, opens its manifest
    mark = upstream.mark()
    query = urlencode({"service": service, "scope": "repository:harness/regs:pull"})
    status, _, body = direct_request(upstream.ca_cert, "GET", realm_host, f"{urlsplit(realm).path}?{query}")
    assert status == 200 and set(json.loads(body)) == {"token"}  # as ghcr.io and gitlab.com answer
    token = json.loads(body)["token"]
    status, _, body = direct_request(upstream.ca_cert, "GET", registry, "/v2/harness/regs/manifests/1",
                                     [("Authorization", f"Bearer {token}"), ("Accept", pushed[registry].media_type)])
    assert (status, body) == (200, pushed[registry].manifest_bytes)
    status, _, _ = direct_request(upstream.ca_cert, "GET", registry, "/v2/harness/regs/manifests/1",
                                  [("Authorization", f"Bearer {token}x")])
    assert status == 401  # distribution checks the signature: a forged token opens nothing

    token_lines = [r for r in upstream.requests_since(mark) if r.path.startswith(urlsplit(realm).path)]
    assert [(r.host, r.status, r.extra["account"]) for r in token_lines] == [(realm_host, 200, "anonymous")]
    assert token_lines[0].extra["access"] == [{"type": "repository", "name": "harness/regs", "actions": ["pull"]}]
    if registry == GHCR_HOST:
        assert token_lines[0].extra["answered_by"] == "token"  # by ghcr.io's front itself


@pytest.mark.parametrize("registry", list(TOKEN))
def test_private_repository_of_a_token_registry_needs_one_of_its_own_accounts(upstream, tmp_path, registry):
    realm_host = TOKEN[registry][2]
    repo = f"corp-team/secret{next(_seeds)}"
    upstream.set_private(repo, ["pusher", "alice"], registry=registry)
    info = upstream.push_image(repo, "1", [(200_000, next(_seeds))], registry=registry)
    mark = upstream.mark()

    anon = _pull(upstream, registry, repo, "1", tmp_path / "anon")
    assert anon.returncode != 0
    bob = _pull(upstream, registry, repo, "1", tmp_path / "bob", creds=upstream.login("bob", registry))
    assert bob.returncode != 0  # an account of this registry, but not one the repository allows
    hub_login = _pull(upstream, registry, repo, "1", tmp_path / "hub", creds=f"alice:{upstream.accounts['alice']}")
    assert hub_login.returncode != 0  # alice's Docker Hub password is no login here
    reqs = upstream.requests_since(mark)
    manifests = [r for r in reqs if r.host == registry and "/manifests/" in r.path]
    assert manifests and {r.status for r in manifests} == {401}  # distribution refused every one
    tokens = [r for r in reqs if r.host == realm_host]
    assert {r.extra["account"] for r in tokens if r.status == 200} == {"anonymous", "bob"}
    assert all(a["actions"] == [] for r in tokens if r.status == 200 for a in r.extra["access"])
    assert [r.status for r in tokens if r.extra["account"] == "-"] == [401]  # the wrong password: refused by the realm

    alice = _pull(upstream, registry, repo, "1", tmp_path / "alice", creds=upstream.login("alice", registry))
    assert alice.returncode == 0, alice.stderr
    _assert_same_as_pushed(upstream, registry, info, tmp_path / "alice")


def test_mcr_like_is_anonymous_and_its_data_host_serves_the_blobs(upstream, pushed, tmp_path):
    info = pushed[MCR_HOST]
    status, headers, body = direct_request(upstream.ca_cert, "GET", MCR_HOST, "/v2/")
    assert (status, body) == (200, b"{}") and "www-authenticate" not in headers
    layer = info.layer_digests[0]
    status, headers, body = direct_request(upstream.ca_cert, "GET", MCR_HOST, f"/v2/harness/regs/blobs/{layer}")
    assert status == 307 and urlsplit(headers["location"]).hostname == MCR_DATA_HOST
    status, _, body = direct_request(upstream.ca_cert, "GET", MCR_DATA_HOST, urlsplit(headers["location"]).path)
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer  # no Authorization needed

    mark = upstream.mark()
    res = _pull(upstream, MCR_HOST, "harness/regs", "1", tmp_path / "pulled")
    assert res.returncode == 0, res.stderr
    _assert_same_as_pushed(upstream, MCR_HOST, info, tmp_path / "pulled")
    reqs = upstream.requests_since(mark)
    blobs = {info.config_digest, *info.layer_digests}
    at_registry = [r for r in reqs if r.host == MCR_HOST and "/blobs/" in r.path]
    assert {r.path.rsplit("/", 1)[1] for r in at_registry} == blobs and {r.status for r in at_registry} == {307}
    at_data = [r for r in reqs if r.host == MCR_DATA_HOST]
    assert sorted("sha256:" + r.path.split("/")[-2] for r in at_data) == sorted(blobs)
    for r in at_data:
        assert r.status == 200 and r.bytes == upstream.blob_file("sha256:" + r.path.split("/")[-2], MCR_HOST).stat().st_size
    assert not [r for r in reqs if r.extra.get("account", "anonymous") != "anonymous"]  # nobody logged in


def test_corp_registry_wants_basic_and_pulls_with_the_config_json_login(upstream, pushed, tmp_path):
    info = pushed[CORP_REGISTRY]
    status, headers, _ = direct_request_port(upstream, CORP_REGISTRY, "/v2/")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="corp registry"'
    basic = base64.b64encode(f"{CORP_USER}:{CORP_PASSWORD}".encode()).decode()
    assert json.loads(upstream.docker_config.read_text()) == {"auths": {CORP_REGISTRY: {"auth": basic}}}
    status, _, _ = direct_request_port(upstream, CORP_REGISTRY, "/v2/", [("Authorization", f"Basic {basic}")])
    assert status == 200

    mark = upstream.mark()
    anon = _pull(upstream, CORP_REGISTRY, "harness/regs", "1", tmp_path / "anon", creds=None)
    assert anon.returncode != 0
    wrong_basic = base64.b64encode(f"{CORP_USER}:nope".encode()).decode()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"auths": {CORP_REGISTRY: {"auth": wrong_basic}}}))
    assert _pull(upstream, CORP_REGISTRY, "harness/regs", "1", tmp_path / "wrong", authfile=wrong).returncode != 0
    refused = [r for r in upstream.requests_since(mark) if "/manifests/" in r.path]
    assert [r.status for r in refused] == [401, 401]
    assert _authorization(refused[0]) in (None, "Basic Og==")  # skopeo --src-no-creds sends an empty login
    assert _authorization(refused[1]) == f"Basic {wrong_basic}"

    mark = upstream.mark()
    res = _pull(upstream, CORP_REGISTRY, "harness/regs", "1", tmp_path / "pulled")
    assert res.returncode == 0, res.stderr
    _assert_same_as_pushed(upstream, CORP_REGISTRY, info, tmp_path / "pulled")
    reqs = upstream.requests_since(mark)
    assert {r.host for r in reqs} == {CORP_REGISTRY}
    sent = [_authorization(r) for r in reqs if r.status == 200]
    assert sent and set(sent) == {f"Basic {basic}"}  # the login of config.json, on every request answered


def _authorization(req) -> str | None:
    """The Authorization header a logged request carried (the fronts log every request header)."""
    return {k.lower(): v for k, v in req.extra["request_headers"]}.get("authorization")


def direct_request_port(upstream, registry: str, path: str, headers=()):
    """direct_request to a registry on a port other than 443."""
    host, port = registry.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(upstream.ca_cert)), timeout=30)
    try:
        conn.putrequest("GET", path)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("registry", EXTRA)
def test_one_registry_down_fails_its_pulls_while_the_hub_and_the_others_serve(upstream, pushed, tmp_path, registry):
    other = EXTRA[(EXTRA.index(registry) + 1) % len(EXTRA)]
    with upstream.down(registry=registry):
        assert all(_refused(h, p) for h, p in BY_NAME[registry].addresses)
        res = _pull(upstream, registry, "harness/regs", "1", tmp_path / "down")
        assert res.returncode != 0 and "connection refused" in res.stderr.lower()
        for reg in (HUB, other):
            res = _pull(upstream, reg, "harness/regs", "1", tmp_path / reg.replace(":", "_"))
            assert res.returncode == 0, f"{reg}: {res.stderr}"
            _assert_same_as_pushed(upstream, reg, pushed[reg], tmp_path / reg.replace(":", "_"))
    res = _pull(upstream, registry, "harness/regs", "1", tmp_path / "again")  # same storage as before
    assert res.returncode == 0, res.stderr
    _assert_same_as_pushed(upstream, registry, pushed[registry], tmp_path / "again")
