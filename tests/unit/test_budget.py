import json
import math

import pytest

from hubcache.decide.budget import UNKNOWN_WINDOW, Budgets, parse_ratelimit, pull_limited, read_limits

DOCUMENTED = "ratelimit-"
X_2026 = "x-ratelimit-"
TOOMANY = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "You have reached your pull rate limit."}]}).encode()


def limits(prefix: str, limit: int, remaining: int, window: int, source: str = "") -> dict[str, str]:
    h = {f"{prefix}limit": f"{limit};w={window}", f"{prefix}remaining": f"{remaining};w={window}"}
    return h | ({"docker-ratelimit-source": source} if source else {})


def test_parse_ratelimit():
    assert parse_ratelimit("100;w=21600") == (100, 21600)
    assert parse_ratelimit(" 76 ; w=60") == (76, 60)
    assert parse_ratelimit("5") == (5, None)  # no window named: none assumed
    assert parse_ratelimit("") is None and parse_ratelimit("x") is None


def test_both_header_families_are_read_with_their_own_window():
    assert read_limits(limits(DOCUMENTED, 100, 76, 21600)) == (100, 76, 21600)
    assert read_limits(limits(X_2026, 100, 0, 3600)) == (100, 0, 3600)
    assert read_limits({"x-ratelimit-remaining": "7;w=3600"}) == (None, 7, 3600)
    assert read_limits({"ratelimit-limit": "100;w=60", "ratelimit-remaining": "9"}) == (100, 9, 60)
    assert read_limits({"docker-ratelimit-source": "1.2.3.4"}) is None
    assert read_limits({}) is None


@pytest.mark.parametrize("prefix", [DOCUMENTED, X_2026])
def test_choose_spreads_by_budget_left(prefix):
    b = Budgets()
    b.observe("alice", limits(prefix, 200, 150, 21600), now=0)
    b.observe("bob", limits(prefix, 200, 180, 21600), now=0)
    assert b.choose(["alice", "bob"], now=1) == "bob"
    for _ in range(31):
        b.spend("bob")
    assert b.choose(["alice", "bob"], now=1) == "alice"
    assert b.shown("alice", now=1) == 150 and b.shown("bob", now=1) == 149
    assert b.choose(["alice", "bob", "carol"], now=1) == "carol"  # not seen yet: plenty, as far as we know


@pytest.mark.parametrize(("prefix", "window"), [(DOCUMENTED, 21600), (X_2026, 3600)])
def test_429_spends_an_account_until_the_window_hub_named(prefix, window):
    b = Budgets()
    b.observe("alice", limits(prefix, 200, 3, window), now=0)
    b.exhausted("alice", now=10)
    assert b.left("alice", now=10 + window - 1) == 0 and b.choose(["alice", "bob"], now=50) == "bob"
    assert b.left("alice", now=10 + window) == math.inf  # window over


def test_a_window_never_named_is_not_assumed_to_be_six_hours():
    b = Budgets()
    b.exhausted("alice", now=0)  # a 429 before any header told the window
    assert b.left("alice", now=UNKNOWN_WINDOW - 1) == 0
    assert b.left("alice", now=UNKNOWN_WINDOW) == math.inf  # tried again: costs a 429 at most, not a pull


def test_fresh_headers_with_pulls_left_end_a_spent_account_early():
    b = Budgets()
    b.observe("alice", limits(X_2026, 100, 0, 3600), now=0)
    b.exhausted("alice", now=0)
    b.observe("alice", limits(X_2026, 100, 0, 3600), now=5)  # a HEAD: still none left
    assert b.left("alice", now=6) == 0
    b.observe("alice", limits(X_2026, 100, 40, 3600), now=60)  # Hub's window moved on
    assert b.left("alice", now=61) == 40


def test_reserve():
    b = Budgets()
    b.observe("a", limits(DOCUMENTED, 100, 4, 60), now=0)
    b.observe("b", limits(X_2026, 100, 9, 60), now=0)
    assert not b.all_below(["a", "b"], reserve=5, now=1)
    for _ in range(5):
        b.spend("b")
    assert b.all_below(["a", "b"], reserve=5, now=1)


def test_every_account_spent_counts_as_below_even_without_a_reserve():
    b = Budgets()
    b.observe("a", limits(DOCUMENTED, 100, 1, 60), now=0)
    b.observe("b", limits(DOCUMENTED, 100, 5, 60), now=0)
    b.exhausted("b", now=0)
    assert not b.all_below(["a", "b"], reserve=0, now=1)
    b.exhausted("a", now=0)
    assert b.all_below(["a", "b"], reserve=0, now=1)
    assert not b.all_below(["a", "b"], reserve=0, now=60)  # the window is over


def test_a_source_without_limit_headers_is_an_unlimited_account_and_preferred():
    b = Budgets()
    b.observe("alice", limits(DOCUMENTED, 200, 200, 21600, source="alice"), now=0)
    b.observe("pro", {"docker-ratelimit-source": "5c1a0e52-uuid"}, now=0)
    b.spend("pro")
    assert b.left("pro", now=1) == math.inf and b.shown("pro", now=1) == math.inf
    # preferred over an account with budget, and over one not seen yet, wherever it is listed
    assert b.choose(["alice", "pro"], now=1) == "pro"
    assert b.choose(["carol", "alice", "pro"], now=1) == "pro"
    assert b.shown("carol", now=1) is None  # not known: not shown as unlimited


def test_no_headers_at_all_tell_nothing():
    b = Budgets()
    b.observe("alice", limits(DOCUMENTED, 200, 7, 21600), now=0)
    b.observe("alice", {}, now=1)  # e.g. an answer from a host that sends none
    assert b.left("alice", now=2) == 7 and b.shown("alice", now=2) == 7
    b.observe("new", {}, now=1)
    assert b.shown("new", now=2) is None


def test_an_unlimited_account_that_gets_a_pull_limit_is_avoided_until_its_window_ends():
    b = Budgets()
    b.observe("pro", {"docker-ratelimit-source": "uuid"}, now=0)
    b.exhausted("pro", now=0)
    assert b.choose(["pro", "alice"], now=1) == "alice"


def test_only_a_toomanyrequests_body_is_an_accounts_pull_limit():
    assert pull_limited(429, TOOMANY)
    assert pull_limited(429, b' {"errors":[{"code":"DENIED"},{"code":"TOOMANYREQUESTS"}]}')
    assert not pull_limited(429, b"")  # bare: the abuse limit
    assert not pull_limited(429, None)  # not read (a HEAD, a streamed body)
    assert not pull_limited(429, b"Too Many Requests")
    assert not pull_limited(429, b'{"errors":[{"code":"DENIED"}]}')
    assert not pull_limited(429, b'{"errors":"TOOMANYREQUESTS"}')
    assert not pull_limited(429, b"[1]")
    assert not pull_limited(200, TOOMANY)


# -- DockerHub: which 429 is whose, and what the metrics show ----------------------------------

REGISTRY = "registry-1.docker.io"


@pytest.fixture
def dh(tmp_path):
    from hubcache.metrics import Metrics
    from hubcache.settings import Settings
    from hubcache.upstream.dockerhub import DockerHub

    creds = tmp_path / "hub.toml"
    creds.write_text("".join(f'[[accounts]]\nusername = "{u}"\ntoken = "{u}-token"\n' for u in ("alice", "bob", "pro")))
    creds.chmod(0o600)
    hub = DockerHub(Metrics())
    hub.configure(Settings(credentials=str(creds), docker_config=str(tmp_path / "none.json")), ["hubcache_credentials"])
    return hub


def gauge(dh, account: str) -> float | None:
    return dh.metrics.registry.get_sample_value("hubcache_pull_budget_remaining", {"account": account})


@pytest.mark.parametrize("prefix", [DOCUMENTED, X_2026])
def test_the_budget_gauge_and_the_pool_follow_either_header_family(dh, prefix):
    dh.observe_budget("alice", "GET", 200, limits(prefix, 100, 12, 3600, source="alice"))
    dh.observe_budget("bob", "HEAD", 200, limits(prefix, 100, 40, 3600, source="bob"))
    assert gauge(dh, "alice") == 12 and gauge(dh, "bob") == 40  # Hub's count already has alice's GET in it
    assert dh.budgets.choose(["alice", "bob"], now=0) == "bob"
    dh.observe_budget("bob", "GET", 200, {})  # a pull whose answer told nothing: counted here
    assert gauge(dh, "bob") == 39


def test_an_unlimited_account_is_plus_inf_in_the_metrics_and_unknown_is_minus_one(dh):
    dh.observe_budget("pro", "GET", 200, {"docker-ratelimit-source": "3f1c-uuid"})
    dh.observe_budget("alice", "GET", 404, {})  # nothing told about alice
    assert gauge(dh, "pro") == math.inf and gauge(dh, "alice") == -1
    dh.observe_budget("alice", "GET", 200, limits(DOCUMENTED, 200, 150, 21600))
    assert dh.budgets.choose(dh.account_names(), now=0) == "pro"


def test_a_bare_429_backs_off_the_host_for_every_account_and_spends_none(dh):
    dh.observe_budget("alice", "GET", 200, limits(X_2026, 100, 50, 3600))
    dh.observe_budget("bob", "GET", 200, limits(X_2026, 100, 30, 3600))
    before = {a: (gauge(dh, a), dh.budgets.left(a, 0)) for a in ("alice", "bob")}
    dh.result(REGISTRY, 429, body=b"")  # as request() sees it
    dh.observe_budget("alice", "GET", 429, {}, b"")
    assert "abuse limit" in (dh.unavailable(REGISTRY) or "")
    assert "abuse limit" in (dh.unavailable("index.docker.io") or "")  # every alias of the registry
    assert {a: (gauge(dh, a), dh.budgets.left(a, 0)) for a in ("alice", "bob")} == before
    assert not dh.budget_low()


@pytest.mark.parametrize("body", [None, b"", b"<html>Too Many Requests</html>"])
def test_a_429_without_the_oci_error_on_any_host_is_the_abuse_limit(dh, body):
    dh.result("auth.docker.io", 429, body=body)  # a token fetch
    dh.result("production.cloudflare.docker.com", 429)  # a blob hop: its body is never read
    assert dh.unavailable("auth.docker.io") and dh.unavailable("production.cloudflare.docker.com")


def test_a_toomanyrequests_429_spends_that_account_only_and_the_host_stays_up(dh):
    dh.observe_budget("alice", "GET", 200, limits(DOCUMENTED, 200, 150, 21600))
    dh.observe_budget("bob", "GET", 200, limits(DOCUMENTED, 200, 100, 21600))
    dh.observe_budget("pro", "GET", 200, limits(DOCUMENTED, 200, 10, 21600))
    dh.result(REGISTRY, 429, body=TOOMANY)
    dh.observe_budget("alice", "GET", 429, limits(DOCUMENTED, 200, 0, 21600), TOOMANY)
    assert dh.unavailable(REGISTRY) is None  # the next pull goes at once
    assert gauge(dh, "alice") == 0 and dh.budgets.choose(dh.account_names(), now=0) == "bob"
    assert gauge(dh, "bob") == 100
