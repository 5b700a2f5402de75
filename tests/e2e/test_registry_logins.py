"""Stored logins of registries other than Docker Hub (issue 12 item 4), with the harness's real
registries: the corp registry on :5000 (Basic auth, htpasswd) whose login is in a docker
config.json, and the ghcr-like one (token auth) with a private repository and a stored ghcr login.

A stored login serves a client that brought none only where anonymous access works too, or for
repositories named in hubcache_pool_private (qualified: registry.corp.example:5000/team/*);
otherwise the client gets the registry's own 401, and a client with its own login still pulls.
The corp password, plain or base64 as in Basic, reaches the corp registry and nothing else."""

from __future__ import annotations

import base64
import itertools
import json
import os

import pytest

from harness.clients import dir_files, skopeo_copy
from harness.hubenv import CORP_PASSWORD, CORP_REGISTRY, CORP_USER, GHCR_HOST
from harness.registries import BY_NAME

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(97000)
BASIC = "Basic " + base64.b64encode(f"{CORP_USER}:{CORP_PASSWORD}".encode()).decode()
CORP_LOG = f"{BY_NAME[CORP_REGISTRY].key}-front.jsonl"  # every request the corp registry got, with its headers


def _authorization(req) -> str | None:
    return {k.lower(): v for k, v in req.extra["request_headers"]}.get("authorization")


def _corp_hubcache(start_hubcache, upstream, *more: str, name: str = "hubcache"):
    return start_hubcache(f"hubcache_registries=+{CORP_REGISTRY}", f"hubcache_docker_config={upstream.docker_config}",
                          *more, name=name)


def _only_at_the_corp_registry(upstream, hub) -> None:
    """The corp password, plain or base64, is in the corp registry's request log (hubcache's
    requests to it) and in no other log of any registry, token server, CDN, nor hubcache's."""
    captured = {p.name: p.read_text(errors="replace") for p in upstream.logs.iterdir() if p.is_file()}
    assert BASIC in captured[CORP_LOG]  # the capture works: the login went where it belongs
    for name, text in captured.items():
        assert CORP_PASSWORD not in text, name
        if name != CORP_LOG:
            assert BASIC.split()[1] not in text, name
    assert CORP_PASSWORD not in hub.log() and BASIC.split()[1] not in hub.log()


def test_a_named_repository_of_the_basic_registry_is_pulled_with_its_stored_login_for_anonymous_clients(
        upstream, start_hubcache, certs, tmp_path):
    repo = f"team/app{next(_seeds)}"
    img = upstream.push_image(repo, "1", [(2 * MiB, next(_seeds)), (100_000, next(_seeds))], registry=CORP_REGISTRY)
    upstream.push_image("other/app", "1", [(50_000, next(_seeds))], registry=CORP_REGISTRY)
    ref = f"{CORP_REGISTRY}/{repo}:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs, authfile=upstream.docker_config)
    assert direct.returncode == 0, direct.stderr
    hub = _corp_hubcache(start_hubcache, upstream, f"hubcache_pool_private={CORP_REGISTRY}/team/*")
    assert f"{CORP_USER}@{CORP_REGISTRY} (from {upstream.docker_config})" in hub.log()

    mark = upstream.mark()
    cold = skopeo_copy(ref, tmp_path / "cold", proxy=hub.url, cert_dir=certs)  # no login of its own
    assert cold.returncode == 0, cold.stderr
    assert dir_files(tmp_path / "cold") == dir_files(tmp_path / "direct")
    reqs = upstream.requests_since(mark)
    assert reqs and {r.host for r in reqs} == {CORP_REGISTRY}
    assert {_authorization(r) for r in reqs if "/manifests/" in r.path or "/blobs/" in r.path} == {BASIC}
    for d in (img.config_digest, *img.layer_digests):  # each blob fetched once
        assert len([r for r in reqs if r.method == "GET" and r.path.endswith(d)]) == 1, reqs

    mark = upstream.mark()
    warm = skopeo_copy(ref, tmp_path / "warm", proxy=hub.url, cert_dir=certs)
    assert warm.returncode == 0, warm.stderr
    assert dir_files(tmp_path / "warm") == dir_files(tmp_path / "direct")
    assert [r for r in upstream.requests_since(mark) if r.host == CORP_REGISTRY] == []

    # a repository nobody named: the login is not used, the client gets the registry's 401
    mark = upstream.mark()
    other = skopeo_copy(f"{CORP_REGISTRY}/other/app:1", tmp_path / "other", proxy=hub.url, cert_dir=certs)
    assert other.returncode != 0 and "unauthorized" in other.stderr.lower(), other.stderr
    refused = [r for r in upstream.requests_since(mark) if "/manifests/" in r.path]
    assert refused and {(r.status, _authorization(r)) for r in refused} == {(401, None)}

    with upstream.down(registry=CORP_REGISTRY):
        offline = skopeo_copy(ref, tmp_path / "offline", proxy=hub.url, cert_dir=certs)
        assert offline.returncode == 0, offline.stderr
        assert dir_files(tmp_path / "offline") == dir_files(tmp_path / "direct")
    _only_at_the_corp_registry(upstream, hub)


def test_without_naming_it_an_anonymous_client_gets_the_basic_registrys_401_and_its_own_login_still_pulls(
        upstream, start_hubcache, certs, tmp_path):
    repo = f"team/own{next(_seeds)}"
    upstream.push_image(repo, "1", [(600_000, next(_seeds))], registry=CORP_REGISTRY)
    ref = f"{CORP_REGISTRY}/{repo}:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs, authfile=upstream.docker_config)
    assert direct.returncode == 0, direct.stderr
    hub = _corp_hubcache(start_hubcache, upstream)

    mark = upstream.mark()
    anon = skopeo_copy(ref, tmp_path / "anon", proxy=hub.url, cert_dir=certs)
    assert anon.returncode != 0 and "unauthorized" in anon.stderr.lower(), anon.stderr
    refused = [r for r in upstream.requests_since(mark) if r.host == CORP_REGISTRY]
    assert refused and {(r.status, _authorization(r)) for r in refused} == {(401, None)}  # the stored login stayed home

    own = skopeo_copy(ref, tmp_path / "own", proxy=hub.url, cert_dir=certs, authfile=upstream.docker_config)
    assert own.returncode == 0, own.stderr
    assert dir_files(tmp_path / "own") == dir_files(tmp_path / "direct")
    # what took the client's own login stays its own: another anonymous client is still refused
    again = skopeo_copy(ref, tmp_path / "again", proxy=hub.url, cert_dir=certs)
    assert again.returncode != 0, again.stderr
    assert CORP_PASSWORD not in hub.log() and BASIC.split()[1] not in hub.log()


def _ghcr_login_file(upstream, tmp_path):
    user, _, password = upstream.login("alice", GHCR_HOST).partition(":")
    creds = tmp_path / "logins.toml"
    creds.write_text(f'[[accounts]]\nusername = "{user}"\npassword = "{password}"\nregistry = "{GHCR_HOST}"\n')
    os.chmod(creds, 0o600)
    return creds, password


def test_a_private_repository_of_a_token_registry_is_served_with_its_stored_login_only_when_named(
        upstream, start_hubcache, certs, tmp_path):
    repo = f"acme/private{next(_seeds)}"
    upstream.set_private(repo, ["pusher", "alice"], registry=GHCR_HOST)
    upstream.push_image(repo, "1", [(700_000, next(_seeds))], registry=GHCR_HOST)
    public = f"acme/public{next(_seeds)}"
    upstream.push_image(public, "1", [(90_000, next(_seeds))], registry=GHCR_HOST)
    ref = f"{GHCR_HOST}/{repo}:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs, creds=upstream.login("alice", GHCR_HOST))
    assert direct.returncode == 0, direct.stderr
    creds, password = _ghcr_login_file(upstream, tmp_path)
    none_json = tmp_path / "none.json"

    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_docker_config={none_json}")
    mark = upstream.mark()
    anon = skopeo_copy(ref, tmp_path / "anon", proxy=hub.url, cert_dir=certs)
    assert anon.returncode != 0, anon.stderr
    tokens = [r for r in upstream.requests_since(mark) if r.path.startswith("/token")]
    assert tokens and all(r.extra["account"] != "alice" for r in tokens)  # the login was never asked for it
    # public content: the stored login fetches it (anonymous access works too)
    mark = upstream.mark()
    pub = skopeo_copy(f"{GHCR_HOST}/{public}:1", tmp_path / "pub", proxy=hub.url, cert_dir=certs)
    assert pub.returncode == 0, pub.stderr
    granted = [r for r in upstream.requests_since(mark) if r.path.startswith("/token") and r.status == 200]
    assert {r.extra["account"] for r in granted} == {"anonymous", "alice"}

    named = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_docker_config={none_json}",
                           f"hubcache_pool_private={GHCR_HOST}/acme/private*", name="named")
    mark = upstream.mark()
    served = skopeo_copy(ref, tmp_path / "served", proxy=named.url, cert_dir=certs)
    assert served.returncode == 0, served.stderr
    assert dir_files(tmp_path / "served") == dir_files(tmp_path / "direct")
    reqs = upstream.requests_since(mark)
    assert {r.extra["account"] for r in reqs if r.path.startswith("/token") and r.status == 200} >= {"alice"}
    logged_in = [r for r in reqs if password in json.dumps(r.extra.get("request_headers", []))
                 or any(v.startswith("Basic ") for k, v in r.extra.get("request_headers", []) if k.lower() == "authorization")]
    assert logged_in and {(r.host, r.path.split("?")[0]) for r in logged_in} == {(GHCR_HOST, "/token")}
    # served to every client, as pool content is: a second anonymous pull comes from the store
    mark = upstream.mark()
    again = skopeo_copy(ref, tmp_path / "again", proxy=named.url, cert_dir=certs)
    assert again.returncode == 0, again.stderr
    assert upstream.requests_since(mark) == []
    assert password not in hub.log() + named.log()
