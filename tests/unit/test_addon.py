"""The hooks on their own, with mitmproxy's test helpers: what is answered locally, and how."""

import asyncio
import hashlib
import json

import pytest
from mitmproxy.test import tflow, tutils

from hubcache.model import Kind, Outcome


@pytest.fixture
def hub(hub_ctx):
    return hub_ctx[0]


def flow(path: str, host: str = "registry-1.docker.io", method: str = "GET", scheme: str = "https", headers=()):
    f = tflow.tflow(req=tutils.treq(method=method.encode(), scheme=scheme.encode(), host=host, port=443,
                                    path=path.encode(), headers=[(k.encode(), v.encode()) for k, v in headers]))
    return f


def run(hub, f):
    asyncio.run(hub.request(f))
    return f.response


def test_v2_ping_is_answered_with_docker_hubs_challenge(hub):
    r = run(hub, flow("/v2/"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'
    assert run(hub, flow("/v2/", headers=[("Authorization", "Bearer x")])).status_code == 200


def test_anonymous_token_request_gets_a_local_token(hub):
    r = run(hub, flow("/token?service=registry.docker.io&scope=repository:library/x:pull", host="auth.docker.io"))
    assert r.status_code == 200 and json.loads(r.content)["token"].startswith("hubcache.")


def test_token_request_with_credentials_gets_a_local_token_when_offline(hub_ctx):
    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_offline=True)
    r = run(hub, flow("/token?scope=x", host="auth.docker.io", headers=[("Authorization", "Basic dTpw")]))
    assert r.status_code == 200 and json.loads(r.content)["token"].startswith("hubcache.")


def test_offline_miss_is_an_oci_error_naming_the_image(hub_ctx):
    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_offline=True)
    r = run(hub, flow("/v2/library/postgres/manifests/12.2"))
    err = json.loads(r.content)["errors"][0]
    assert r.status_code == 404 and err["code"] == "MANIFEST_UNKNOWN"
    assert "docker.io/library/postgres:12.2" in err["message"] and "offline" in err["message"]


def test_a_refused_head_carries_no_body_only_the_length_a_get_would_have(hub_ctx):
    """An answer to HEAD has no body (RFC 9110 9.3.2). containerd's Go client reads one sent anyway
    as an "Unsolicited response received on idle HTTP channel" on the reused connection."""
    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_offline=True)
    get = run(hub, flow("/v2/library/postgres/manifests/12.2"))
    head = run(hub, flow("/v2/library/postgres/manifests/12.2", method="HEAD"))
    assert (head.status_code, head.raw_content) == (404, b"")
    assert head.headers["content-length"] == str(len(get.raw_content)) and len(get.raw_content) > 0
    assert head.headers["content-type"] == "application/json"


def test_bad_name_is_an_oci_error(hub):
    r = run(hub, flow("/v2/UPPER/manifests/latest"))
    assert r.status_code == 400
    assert json.loads(r.content)["errors"][0]["code"] == "NAME_INVALID"


def test_plain_http_is_left_alone(hub):
    assert run(hub, flow("/v2/", scheme="http")) is None


def test_other_hosts_are_left_alone(hub):
    f = flow("/v2/", host="gitlab.example.com")
    assert run(hub, f) is None and "hubcache" not in f.metadata


def test_oversized_upstream_manifest_is_refused_with_an_oci_error(hub):
    from hubcache.upstream import client as upstream

    async def auth(client_auth, repository, registry="docker.io"):
        return "Bearer upstream", "anonymous"

    async def too_large(method, url, headers, kind=""):
        raise upstream.BodyTooLarge(f"{method} {url}: body over {upstream.MAX_BODY} bytes")

    hub.dockerhub.authorization, hub.dockerhub.request = auth, too_large
    r = run(hub, flow("/v2/library/x/manifests/1"))
    err = json.loads(r.content)["errors"][0]
    assert r.status_code == 502 and err["code"] == "MANIFEST_INVALID" and "limit" in err["message"]


def test_concurrent_manifest_misses_make_one_upstream_request(hub):
    from hubcache.upstream import client as upstream

    body = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    calls = []

    async def auth(client_auth, repository, registry="docker.io"):
        return "Bearer upstream", "anonymous"

    async def get(method, url, headers, kind=""):
        calls.append(url)
        await asyncio.sleep(0.2)  # the others arrive meanwhile
        return upstream.UpstreamResponse(200, {"content-type": "application/vnd.oci.image.manifest.v1+json",
                                               "docker-content-digest": digest}, body)

    hub.dockerhub.authorization, hub.dockerhub.request = auth, get

    async def many():
        flows = [flow("/v2/library/x/manifests/1") for _ in range(8)]
        await asyncio.gather(*(hub.request(f) for f in flows))
        return flows

    flows = asyncio.run(many())
    assert len(calls) == 1
    assert all(f.response.status_code == 200 and f.response.content == body for f in flows)
    assert all(f.response.headers["docker-content-digest"] == digest for f in flows)


def test_fuzzed_request_paths_never_crash_and_never_leave_the_registry_grammar(hub):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    alphabet = st.characters(codec="ascii", exclude_characters="\r\n ?#")

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=alphabet, max_size=200), st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))
    def check(tail, method):
        hub.dockerhub.health.failed("registry", "fuzzing: never go upstream", 1e18)  # answers must come from here
        f = flow("/v2/" + tail, method=method)
        asyncio.run(hub.request(f))
        st = f.metadata["hubcache"]  # every /v2/ path on a registry host is recognised
        if f.response is None:  # not answered here: relayed as the client sent it, nothing added
            assert st.route.kind is Kind.OTHER and st.outcome is Outcome.PASSTHROUGH
            assert "authorization" not in f.request.headers
            return
        # answered here: the store is empty and upstream backs off, so never content; always
        # an OCI error the client can print
        assert f.response.status_code in (400, 401, 404)
        assert f.response.headers["content-type"] == "application/json"
        if method == "HEAD":  # no body after a HEAD's answer, only the length a GET's error would have
            assert f.response.content == b"" and int(f.response.headers["content-length"]) > 0
            return
        errors = json.loads(f.response.content)["errors"]
        assert errors and errors[0]["code"] in {"NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID",
                                                "MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "UNAUTHORIZED"}
        assert errors[0]["message"]

    check()


def test_an_answer_made_here_does_not_end_the_back_off(hub_ctx):
    hub, tctx = hub_ctx
    hub.dockerhub.health.failed("registry", "connection refused", 1e12)
    f = flow("/v2/library/x/manifests/1")
    asyncio.run(hub.request(f))
    assert f.response.status_code == 404  # refused here: upstream is backing off
    asyncio.run(hub.response(f))
    assert hub.dockerhub.unavailable("registry-1.docker.io")  # still backing off


def test_a_bad_option_value_is_refused_naming_it_and_the_settings_stay_as_they_were(hub_ctx):
    from mitmproxy import exceptions

    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_max_size="1g")
    with pytest.raises(exceptions.OptionsError, match="hubcache_max_size: not a size: 'lots'"):
        tctx.configure(hub, hubcache_max_size="lots")
    assert hub.svc.settings.max_size == 1 << 30
    assert hub.svc.store is not None and hub.svc.store.max_size == 1 << 30


def test_a_manifest_push_upstream_accepted_updates_the_tag_and_a_delete_forgets_it(hub):
    body = b'{"schemaVersion":2,"layers":[]}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    media_type = "application/vnd.oci.image.manifest.v1+json"
    put = flow("/v2/acme/app/manifests/1", method="PUT",
               headers=[("Authorization", "Bearer pusher-token"), ("Content-Type", media_type)])
    put.request.content = body
    assert run(hub, put) is None  # relayed, the client's own login untouched
    assert put.request.headers["authorization"] == "Bearer pusher-token"
    put.response = tutils.tresp(status_code=201, headers=[(b"Docker-Content-Digest", digest.encode())], content=b"")
    asyncio.run(hub.response(put))
    store = hub.svc.store
    assert store.tag_records("acme/app", "1")[media_type].digest == digest
    assert store.get_manifest(digest).body == body
    assert store.repositories(digest) == ["C:acme/app"]  # pushed with a login: private until upstream confirms a pull

    delete = flow("/v2/acme/app/manifests/1", method="DELETE", headers=[("Authorization", "Bearer pusher-token")])
    assert run(hub, delete) is None
    delete.response = tutils.tresp(status_code=202, content=b"")
    asyncio.run(hub.response(delete))
    assert store.tag_records("acme/app", "1") == {}


def test_a_push_upstream_refused_changes_nothing(hub):
    body = b'{"schemaVersion":2,"layers":[]}'
    put = flow("/v2/acme/app/manifests/1", method="PUT", headers=[("Authorization", "Bearer x"), ("Content-Type", "t")])
    put.request.content = body
    run(hub, put)
    put.response = tutils.tresp(status_code=401, content=b"")
    asyncio.run(hub.response(put))
    assert hub.svc.store.tag_records("acme/app", "1") == {}


def test_a_write_with_hubcaches_local_token_goes_without_it(hub):
    f = flow("/v2/acme/app/blobs/uploads/", method="POST", headers=[("Authorization", "Bearer hubcache.local")])
    assert run(hub, f) is None
    assert "authorization" not in f.request.headers  # upstream asks the client to log in, as it would direct


def test_a_tag_that_moved_to_another_media_type_is_fetched_once_not_at_every_pull(hub):
    from hubcache import model
    from hubcache.upstream import client

    old = b'{"schemaVersion":2,"mediaType":"oci"}'
    new = b'{"schemaVersion":2,"mediaType":"docker"}'
    old_d, new_d = ("sha256:" + hashlib.sha256(b).hexdigest() for b in (old, new))
    store = hub.svc.store
    store.put_manifest(old_d, model.OCI_MANIFEST, old, "P:library/x")
    store.put_tag("library/x", "1", model.OCI_MANIFEST, old_d, len(old), 0.0)  # long past the TTL
    calls = []

    async def auth(client_auth, scope, registry="docker.io"):
        return "Bearer upstream", "anonymous"

    async def upstream(method, url, headers, kind=""):  # the tag is a Docker manifest now
        calls.append(method)
        h = {"content-type": model.DOCKER_MANIFEST, "docker-content-digest": new_d, "content-length": str(len(new))}
        return client.UpstreamResponse(200, h, new if method == "GET" else b"")

    hub.dockerhub.authorization, hub.dockerhub.request = auth, upstream
    both = [("Accept", model.OCI_MANIFEST), ("Accept", model.DOCKER_MANIFEST)]
    for _ in range(3):
        r = run(hub, flow("/v2/library/x/manifests/1", headers=both))
        assert r.status_code == 200 and r.content == new
    assert calls == ["HEAD", "GET"]  # then hits: the OCI record upstream no longer gives is gone
    assert list(store.tag_records("library/x", "1")) == [model.DOCKER_MANIFEST]


@pytest.mark.parametrize("path, scope", [
    ("/v2/library/x/tags/list?n=10", "repository:library/x:pull"),
    ("/v2/_catalog", "registry:catalog:*"),
    (f"/v2/library/x/referrers/sha256:{'a' * 64}", "repository:library/x:pull"),
])
def test_reads_hubcache_does_not_cache_go_with_a_pool_token_of_their_scope_in_place_of_a_local_one(hub, path, scope):
    from hubcache.upstream import client

    scopes = []

    async def auth(client_auth, asked, registry="docker.io"):
        scopes.append(asked)
        return "Bearer pool-token", "alice"

    async def upstream(method, url, headers, kind=""):
        return client.UpstreamResponse(200, {"content-type": "application/json"}, b'{"tags": []}')

    hub.dockerhub.authorization, hub.dockerhub.request = auth, upstream
    f = flow(path, headers=[("Authorization", "Bearer hubcache.local")])
    asyncio.run(hub.request(f))
    assert scopes == [scope]
    assert f.response is not None or f.request.headers["authorization"] == "Bearer pool-token"


@pytest.fixture
def pooled(hub_ctx, tmp_path, monkeypatch):
    """The hub with a pool of alice and bob, whose token requests are answered here; upstream's
    answers to hubcache's own requests come from `answers` (a function of method and account),
    and every request is kept in `seen` as (method, account)."""
    from hubcache.upstream import client

    hub, tctx = hub_ctx
    creds = tmp_path / "hub.toml"
    creds.write_text('[[accounts]]\nusername = "alice"\ntoken = "a"\n[[accounts]]\nusername = "bob"\ntoken = "b"\n')
    creds.chmod(0o600)
    tctx.configure(hub, hubcache_credentials=str(creds), hubcache_docker_config=str(tmp_path / "none.json"),
                   hubcache_pool_private=["library/*"])  # the pool may fetch these: no anonymous token asked

    async def token_for(scope, credential):
        return f"tok-{credential.account}"

    hub.dockerhub.tokens.token_for = token_for
    seen, answers = [], {}

    async def request(method, url, headers, tls, timeout, *rest, **kw):
        account = dict(headers)["Authorization"].removeprefix("Bearer tok-")
        seen.append((method, account))
        return answers["fn"](method, account)

    monkeypatch.setattr(client, "request", request)
    return hub, seen, answers


TOOMANY = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'


def _manifest_answer(body: bytes, account: str, remaining: int):
    from hubcache import model
    from hubcache.upstream import client

    h = {"content-type": model.OCI_MANIFEST, "docker-content-digest": "sha256:" + hashlib.sha256(body).hexdigest(),
         "x-ratelimit-limit": "100;w=3600", "x-ratelimit-remaining": f"{remaining};w=3600",
         "docker-ratelimit-source": account}
    return client.UpstreamResponse(200, h, body)


def test_a_bare_429_serves_stored_tags_stale_refuses_misses_clearly_and_spends_no_account(pooled):
    from hubcache import model
    from hubcache.upstream import client

    hub, seen, answers = pooled
    old = b'{"schemaVersion":2,"old":1}'
    old_d = "sha256:" + hashlib.sha256(old).hexdigest()
    hub.svc.store.put_manifest(old_d, model.OCI_MANIFEST, old, "P:library/x")
    hub.svc.store.put_tag("library/x", "1", model.OCI_MANIFEST, old_d, len(old), 0.0)  # past the TTL
    answers["fn"] = lambda method, account: _manifest_answer(b'{"schemaVersion":2,"y":1}', account, 50)
    assert run(hub, flow("/v2/library/y/manifests/1")).status_code == 200  # alice: 49 left
    budgets = {a: hub.dockerhub.budgets.left(a, 0) for a in ("alice", "bob")}
    answers["fn"] = lambda method, account: client.UpstreamResponse(429, {}, b"")  # the abuse limit
    r = run(hub, flow("/v2/library/x/manifests/1"))
    assert r.status_code == 200 and r.content == old and "abuse limit" in r.headers["warning"]
    r = run(hub, flow("/v2/library/z/manifests/1"))  # a miss: not asked, the back-off's error
    err = json.loads(r.content)["errors"][0]
    assert r.status_code == 404 and "abuse limit" in err["message"] and "not retried" in err["message"]
    assert seen[1:] == [("HEAD", "bob")]  # one request met the 429; then nothing as anyone
    assert {a: hub.dockerhub.budgets.left(a, 0) for a in ("alice", "bob")} == budgets


def test_a_toomanyrequests_429_spends_one_account_and_the_next_pull_goes_as_another_at_once(pooled):
    from hubcache.upstream import client

    hub, seen, answers = pooled
    body = b'{"schemaVersion":2,"w":1}'
    answers["fn"] = lambda method, account: (client.UpstreamResponse(429, {"content-type": "application/json"}, TOOMANY)
                                             if account == "alice" else _manifest_answer(body, account, 80))
    r = run(hub, flow("/v2/library/w/manifests/1"))  # nothing stored: Hub's answer, as Hub gave it
    assert r.status_code == 429 and json.loads(r.content)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert hub.dockerhub.unavailable("registry-1.docker.io") is None
    r = run(hub, flow("/v2/library/w/manifests/1"))
    assert r.status_code == 200 and r.content == body
    assert seen == [("GET", "alice"), ("GET", "bob")]


def test_requests_are_logged_and_counted_under_their_registrys_name_never_a_host_and_a_wildcard_under_its_entry(
        hub_ctx, caplog):
    import logging

    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_offline=True)  # nothing leaves this test
    from hubcache.decide import challenge

    for registry, realm, service in [("ghcr.io", "https://ghcr.io/token", "ghcr.io"),
                                     ("registry.gitlab.com", "https://gitlab.com/jwt/auth", "container_registry")]:
        hub.svc.dockerhub.others.remember(registry, challenge.parse(f'Bearer realm="{realm}",service="{service}"'))
    caplog.set_level(logging.INFO, logger="hubcache")
    bad = "/v2/Bad_Name/manifests/1"  # answered here with NAME_INVALID, on any registry
    for host, path in [("registry-1.docker.io", bad), ("index.docker.io", bad), ("ghcr.io", bad),
                       ("us-docker.pkg.dev", bad), ("europe-docker.pkg.dev", bad),
                       ("auth.docker.io", "/token?scope=x"), ("ghcr.io", "/v2/"), ("ghcr.io", "/token?scope=x"),
                       ("gitlab.com", "/jwt/auth?scope=x")]:
        run(hub, flow(path, host=host))
    logged = [r.fields["registry"] for r in caplog.records if getattr(r, "event", None) == "request"]
    assert logged == ["docker.io", "docker.io", "ghcr.io", "us-docker.pkg.dev", "europe-docker.pkg.dev",
                      "docker.io", "ghcr.io", "ghcr.io", "gitlab.com"]  # a realm's own host names no registry
    counted = {tuple(s.labels[k] for k in ("kind", "outcome", "registry")): s.value
               for m in hub.svc.metrics.registry.collect() if m.name == "hubcache_requests"
               for s in m.samples if s.name == "hubcache_requests_total"}
    assert counted == {("invalid", "rejected", "docker.io"): 2, ("invalid", "rejected", "ghcr.io"): 1,
                       ("invalid", "rejected", "*-docker.pkg.dev"): 2, ("token", "hit", "docker.io"): 1,
                       ("root", "hit", "ghcr.io"): 1, ("token", "hit", "ghcr.io"): 1, ("token", "hit", "gitlab.com"): 1}


def test_private_content_of_a_registry_on_its_own_port_is_confirmed_at_that_registry_under_its_own_name(hub_ctx):
    """A private image of registry.corp.example:5000, stored after one client's own login: another
    login's pull is confirmed with a HEAD at https://registry.corp.example:5000/v2/team/app/...,
    the registry's own URL (not port 443, not the qualified name the store keeps it under)."""
    from hubcache import model
    from hubcache.upstream import client

    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_registries=["+registry.corp.example:5000"])
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    calls = []

    async def auth(client_auth, scope, registry="docker.io"):
        return client_auth, ""  # the client's own login, sent on as it is

    async def upstream(method, url, headers, kind=""):
        calls.append((method, url))
        h = {"content-type": model.OCI_MANIFEST, "docker-content-digest": digest, "content-length": str(len(body))}
        return client.UpstreamResponse(200, h, body if method == "GET" else b"")

    hub.dockerhub.authorization, hub.dockerhub.request = auth, upstream

    def corp(path: str, login: str):
        f = flow(path, host="registry.corp.example", headers=[("Authorization", f"Basic {login}")])
        f.request.port = 5000
        return f

    first = run(hub, corp("/v2/team/app/manifests/1", "YWxpY2U6cHc="))
    assert first.status_code == 200 and first.content == body
    calls.clear()
    second = run(hub, corp(f"/v2/team/app/manifests/{digest}", "Ym9iOnB3"))
    assert second.status_code == 200 and second.content == body
    assert calls == [("HEAD", f"https://registry.corp.example:5000/v2/team/app/manifests/{digest}")]


def test_private_content_another_registry_refuses_is_answered_with_that_registrys_challenge(hub_ctx):
    """The registry says no to this login: the client's 401 names that registry's own challenge
    (Basic here), never Docker Hub's realm, where the client would send the registry's login."""
    from hubcache import model
    from hubcache.decide import challenge
    from hubcache.upstream import client

    hub, tctx = hub_ctx
    tctx.configure(hub, hubcache_registries=["+registry.corp.example:5000"])
    hub.dockerhub.others.remember("registry.corp.example:5000", challenge.parse('Basic realm="corp registry"'))
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()

    async def auth(client_auth, scope, registry="docker.io"):
        return client_auth, ""

    async def upstream(method, url, headers, kind=""):
        if method == "HEAD":
            return client.UpstreamResponse(401, {"www-authenticate": 'Basic realm="corp registry"'}, b"")
        h = {"content-type": model.OCI_MANIFEST, "docker-content-digest": digest, "content-length": str(len(body))}
        return client.UpstreamResponse(200, h, body)

    hub.dockerhub.authorization, hub.dockerhub.request = auth, upstream

    def corp(path: str, login: str):
        f = flow(path, host="registry.corp.example", headers=[("Authorization", f"Basic {login}")])
        f.request.port = 5000
        return f

    assert run(hub, corp("/v2/team/app/manifests/1", "YWxpY2U6cHc=")).status_code == 200
    refused = run(hub, corp(f"/v2/team/app/manifests/{digest}", "bWFsbG9yeTp4"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="corp registry"'
