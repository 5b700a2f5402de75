"""The status page (issue 14): the pure parts (history, intervals, rendering), the metrics the page
reads (pulls saved, recent misses), upstream health's states, and the listener answering / and /metrics."""

import math
import re
import urllib.request

from hubcache.decide.health import Health
from hubcache.metrics import Metrics
from hubcache.model import ImageCounter
from hubcache.status import page
from hubcache.status.snapshot import Account, History, Recent, Sample, Snapshot, Upstream, intervals, ratio

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script><img src="http://evil.example/x.png">'


def snap(**kw):
    base = dict(now=NOW, started=NOW - 600, samples=(Sample(NOW - 120), Sample(NOW - 60, 3, 1, 300, 100), Sample(NOW, 9, 1, 900, 100)),
                saved=7, accounts=(Account("anonymous", 4, 96.0),), upstream=(), offline=False, images=None,
                store_bytes=1 << 20, store_cap=0, recent=())
    base.update(kw)
    return Snapshot(**base)


def image(ref, pulls, size):
    return ImageCounter(ref, "sha256:" + "a" * 64, pulls, size, NOW - 100, NOW - 10)


def test_intervals_are_differences_and_a_counter_reset_starts_afresh():
    steps = intervals([Sample(0), Sample(60, 3, 1, 300, 100), Sample(120, 3, 1, 300, 100), Sample(180, 2, 0, 50, 0)])
    assert [(i.end, i.ratio, i.store_bytes, i.upstream_bytes) for i in steps] == [
        (60, 0.75, 300, 100), (120, None, 0, 0), (180, 1.0, 50, 0)]
    assert ratio(0, 0) is None and ratio(1, 3) == 0.25


def test_history_keeps_one_sample_per_interval_and_a_bounded_number():
    h = History(every=60, kept=3)
    assert h.add(Sample(0)) and not h.add(Sample(59)) and h.add(Sample(60))
    for t in (120, 180, 240):
        h.add(Sample(t))
    assert [s.at for s in h.with_now(Sample(250, 1))] == [120, 180, 240, 250]
    assert [s.at for s in h.with_now(Sample(240))] == [120, 180, 240]  # no second point at the same time


def test_page_shows_the_figures_a_person_looks_for():
    html = page.render(snap(accounts=(Account("anonymous", 4, 96.0), Account("paid", 2, math.inf), Account("new", 0, None))))
    text = re.sub(r"<[^>]+>", " ", html)
    assert "Hit ratio 90.0 %" in " ".join(text.split())  # 9 from the store, 1 upstream
    assert re.search(r"Pulls saved\s+7", text)
    assert "unlimited" in text and "not known yet" in text and "96" in text
    assert "900 B" in text and "no cap" in text
    assert html.count("<svg") == 2  # the hit ratio and bytes charts; no store bar without a cap


def test_page_fetches_nothing_and_runs_nothing():
    html = page.render(snap(images=(image("docker.io/library/alpine:3", 1, 10),), store_cap=2 << 20,
                            recent=(Recent(NOW, "error", "GET", "manifest library/x latest", 502, "10.0.0.1", "upstream down"),),
                            upstream=(Upstream("registry", "answered 503", 12, NOW - 30),)))
    assert "<script" not in html.lower()
    assert not re.search(r"\ssrc=", html)  # no image, frame or script from anywhere
    assert re.findall(r'href="([^"]*)"', html) == ["data:,", "metrics"]  # the empty icon and /metrics, same origin
    assert "url(" not in html and "@import" not in html


def test_names_from_requests_are_escaped():
    html = page.render(snap(images=(image(EVIL, 3, 30),), recent=(Recent(NOW, "miss", "GET", EVIL, 200, EVIL, EVIL),),
                            upstream=(Upstream(EVIL, EVIL, 5, None),), accounts=(Account(EVIL, 1, 1.0),)))
    assert "<script>" not in html and "<img" not in html
    assert html.count("&lt;script&gt;") >= 5


def test_top_images_by_pulls_and_by_size():
    html = page.render(snap(images=(image("docker.io/library/big:1", 1, 5 << 30), image("docker.io/library/often:1", 50, 1 << 20))))
    by_pulls, by_size = html.split("Top images by size")
    assert by_pulls.index("often:1") < by_pulls.index("big:1")
    assert by_size.index("big:1") < by_size.index("often:1")
    assert "5.0 GiB" in by_size
    assert "keeps no per-image counters" in page.render(snap(images=None))


def test_store_against_its_cap_and_backoffs():
    html = page.render(snap(store_bytes=950, store_cap=1000, upstream=(Upstream("auth.docker.io", "cannot connect", 12.4, None),),
                            offline=True))
    assert "95.0 % of its cap" in html and 'fill="#c0392b"' in html  # the bar turns red near the cap
    assert "backing off: cannot connect (12 s left)" in html and "never" in html
    assert "hubcache is offline" in html
    assert "The store is not open" in page.render(snap(store_bytes=None))


def test_no_chart_before_two_samples():
    html = page.render(snap(samples=(Sample(NOW, 1, 0),)))
    assert "<svg" not in html and "start once hubcache has run" in html


def test_health_states_name_backoffs_and_last_good_answers():
    h = Health(30)
    h.succeeded("registry", 100)
    h.failed("auth.docker.io", "cannot connect", 100)
    assert h.states(110) == [("auth.docker.io", "cannot connect", 20, None), ("registry", "", 0.0, 100)]
    assert h.states(200)[0] == ("auth.docker.io", "", 0.0, None)  # the back-off ended


def test_pulls_saved_are_manifest_gets_from_the_store_and_misses_are_kept():
    m = Metrics()
    m.observed("manifest", "GET", "hit", "docker.io", {})
    m.observed("manifest", "GET", "revalidated", "docker.io", {})
    m.observed("manifest", "HEAD", "hit", "docker.io", {})  # a HEAD is free on Docker Hub
    m.observed("blob", "GET", "hit", "docker.io", {})
    m.observed("manifest", "GET", "miss", "docker.io", {"outcome": "miss"})
    m.observed("manifest", "GET", "error", "ghcr.io", {"outcome": "error"})
    assert m.pulls_saved.labels("docker.io")._value.get() == 2
    assert [f["outcome"] for _, f in m.recent] == ["miss", "error"]


def test_listener_serves_the_page_at_root_and_metrics_elsewhere():
    m = Metrics()
    host, port = m.serve("127.0.0.1:0", lambda: b"<!DOCTYPE html><p>status</p>")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as r:
            assert r.read() == b"<!DOCTYPE html><p>status</p>"
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            assert b"# TYPE hubcache_pulls_saved_total counter" in r.read()
            assert r.headers["Content-Type"].startswith("text/plain")
    finally:
        m.stop()


def test_sample_sets_the_gauges_the_alerts_read_and_the_snapshot_reads_the_store(tmp_path):
    import dataclasses

    from hubcache.hooks.services import Services
    from hubcache.hooks.status import StatusPage
    from hubcache.store import Store

    svc = Services()
    svc.settings = dataclasses.replace(svc.settings, max_size=5000)
    svc.dockerhub.health.succeeded("auth.docker.io", NOW)
    svc.dockerhub.health.failed("registry", "answered 503", 4e9)  # backing off until long after now
    svc.store = Store(tmp_path / "store")
    try:
        status = StatusPage(svc)
        status.sample()
        assert svc.metrics.store_max_bytes._value.get() == 5000
        assert svc.metrics.upstream_backoff.labels("registry")._value.get() == 1
        assert svc.metrics.upstream_backoff.labels("auth.docker.io")._value.get() == 0
        svc.metrics.requests.labels("manifest", "hit", "docker.io").inc(3)
        svc.metrics.requests.labels("blob", "miss", "docker.io").inc(1)
        svc.metrics.requests.labels("token", "hit", "docker.io").inc(9)  # not content: not in the ratio
        s = status.snapshot()
        assert s.hit_ratio == 0.75 and s.store_bytes == 0 and s.store_cap == 5000
        assert [u.host for u in s.upstream if u.reason] == ["registry-1.docker.io (Docker Hub's registry)"]
        assert "backing off: answered 503" in status.html().decode()
    finally:
        svc.store.close()
