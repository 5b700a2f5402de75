"""A parent registry (issue 13): its options, what is asked of it, and its own login (docs/design.md, "A parent registry")."""

import asyncio
import os
from pathlib import Path

import pytest

from hubcache import registries
from hubcache.decide.parent import ParentPlan, health_key
from hubcache.metrics import Metrics
from hubcache.model import Kind, Route
from hubcache.settings import Settings
from hubcache.upstream.client import UpstreamResponse
from hubcache.upstream.credentials import CredentialsError
from hubcache.upstream.parent import Parent

D = "sha256:" + "c" * 64


def test_only_content_by_digest_goes_to_the_parent_and_never_with_a_clients_own_login():
    plan = ParentPlan({"docker.io": "https://mirror.internal"})
    blob = Route(Kind.BLOB, "library/postgres", D)
    by_digest = Route(Kind.MANIFEST, "library/postgres", D)
    by_tag = Route(Kind.MANIFEST, "library/postgres", "12.2")
    assert plan.asks_parent(blob, "GET", own_login=False) and plan.asks_parent(by_digest, "HEAD", own_login=False)
    assert not plan.asks_parent(by_tag, "GET", own_login=False)  # tags: a free HEAD at the registry
    assert not plan.asks_parent(blob, "GET", own_login=True)  # private content never reaches the parent
    assert not plan.asks_parent(Route(Kind.TAGS, "library/postgres"), "GET", own_login=False)
    assert not plan.asks_parent(Route(Kind.MANIFEST_WRITE, "library/postgres", "1"), "PUT", own_login=False)
    ghcr = Route(Kind.BLOB, "ghcr.io/org/app", D, registry="ghcr.io", name="org/app")
    assert not plan.asks_parent(ghcr, "GET", own_login=False)  # no parent for that registry
    assert ParentPlan({"docker.io": "https://m"}, tags="parent").asks_parent(by_tag, "GET", own_login=False)


def test_the_parents_url_keeps_the_registrys_name_and_its_prefix():
    plan = ParentPlan({"docker.io": "https://mirror.internal:5000", "ghcr.io": "https://gh.internal"})
    assert plan.url(Route(Kind.BLOB, "library/postgres", D)) == f"https://mirror.internal:5000/v2/library/postgres/blobs/{D}"
    assert plan.url(Route(Kind.MANIFEST, "library/postgres", "12.2"), D) == \
        f"https://mirror.internal:5000/v2/library/postgres/manifests/{D}"  # the tag resolved at the registry
    ghcr = Route(Kind.MANIFEST, "ghcr.io/org/app", D, registry="ghcr.io", name="org/app")
    assert plan.url(ghcr) == f"https://gh.internal/v2/org/app/manifests/{D}"
    harbor = ParentPlan({"docker.io": "https://harbor.internal"}, prefix="dockerhub-proxy")
    assert harbor.url(Route(Kind.BLOB, "library/alpine", D)) == f"https://harbor.internal/v2/dockerhub-proxy/library/alpine/blobs/{D}"
    assert health_key("docker.io") == "parent:docker.io" and plan.falls_back()
    assert not ParentPlan({}, fallback="never").falls_back()


# -- upstream.parent.Parent: its options checked at start, and its own login --------------------------



def login_file(tmp_path: Path, mode: int = 0o600) -> str:
    path = tmp_path / "parent-login"
    path.write_text("fleet:s3cret\n")
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("settings, says", [
    (dict(parent=(("quay.io", "https://q.internal"),)), "quay.io is not a registry hubcache serves"),
    (dict(parent=(("docker.io", "http://m.internal"),), parent_credentials="LOGIN"), "in clear"),
    (dict(parent=(("docker.io", "https://m.internal"),), parent_ca="/nonexistent/ca.pem"), "hubcache_parent_ca: cannot read"),
    (dict(parent=(("docker.io", "https://m.internal"),), parent_credentials="LOOSE"), "chmod 600"),
])
def test_a_parent_option_that_cannot_work_is_refused_at_start(tmp_path, settings, says):
    creds = settings.get("parent_credentials")
    if creds:
        settings["parent_credentials"] = login_file(tmp_path, 0o644 if creds == "LOOSE" else 0o600)
    s = Settings(registries=registries.parse(["-quay.io"]), **settings)
    with pytest.raises(CredentialsError) as e:
        Parent(Metrics()).configure(s)
    assert says in str(e.value)
    assert "s3cret" not in str(e.value)


def scripted(parent: Parent, answers: dict[str, UpstreamResponse], asked: list[tuple[str, list]]) -> None:
    async def request(method, url, headers):
        asked.append((url, headers))
        return next(a for prefix, a in answers.items() if url.startswith(prefix))
    parent._request = request  # type: ignore[method-assign]


def test_the_parents_login_is_basic_or_a_token_of_its_realm_as_its_challenge_asks(tmp_path):
    blob = Route(Kind.BLOB, "library/postgres", D)
    basic = Parent(Metrics())
    basic.configure(Settings(parent=(("docker.io", "https://m.internal"),), parent_credentials=login_file(tmp_path)))
    asked: list = []
    scripted(basic, {"https://m.internal/v2/": UpstreamResponse(401, {"www-authenticate": 'Basic realm="parent"'}, b"")}, asked)
    assert asyncio.run(basic.headers(blob))[0][1].startswith("Basic ")
    asyncio.run(basic.headers(blob))
    assert len(asked) == 1  # the challenge is learned once
    bearer = Parent(Metrics())
    bearer.configure(Settings(parent=(("docker.io", "https://m.internal"),), parent_credentials=login_file(tmp_path),
                              parent_prefix="hub-proxy"))
    asked = []
    scripted(bearer, {
        "https://m.internal/v2/": UpstreamResponse(401, {"www-authenticate": 'Bearer realm="https://auth.internal/token",service="m"'}, b""),
        "https://auth.internal/token": UpstreamResponse(200, {}, b'{"token": "t0k", "expires_in": 300}'),
    }, asked)
    assert asyncio.run(bearer.headers(blob)) == [("Authorization", "Bearer t0k")]
    token_url, token_headers = asked[1]
    assert "scope=repository%3Ahub-proxy%2Flibrary%2Fpostgres%3Apull" in token_url  # the parent's name, prefix included
    assert token_headers[0][1].startswith("Basic ")  # the login goes to the parent's realm only
    nologin = Parent(Metrics())
    nologin.configure(Settings(parent=(("docker.io", "https://m.internal"),)))
    asked = []
    scripted(nologin, {}, asked)
    assert asyncio.run(nologin.headers(blob)) == [] and asked == []  # no login: nothing to learn


def test_a_failing_parent_backs_off_under_its_own_key_not_its_registrys():
    parent = Parent(Metrics())
    parent.configure(Settings(parent=(("docker.io", "https://m.internal"),), backoff=30))
    route = Route(Kind.BLOB, "library/postgres", D)
    assert parent.unavailable("docker.io") is None
    parent.failed(route, "blob", "answered 500")
    assert "parent https://m.internal unavailable: answered 500" in (parent.unavailable("docker.io") or "")
    assert parent.health.down(health_key("docker.io"), 0) is not None


def test_repositories_the_pool_may_read_privately_are_never_asked_of_the_parent():
    parent = Parent(Metrics())
    parent.configure(Settings(parent=(("docker.io", "https://m.internal"),), pool_private=("myorg/*",)))
    assert not parent.asks(Route(Kind.BLOB, "myorg/app", D), own_login=False)
    assert not parent.asks(Route(Kind.MANIFEST, "myorg/app", "1"), own_login=False, tag=True)
    assert parent.asks(Route(Kind.BLOB, "library/postgres", D), own_login=False)
    assert parent.asks(Route(Kind.MANIFEST, "library/postgres", "12.2"), own_login=False, tag=True)
    assert not parent.asks(Route(Kind.MANIFEST, "library/postgres", "12.2"), own_login=False)  # tags: by way of a HEAD
    assert not parent.asks(Route(Kind.BLOB, "library/postgres", D), own_login=True)
