"""The per-client metrics' label set (decide/clients.py): at most `limit` names, logins kept
before addresses, idle names giving their place, the rest under `other`; and the series of a
dropped name leaving the metrics page (hooks/flowstate.Clients, metrics.Metrics)."""

from __future__ import annotations

from hubcache.decide.clients import OTHER, ClientLabels, address_name


def names(labels: ClientLabels, clients, now: float = 0.0):
    """The label of each (login, address), in order."""
    return [labels.label(login, address, now)[0] for login, address in clients]


def test_a_login_names_its_client_else_the_address_without_its_port():
    c = ClientLabels(10)
    assert c.label("runner7", "10.0.0.7", 0) == ("runner7", None)
    assert c.label("", "10.0.0.8", 0) == ("10.0.0.8", None)
    assert c.label("", "::ffff:10.0.0.9", 0) == ("10.0.0.9", None)  # a dual-stack listener's IPv4 client
    assert c.label("", "2001:db8::1", 0) == ("2001:db8::1", None)
    assert c.kept == {"runner7", "10.0.0.8", "10.0.0.9", "2001:db8::1"}


def test_address_names_are_normalised_and_anything_else_kept_as_it_is():
    assert address_name("::FFFF:127.0.0.1") == "127.0.0.1"
    assert address_name("2001:DB8::1") == "2001:db8::1"
    assert address_name("fe80::1%eth0") == "fe80::1"
    assert address_name("unix-socket") == "unix-socket"


def test_limit_zero_names_nobody():
    c = ClientLabels(0)
    assert c.label("runner7", "10.0.0.7", 0) == ("", None)
    assert c.label("", "10.0.0.7", 0) == ("", None)
    assert c.kept == set()


def test_no_login_and_no_address_names_nobody():
    assert ClientLabels(5).label("", "", 0) == ("", None)


def test_past_the_limit_newcomers_count_under_other_and_the_kept_stay_kept():
    c = ClientLabels(2)
    clients = [("", "10.0.0.1"), ("", "10.0.0.2"), ("", "10.0.0.3"), ("", "10.0.0.1"), ("", "10.0.0.4")]
    assert names(c, clients, now=10) == ["10.0.0.1", "10.0.0.2", OTHER, "10.0.0.1", OTHER]
    assert c.kept == {"10.0.0.1", "10.0.0.2"}


def test_a_thousand_addresses_never_make_more_than_limit_names_plus_other():
    c = ClientLabels(100)
    seen = set(names(c, [("", f"10.{i >> 8}.{i & 255}.1") for i in range(1000)], now=5))
    assert len(seen) == 101 and OTHER in seen and len(c.kept) == 100


def test_a_login_takes_the_place_of_the_address_seen_longest_ago():
    c = ClientLabels(2)
    c.label("", "10.0.0.1", 1)
    c.label("", "10.0.0.2", 2)
    c.label("", "10.0.0.1", 3)  # seen again: 10.0.0.2 is now the one seen longest ago
    assert c.label("runner-a", "10.0.0.9", 4) == ("runner-a", "10.0.0.2")
    assert c.label("runner-b", "10.0.0.9", 5) == ("runner-b", "10.0.0.1")
    assert c.kept == {"runner-a", "runner-b"}
    # the dropped addresses are now newcomers, and an address never displaces a login
    assert names(c, [("", "10.0.0.1"), ("", "10.0.0.2")], now=6) == [OTHER, OTHER]


def test_a_login_does_not_displace_an_active_login():
    c = ClientLabels(1)
    assert c.label("runner-a", "10.0.0.1", 0) == ("runner-a", None)
    assert c.label("runner-b", "10.0.0.2", 10) == (OTHER, None)
    assert c.kept == {"runner-a"}


def test_an_idle_name_gives_its_place_to_a_newcomer_of_its_kind():
    c = ClientLabels(1, idle=100)
    c.label("", "10.0.0.1", 0)
    assert c.label("", "10.0.0.2", 99) == (OTHER, None)  # not idle long enough yet
    assert c.label("", "10.0.0.2", 100) == ("10.0.0.2", "10.0.0.1")  # a VM gone, the next one counted
    c = ClientLabels(1, idle=100)
    c.label("runner-a", "10.0.0.1", 0)
    assert c.label("runner-b", "10.0.0.2", 50) == (OTHER, None)
    assert c.label("runner-b", "10.0.0.2", 100) == ("runner-b", "runner-a")


def test_an_address_never_displaces_a_login_however_idle():
    c = ClientLabels(1, idle=100)
    c.label("runner-a", "10.0.0.1", 0)
    assert c.label("", "10.0.0.2", 10_000) == (OTHER, None)
    assert c.kept == {"runner-a"}


def test_being_seen_keeps_a_name_from_going_idle():
    c = ClientLabels(1, idle=100)
    for t in range(0, 1000, 50):
        assert c.label("", "10.0.0.1", t) == ("10.0.0.1", None)
    assert c.label("", "10.0.0.2", 1000) == (OTHER, None)


def test_a_login_named_like_a_kept_address_is_kept_as_a_login():
    c = ClientLabels(2)
    c.label("", "10.0.0.1", 0)
    assert c.label("10.0.0.1", "10.0.0.5", 1) == ("10.0.0.1", None)
    assert c.label("runner-a", "10.0.0.6", 2) == ("runner-a", None)
    assert c.label("runner-b", "10.0.0.7", 3) == (OTHER, None)  # no address left to displace


def test_a_login_called_other_counts_under_other_and_takes_no_place():
    c = ClientLabels(1)
    assert c.label(OTHER, "10.0.0.1", 0) == (OTHER, None)
    assert c.kept == set()
    assert c.label("runner-a", "10.0.0.2", 0) == ("runner-a", None)


# -- the series on the metrics page ------------------------------------------------------------


def samples(metrics, name: str) -> dict[tuple[str, str], float]:
    return {tuple(s.labels.values()): s.value for m in metrics.registry.collect() if m.name == name
            for s in m.samples if s.name == name + "_total"}


def peer_flow(login: str, address: str):
    from mitmproxy.test import tflow

    f = tflow.tflow()
    f.client_conn.peername = (address, 40000)
    if login:
        f.metadata["proxyauth"] = (login, "secret-password")
    return f


def test_a_dropped_client_leaves_the_page_and_the_password_never_appears():
    from hubcache.hooks.flowstate import Clients
    from hubcache.metrics import Metrics

    metrics = Metrics()
    clients = Clients(metrics, limit=1)
    clients.count(peer_flow("", "10.0.0.1"), "hit", "store", 100)
    clients.count(peer_flow("", "10.0.0.1"), "miss", "upstream", 50)
    clients.count(peer_flow("", "10.0.0.2"), "hit", "store", 7)
    assert samples(metrics, "hubcache_client_requests") == {("10.0.0.1", "hit"): 1, ("10.0.0.1", "miss"): 1,
                                                            ("other", "hit"): 1}
    assert samples(metrics, "hubcache_client_bytes") == {("10.0.0.1", "store"): 100, ("10.0.0.1", "upstream"): 50,
                                                         ("other", "store"): 7}
    clients.count(peer_flow("runner-a", "10.0.0.3"), "passthrough", "", 0)  # takes 10.0.0.1's place
    assert samples(metrics, "hubcache_client_requests") == {("runner-a", "passthrough"): 1, ("other", "hit"): 1}
    assert samples(metrics, "hubcache_client_bytes") == {("other", "store"): 7}
    from prometheus_client import generate_latest

    assert b"secret-password" not in generate_latest(metrics.registry)


def test_a_new_limit_starts_afresh_and_zero_removes_every_client_series():
    from hubcache.hooks.flowstate import Clients
    from hubcache.metrics import Metrics

    metrics = Metrics()
    clients = Clients(metrics, limit=1)
    for address in ("10.0.0.1", "10.0.0.2"):
        clients.count(peer_flow("", address), "hit", "store", 1)
    clients.configure(1)  # unchanged: kept as it is
    assert set(samples(metrics, "hubcache_client_requests")) == {("10.0.0.1", "hit"), ("other", "hit")}
    clients.configure(0)
    clients.count(peer_flow("", "10.0.0.1"), "hit", "store", 1)
    assert samples(metrics, "hubcache_client_requests") == {} and samples(metrics, "hubcache_client_bytes") == {}
