import math

from hubcache.decide.budget import Budgets, parse_ratelimit


def test_parse_ratelimit():
    assert parse_ratelimit("100;w=21600") == (100, 21600)
    assert parse_ratelimit(" 76 ; w=60") == (76, 60)
    assert parse_ratelimit("5") == (5, 21600)
    assert parse_ratelimit("") is None and parse_ratelimit("x") is None


def test_choose_spreads_by_budget_left():
    b = Budgets()
    b.observe("alice", {"ratelimit-limit": "200;w=21600", "ratelimit-remaining": "150;w=21600"}, now=0)
    b.observe("bob", {"ratelimit-limit": "200;w=21600", "ratelimit-remaining": "180;w=21600"}, now=0)
    assert b.choose(["alice", "bob"], now=1) == "bob"
    for _ in range(31):
        b.spend("bob")
    assert b.choose(["alice", "bob"], now=1) == "alice"
    assert b.choose(["alice", "bob", "carol"], now=1) == "carol"  # not seen yet: plenty, as far as we know


def test_429_spends_an_account_until_its_window_ends():
    b = Budgets()
    b.observe("alice", {"ratelimit-limit": "200;w=100", "ratelimit-remaining": "3;w=100"}, now=0)
    b.exhausted("alice", now=10)
    assert b.left("alice", now=50) == 0 and b.choose(["alice", "bob"], now=50) == "bob"
    assert b.left("alice", now=111) == math.inf  # window over


def test_reserve():
    b = Budgets()
    b.observe("a", {"ratelimit-limit": "100;w=60", "ratelimit-remaining": "4;w=60"}, now=0)
    b.observe("b", {"ratelimit-limit": "100;w=60", "ratelimit-remaining": "9;w=60"}, now=0)
    assert not b.all_below(["a", "b"], reserve=5, now=1)
    for _ in range(5):
        b.spend("b")
    assert b.all_below(["a", "b"], reserve=5, now=1)


def test_unlimited_account_has_no_headers():
    b = Budgets()
    b.observe("pro", {}, now=0)
    b.spend("pro")
    assert b.left("pro", now=1) == math.inf
