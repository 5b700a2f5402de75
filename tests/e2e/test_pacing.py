"""Pacing: a burst of 50 concurrent cold pulls of distinct images through one hubcache reaches the
upstream no faster than hubcache_upstream_rate (with its burst) and with no more than
hubcache_upstream_concurrency requests at once per host, and every pull completes, byte for byte.

The witness is the upstream's own request log: each of its front servers (hubfront.py on the
registry host, the token server, the CDN) writes a line per request with the time it read the
request line (t0) and the time it finished the answer (t). A blob's CDN transfer is paced like an
internet link, so transfers overlap unless hubcache holds them back.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.loadgen import Client, Image, get_blob, get_manifest
from harness.proxy import free_port

pytestmark = pytest.mark.e2e
KiB = 1 << 10
REG, AUTH, CDN = "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com"
PULLS = 50
RATE, BURST, CONCURRENCY = 10, 5, 2
LAYER, CDN_BYTES_PER_S = 192 * KiB, 256 * KiB  # a layer's transfer takes 0.75 s
# Seconds by which the time between hubcache sending a request and the front logging its t0 (TCP
# and TLS set-up, a busy machine) may differ between requests. Unpaced, this burst puts ~180
# requests into one second and ~45 CDN transfers side by side: the bounds below are far from that.
JITTER = 0.5
_seeds = itertools.count(61000)


def _front_lines(logs: Path, since: float) -> list[dict]:
    """Every request the front servers read since `since` (wall clock), with t0 and t."""
    lines = []
    for name in ("hubfront", "tokenserver", "cdnserver"):
        path = logs / f"{name}.jsonl"
        for raw in (path.read_text().splitlines() if path.exists() else ()):
            try:
                r = json.loads(raw)
            except ValueError:
                continue
            if r["t0"] >= since:
                lines.append(r)
    return lines


def _most_at_once(spans: list[tuple[float, float]], slack: float) -> int:
    """The most spans that overlap at one moment; each counted `slack` s shorter at its end (a
    server logs t a moment after the client had the last byte and moved on)."""
    events = sorted([(t0, 1) for t0, _ in spans] + [(max(t0, t - slack), -1) for t0, t in spans],
                    key=lambda e: (e[0], -e[1]))  # a span counts at its start, however short
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _breakdown(reqs, images: list[Image]) -> dict[str, int]:
    """How many requests each image cost, where that is not the 6 it should."""
    per = {i.repo: sum(1 for r in reqs if f"/{i.repo}/" in r.path or f"{i.repo.replace('/', '%2F')}%3A" in r.path
                       or any(d.split(":")[1] in r.path for d, _ in i.blobs)) for i in images}
    return {repo: n for repo, n in per.items() if n != 2 + 2 * len(images[0].blobs)}


def _metric(port: int, name: str, host: str) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = re.search(rf'^{name}\{{host="{re.escape(host)}"\}} ([0-9.e+-]+)$', page, re.M)
    assert m, f"{name} for {host} not in the metrics"
    return float(m.group(1))


def test_a_burst_of_cold_pulls_stays_within_the_rate_and_concurrency_and_every_pull_completes(upstream, start_hubcache):
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda i: Image.from_info(upstream.push_image(
            f"library/paced{i}", "1", [(LAYER, next(_seeds))])), range(PULLS)))
    metrics_port = free_port()
    hub = start_hubcache(f"hubcache_upstream_rate={RATE}", f"hubcache_upstream_burst={BURST}",
                         f"hubcache_upstream_concurrency={CONCURRENCY}", f"hubcache_metrics_listen=127.0.0.1:{metrics_port}")
    mark = upstream.mark()
    errors: list[str] = []
    barrier = threading.Barrier(PULLS)

    def pull(image: Image) -> None:
        client = Client(hub.port, hub.ca_cert, timeout=120)  # the client's own patience
        try:
            barrier.wait(30)
            token = client.token(image.repo)
            get_manifest(client, token, image, by_digest=False)
            for digest, size in image.blobs:
                get_blob(client, token, image.repo, digest, size)  # every byte checked
        except Exception as e:  # noqa: BLE001 - each failure is reported below
            errors.append(f"{image.repo}: {e!r}")

    started = time.time()
    with upstream.cdn_rate(CDN_BYTES_PER_S):
        threads = [threading.Thread(target=pull, args=(image,)) for image in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    took = time.time() - started
    assert not any(t.is_alive() for t in threads), "a pull never finished"
    assert errors == [], errors[:5]
    assert hub.proc is not None and hub.proc.poll() is None, hub.log()[-3000:]

    # What each pull cost upstream, once: hubcache's token, the manifest, and for each blob the
    # registry's 307 and the CDN's transfer. Nothing failed, nothing was asked twice.
    reqs = upstream.requests_since(mark)
    assert [r for r in reqs if r.status >= 400] == []
    expected = PULLS * (2 + 2 * len(images[0].blobs))
    assert len(reqs) == expected, _breakdown(reqs, images)

    lines = _front_lines(upstream.logs, started)
    assert len(lines) == expected
    sends = sorted(r["t0"] for r in lines)
    # The rate: in any interval of W seconds, at most burst + rate * W requests (plus what the
    # time between sending and the front reading the request line can squeeze into W).
    for i, first in enumerate(sends):
        for w in (1.0, 3.0, 10.0):
            n = sum(1 for t in sends[i:] if t <= first + w)
            assert n <= BURST + RATE * (w + JITTER), f"{n} requests within {w} s from {first - started:.2f} s"
    # ... and the burst did take that long: unpaced, it is over in a few seconds
    assert sends[-1] - sends[0] >= (expected - BURST) / RATE - JITTER
    # The concurrency per host: never more than the cap at once, and the CDN's slow transfers
    # did fill it (the cap, not the clients, held them back).
    most = {host: _most_at_once([(r["t0"], r["t"]) for r in lines if r["host"] == host], slack=0.03)
            for host in (REG, AUTH, CDN)}
    assert max(most.values()) <= CONCURRENCY, most
    assert most[CDN] == CONCURRENCY, most

    # The metrics saw the queue: requests waited, and nothing waits any more.
    assert _metric(metrics_port, "hubcache_upstream_wait_seconds_sum", REG) > 0
    assert _metric(metrics_port, "hubcache_upstream_wait_seconds_count", CDN) == PULLS * len(images[0].blobs)
    for host in (REG, AUTH, CDN):
        assert _metric(metrics_port, "hubcache_upstream_queued", host) == 0
        assert _metric(metrics_port, "hubcache_upstream_active", host) == 0
    print(f"pacing: {expected} upstream requests for {PULLS} cold pulls in {took:.1f} s, "
          f"most at once {most}, sent over {sends[-1] - sends[0]:.1f} s")
