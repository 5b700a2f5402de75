"""A parent registry (issue 13): its options, and what is asked of it (docs/fleet.md)."""

from hubcache.decide.parent import ParentPlan, health_key
from hubcache.model import Kind, Route

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
