"""Pacing of hubcache's own upstream requests: the egress token bucket (decide/pacing.py) and the
per-host slots plus rate of upstream/pacing.Pacer, from threads (blob downloads) and coroutines
(tokens, manifests, HEADs), and the two together."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from hubcache.decide.pacing import TokenBucket
from hubcache.metrics import Metrics
from hubcache.upstream.pacing import Pacer

# -- the bucket -------------------------------------------------------------------------------


def test_a_full_bucket_lets_the_burst_go_at_once_then_one_request_per_token():
    b = TokenBucket(rate=5, burst=3, now=100.0)
    assert [b.reserve(100.0) for _ in range(3)] == [0, 0, 0]
    # the next ones are booked at 1/rate apart, in the order they asked
    assert [round(b.reserve(100.0), 6) for _ in range(3)] == [0.2, 0.4, 0.6]


def test_a_quiet_spell_refills_the_bucket_but_never_beyond_the_burst():
    b = TokenBucket(rate=10, burst=2, now=0.0)
    b.reserve(0.0), b.reserve(0.0)
    assert b.reserve(0.05) == pytest.approx(0.05)  # half a token back: wait for the other half
    assert b.level(3600.0) == 2  # an hour idle saves up no more than the burst
    assert [b.reserve(3600.0) for _ in range(2)] == [0, 0]
    assert b.reserve(3600.0) == pytest.approx(0.1)


def test_rate_zero_is_no_cap():
    b = TokenBucket(rate=0, burst=1, now=0.0)
    assert not b.capped
    assert all(b.reserve(0.0) == 0 for _ in range(1000))


def test_a_clock_read_before_the_last_call_gives_no_token_back():
    b = TokenBucket(rate=1, burst=1, now=10.0)
    assert b.reserve(10.0) == 0
    assert b.reserve(9.0) == pytest.approx(1.0)  # as if asked at 10.0, not refunded


@pytest.mark.parametrize("seed", range(5))
def test_requests_sent_in_any_interval_never_exceed_burst_plus_rate_times_its_length(seed):
    rng = random.Random(seed)
    rate, burst = 7.0, 4
    b = TokenBucket(rate, burst, now=0.0)
    now, sent = 0.0, []
    for _ in range(400):  # arrivals in clumps and lulls, asked in time order
        now += rng.choice([0.0, 0.0, 0.01, 0.3, 2.0])
        sent.append(now + b.reserve(now))
    sent.sort()
    for i, start in enumerate(sent):
        for length in (0.0, 0.5, 1.0, 5.0):
            n = sum(1 for t in sent[i:] if t <= start + length + 1e-9)
            assert n <= burst + rate * length + 1e-6, (start, length, n)
    # and the cap is the bottleneck, not something stricter: 400 requests in about (400 - burst) / rate
    assert sent[-1] <= now + (400 - burst) / rate + 1e-6


# -- slots per host ---------------------------------------------------------------------------


def _hold_many(pacer: Pacer, hosts: list[str], seconds: float) -> dict[str, int]:
    """Threads that each hold a turn of their host for `seconds`: the most held at once per host."""
    lock, now_held, most = threading.Lock(), {h: 0 for h in hosts}, {h: 0 for h in hosts}

    def one(host: str) -> None:
        release = pacer.hold(host)
        with lock:
            now_held[host] += 1
            most[host] = max(most[host], now_held[host])
        time.sleep(seconds)
        with lock:
            now_held[host] -= 1
        release()
        release()  # a second call frees nothing more

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a waiter was never woken"
    return most


def test_threads_hold_at_most_the_concurrency_per_host_and_every_one_gets_its_turn():
    pacer = Pacer()
    pacer.configure(concurrency=2, rate=0, burst=1)
    most = _hold_many(pacer, ["cdn.example"] * 8 + ["registry.example"] * 3, 0.05)
    assert most == {"cdn.example": 2, "registry.example": 2}
    assert pacer.busy("cdn.example") == pacer.waiting("cdn.example") == 0


def test_concurrency_zero_is_no_cap():
    pacer = Pacer()
    pacer.configure(concurrency=0, rate=0, burst=1)
    assert _hold_many(pacer, ["cdn.example"] * 6, 0.1) == {"cdn.example": 6}


def test_host_names_are_one_host_whatever_their_case():
    pacer = Pacer()
    pacer.configure(concurrency=1, rate=0, burst=1)
    release = pacer.hold("CDN.example")
    assert pacer.busy("cdn.example") == 1
    release()


def test_raising_the_concurrency_lets_waiters_go_at_once():
    pacer = Pacer()
    pacer.configure(concurrency=1, rate=0, burst=1)
    first = pacer.hold("h")
    got = threading.Event()
    t = threading.Thread(target=lambda: (pacer.hold("h"), got.set()))
    t.start()
    assert not got.wait(0.2)
    pacer.configure(concurrency=2, rate=0, burst=1)
    assert got.wait(5)
    t.join(5)
    first()


def test_coroutines_wait_in_order_and_a_thread_freeing_a_slot_wakes_one():
    async def main() -> list[int]:
        pacer = Pacer()
        pacer.configure(concurrency=1, rate=0, burst=1)
        release = pacer.hold("h")  # a blob download holds the only slot
        order: list[int] = []

        async def one(i: int) -> None:
            async with pacer.turn("h"):
                order.append(i)
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await asyncio.sleep(0.05)
        assert order == [] and pacer.waiting("h") == 4
        threading.Thread(target=release).start()  # freed on the download's thread
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert pacer.busy("h") == 0
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_winner_passes_its_slot_on():
    async def main() -> None:
        pacer = Pacer()
        pacer.configure(concurrency=1, rate=0, burst=1)
        entered: list[str] = []

        async def one(name: str) -> None:
            async with pacer.turn("h"):
                entered.append(name)
                await asyncio.sleep(0.05)

        holder = pacer.hold("h")
        gone = asyncio.create_task(one("gone"))  # its client goes away while it waits
        late = asyncio.create_task(one("late"))
        await asyncio.sleep(0.02)
        gone.cancel()
        await asyncio.sleep(0.02)
        assert pacer.waiting("h") == 1
        # granted and cancelled before it ran: the slot must not be lost
        winner = asyncio.create_task(one("winner"))
        await asyncio.sleep(0.02)
        holder()  # grants "late"; cancel it in the same loop iteration
        late.cancel()
        await asyncio.wait_for(winner, 5)
        assert "gone" not in entered and entered[-1] == "winner"
        assert pacer.busy("h") == pacer.waiting("h") == 0

    asyncio.run(main())


# -- the rate, and the metrics ----------------------------------------------------------------


def test_requests_from_threads_and_coroutines_share_one_rate():
    rate, burst, n = 20, 2, 12
    pacer = Pacer()
    pacer.configure(concurrency=0, rate=rate, burst=burst)
    sent: list[float] = []

    def thread_one() -> None:
        pacer.hold("cdn.example")()
        sent.append(time.monotonic())

    async def main() -> None:
        async def coro_one() -> None:
            async with pacer.turn("registry.example"):
                sent.append(time.monotonic())

        threads = [threading.Thread(target=thread_one) for _ in range(n // 2)]
        for t in threads:
            t.start()
        await asyncio.gather(*(coro_one() for _ in range(n - n // 2)))
        for t in threads:
            await asyncio.to_thread(t.join, 10)

    start = time.monotonic()
    asyncio.run(main())
    assert len(sent) == n
    # the bucket books the n-th request (n - burst) / rate after the first: never sooner
    assert max(sent) - start >= (n - burst) / rate - 0.01


def test_the_queue_and_the_waits_are_in_the_metrics_by_host():
    metrics = Metrics()
    pacer = Pacer(metrics)
    pacer.configure(concurrency=1, rate=0, burst=1)

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    release = pacer.hold("cdn.example")
    assert value("hubcache_upstream_active", host="cdn.example") == 1
    done = threading.Event()
    t = threading.Thread(target=lambda: (pacer.hold("cdn.example")(), done.set()))
    t.start()
    deadline = time.monotonic() + 5
    while value("hubcache_upstream_queued", host="cdn.example") != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert value("hubcache_upstream_queued", host="cdn.example") == 1
    time.sleep(0.1)
    release()
    assert done.wait(5)
    t.join(5)
    assert value("hubcache_upstream_queued", host="cdn.example") == 0
    assert value("hubcache_upstream_active", host="cdn.example") == 0
    assert value("hubcache_upstream_wait_seconds_count", host="cdn.example") == 2
    assert value("hubcache_upstream_wait_seconds_sum", host="cdn.example") >= 0.1
