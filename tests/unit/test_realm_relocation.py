"""A registry whose token realm is on another host (registry.gitlab.com's at gitlab.com): clients
are given the realm on the registry's own host, since hubcache's CA may not vouch for gitlab.com;
hubcache answers anonymous token requests there and passes a client's own login on to the realm
the registry named, and to no other host."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.test import tflow, tutils

from hubcache.decide import challenge
from hubcache.upstream import client

GITLAB = 'Bearer realm="https://gitlab.com/jwt/auth",service="container_registry"'
MOVED = "https://registry.gitlab.com/hubcache-realm/gitlab.com/jwt/auth"




def flow(path: str, host: str, headers=()):
    return tflow.tflow(req=tutils.treq(method=b"GET", scheme=b"https", host=host, port=443, path=path.encode(),
                                       headers=[(k.encode(), v.encode()) for k, v in headers]))


def run(hub, f):
    asyncio.run(hub.request(f))
    return f.response


def test_a_realm_on_another_host_is_moved_onto_the_registrys_host_and_one_on_its_own_host_is_not():
    seen = challenge.parse(GITLAB)
    assert seen is not None
    assert challenge.relocated(seen, "registry.gitlab.com").realm == MOVED
    assert challenge.relocated(seen, "registry.gitlab.com").service == "container_registry"
    assert challenge.relocated(seen, "registry.corp.example:5000").realm == \
        "https://registry.corp.example:5000/hubcache-realm/gitlab.com/jwt/auth"
    own = challenge.parse('Bearer realm="https://ghcr.io/token",service="ghcr.io"')
    assert own is not None and challenge.relocated(own, "ghcr.io") == own
    basic = challenge.parse('Basic realm="corp registry"')
    assert basic is not None and challenge.relocated(basic, "registry.corp.example:5000") == basic


def test_clients_get_the_moved_realm_and_a_login_sent_there_goes_to_the_realm_the_registry_named(hub_ctx,
                                                                                                monkeypatch):
    hub, _ = hub_ctx
    hub.svc.dockerhub.others.remember("registry.gitlab.com", challenge.parse(GITLAB))
    f = flow("/v2/", host="registry.gitlab.com")
    r = run(hub, f)
    assert r.status_code == 401 and r.headers["www-authenticate"] == f'Bearer realm="{MOVED}",service="container_registry"'
    hub.responseheaders(f)  # mitmproxy calls it for an answer made here too: not a challenge upstream gave
    assert hub.svc.dockerhub.others.known("registry.gitlab.com").realm == "https://gitlab.com/jwt/auth"

    anonymous = run(hub, flow("/hubcache-realm/gitlab.com/jwt/auth?service=container_registry&scope=x",
                              host="registry.gitlab.com"))
    assert anonymous.status_code == 200 and json.loads(anonymous.content)["token"].startswith("hubcache.")

    asked: list[str] = []

    async def request(method, url, headers, kind=""):
        asked.append(url)
        return client.UpstreamResponse(200, {"content-type": "application/json"}, b'{"token":"gl"}')

    monkeypatch.setattr(hub.svc.dockerhub, "request", request)
    own = run(hub, flow("/hubcache-realm/gitlab.com/jwt/auth?service=container_registry&scope=x",
                        host="registry.gitlab.com", headers=[("Authorization", "Basic dTpw")]))
    assert own.status_code == 200 and own.content == b'{"token":"gl"}'
    assert asked == ["https://gitlab.com/jwt/auth?service=container_registry&scope=x"]
    # a realm no registry named is no token route: relayed to the registry, never fetched by hubcache
    forged = flow("/hubcache-realm/internal.example/secret", host="registry.gitlab.com",
                  headers=[("Authorization", "Basic dTpw")])
    assert run(hub, forged) is None and asked == ["https://gitlab.com/jwt/auth?service=container_registry&scope=x"]


def test_a_relayed_401_is_remembered_as_the_registry_gave_it_and_shown_to_the_client_moved(hub_ctx):
    hub, _ = hub_ctx
    f = flow("/v2/_catalog", host="registry.gitlab.com", headers=[("Authorization", "Bearer theirs")])
    asyncio.run(hub.request(f))
    assert f.response is None  # relayed
    f.response = tutils.tresp(status_code=401, headers=[(b"Www-Authenticate",
                                                          (GITLAB + ',scope="repository:team/app:pull"').encode())])
    hub.responseheaders(f)
    assert f.response.headers["www-authenticate"] == \
        f'Bearer realm="{MOVED}",service="container_registry",scope="repository:team/app:pull"'
    assert hub.svc.dockerhub.others.known("registry.gitlab.com").realm == "https://gitlab.com/jwt/auth"
