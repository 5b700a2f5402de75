from hubcache.decide.freshness import Decision, decide
from hubcache.model import TagRecord

R = TagRecord("library/x", "1", "t", "sha256:" + "a" * 64, 10, fetched=100.0, confirmed=1000.0)


def test_fresh_is_a_hit():
    assert decide(R, True, now=1000.0 + 299, ttl=300) is Decision.HIT


def test_stale_is_revalidated():
    assert decide(R, True, now=1000.0 + 300, ttl=300) is Decision.REVALIDATE


def test_nothing_cached_is_fetched():
    assert decide(None, False, now=0, ttl=300) is Decision.FETCH
    assert decide(R, False, now=1000.0, ttl=300) is Decision.FETCH


def test_ttl_zero_always_revalidates():
    assert decide(R, True, now=1000.0, ttl=0) is Decision.REVALIDATE


def test_health_backs_off_then_retries():
    from hubcache.decide.health import Health

    h = Health(backoff=30)
    assert h.down("r", now=0) is None
    h.failed("r", "connection refused", now=100)
    assert "connection refused" in h.down("r", now=110)
    assert h.down("r", now=130) is None  # back-off over: ask again
    h.failed("r", "timeout", now=200)
    h.succeeded("r", now=201)
    assert h.down("r", now=202) is None
    assert h.recently_ok("r", now=230, within=60) and not h.recently_ok("r", now=300, within=60)


def test_visibility_of_cached_content():
    from hubcache.decide.access import seen_as, visibility

    pub, priv = seen_as("library/x", False), seen_as("acme/secret", True)
    assert visibility([pub], "library/x") == "public"
    assert visibility([pub], "other/name") == "foreign"  # only under a repository it belongs to, as the registry answers
    assert visibility([priv], "acme/secret") == "private"
    assert visibility([priv], "library/x") == "foreign"  # never under another repository's name
    assert visibility([priv, seen_as("library/base", False)], "acme/other") == "foreign"
    assert visibility(["library/x"], "library/x") == "public"  # an entry written before the prefixes
    assert visibility([], "library/x") == "foreign"


def test_the_pool_fetches_public_content_and_only_the_private_content_it_was_told_to():
    from hubcache.decide.access import pool_may_fetch, scope_repository

    assert pool_may_fetch("library/postgres", True, ())
    assert not pool_may_fetch("myorg/app", False, ())  # default: a pool login's private reach stays private
    assert pool_may_fetch("myorg/app", False, ("myorg/*",))
    assert pool_may_fetch("myorg/team/app", False, ("myorg/*",))
    assert not pool_may_fetch("myorgx/app", False, ("myorg/*",))
    assert not pool_may_fetch("otherorg/web", False, ("otherorg/app",))
    assert scope_repository("repository:myorg/app:pull") == "myorg/app"
    assert scope_repository("registry:catalog:*") == ""
