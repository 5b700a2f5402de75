"""Client connection caps (decide/admission.py, hooks/limits.py) and the open-file limit they need
(tools/fdlimit.py): what is refused, what is counted, when a refusal is a log line."""

from __future__ import annotations

import logging

from mitmproxy.test import tflow

from hubcache.decide.admission import Admission, RefusalLog
from hubcache.hooks.limits import ConnectionLimits
from hubcache.metrics import Metrics
from hubcache.settings import Settings
from hubcache.tools import fdlimit


def test_the_per_address_cap_refuses_that_address_only_and_a_release_makes_room():
    a = Admission(total=10, per_address=2)
    assert a.admit("10.0.0.7") is None and a.admit("::ffff:10.0.0.7") is None  # one address, however written
    refused = a.admit("10.0.0.7")
    assert refused is not None and refused.cap == "hubcache_client_max_per_address"
    assert "10.0.0.7" in refused.why
    assert a.admit("10.0.0.8") is None  # another address is not held back
    a.release("10.0.0.7")
    assert a.admit("10.0.0.7") is None
    assert (a.open, a.from_address("10.0.0.7"), a.from_address("10.0.0.8")) == (3, 2, 1)


def test_the_total_cap_refuses_every_address_until_one_closes():
    a = Admission(total=3, per_address=0)
    for i in range(3):
        assert a.admit(f"10.0.0.{i}") is None
    refused = a.admit("10.0.0.99")
    assert refused is not None and refused.cap == "hubcache_client_max"
    a.release("10.0.0.1")
    assert a.admit("10.0.0.99") is None
    assert a.open == 3


def test_zero_is_no_cap_and_a_release_never_counts_below_zero():
    a = Admission(0, 0)
    assert all(a.admit("10.0.0.7") is None for _ in range(5000))
    for _ in range(5001):
        a.release("10.0.0.7")
    a.release("10.9.9.9")  # never taken
    assert (a.open, a.from_address("10.0.0.7")) == (0, 0)


def test_a_refusal_is_one_line_per_address_a_minute_carrying_the_ones_not_logged():
    r = RefusalLog(every=60)
    assert r.note("10.0.0.7", 0) == 1
    assert [r.note("10.0.0.7", t) for t in (1, 2, 59)] == [None, None, None]
    assert r.note("10.0.0.8", 5) == 1  # another address has its own line
    assert r.note("::ffff:10.0.0.7", 60) == 4  # this one and the three not logged
    assert r.note("10.0.0.7", 61) is None


def test_the_refusal_log_remembers_a_bounded_number_of_addresses():
    r = RefusalLog(every=60, most=100)
    for i in range(1000):
        assert r.note(f"10.0.{i // 256}.{i % 256}", i / 1000) == 1
    assert len(r._last) <= 100


def test_a_refused_connection_is_closed_counted_and_never_released():
    metrics = Metrics()
    limits = ConnectionLimits(metrics)
    limits.configure(Settings(client_max=0, client_max_per_address=2, client_idle=0))
    clients = [tflow.tclient_conn() for _ in range(3)]
    for c in clients:
        c.peername = ("10.0.0.7", 40000)
        limits.connected(c)
    assert [c.error for c in clients[:2]] == [None, None]
    assert clients[2].error and "hubcache_client_max_per_address" in clients[2].error
    assert metrics.registry.get_sample_value("hubcache_client_refused_total",
                                             {"cap": "hubcache_client_max_per_address"}) == 1
    limits.disconnected(clients[2])  # mitmproxy reports the refused one's end too
    assert limits.admission.open == 2
    assert metrics.registry.get_sample_value("hubcache_client_connections") == 2
    limits.disconnected(clients[0])
    late = tflow.tclient_conn()
    late.peername = ("10.0.0.7", 40001)
    limits.connected(late)
    assert late.error is None and limits.admission.open == 2


def test_a_connection_mitmproxy_refused_already_is_not_counted():
    limits = ConnectionLimits(Metrics())
    blocked = tflow.tclient_conn()
    blocked.peername = ("203.0.113.9", 40000)
    blocked.error = "Connection killed by block_global."
    limits.connected(blocked)
    limits.disconnected(blocked)
    assert limits.admission.open == 0 and blocked.error == "Connection killed by block_global."


def test_refusals_are_one_warning_naming_the_cap_not_one_per_connection(caplog):
    caplog.set_level(logging.INFO, logger="hubcache")
    limits = ConnectionLimits(Metrics())
    limits.configure(Settings(client_max=1, client_max_per_address=0, client_idle=0))
    for port in range(100):
        c = tflow.tclient_conn()
        c.peername = ("10.0.0.7", 40000 + port)
        limits.connected(c)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "client_refused"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].fields["cap"] == "hubcache_client_max" and lines[0].fields["client"] == "10.0.0.7"
    assert "raise hubcache_client_max" in lines[0].getMessage()


def test_the_open_file_limit_advice_names_the_fix_only_when_short():
    assert fdlimit.needed(0) is None
    assert fdlimit.needed(8192) == 8192 * 3 + 1024
    assert fdlimit.advice(1024, None) is None
    assert fdlimit.advice(1 << 20, fdlimit.needed(8192)) is None
    why = fdlimit.advice(4096, fdlimit.needed(8192))
    assert why and "LimitNOFILE=25600" in why and "hubcache_client_max to 1024" in why


def test_the_soft_limit_is_raised_to_the_hard_one(monkeypatch):
    import resource

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(limits))
    assert fdlimit.raise_soft_limit(8192) == (65536, 8192 * 3 + 1024)
    assert calls == [(65536, 65536)]


def test_an_over_cap_connection_gets_a_503_naming_the_cap_for_its_first_request():
    import asyncio

    async def run():
        limits = ConnectionLimits(Metrics())
        limits.configure(Settings(client_max=0, client_max_per_address=1, client_idle=30))
        taken, over = tflow.tclient_conn(), tflow.tclient_conn()
        taken.peername = over.peername = ("10.0.0.7", 40000)
        limits.connected(taken)
        limits.connected(over)
        assert over.error is None  # kept for its request, to be answered
        assert limits.admission.open == 1 and len(limits._timers) == 2
        refused, served = tflow.tflow(client_conn=over), tflow.tflow(client_conn=taken)
        assert limits.request(refused) and not limits.request(served)
        assert served.response is None and not limits._timers  # no deadline left for either
        assert refused.response.status_code == 503
        assert refused.response.headers["connection"] == "close"
        assert "10.0.0.7" in refused.response.reason and "hubcache_client_max_per_address" in refused.response.reason
        limits.disconnected(over)
        assert limits.admission.open == 1

    asyncio.run(run())
