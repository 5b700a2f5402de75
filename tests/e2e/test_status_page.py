"""The status page (issue 14) after real pulls: skopeo pulls an image through hubcache twice (cold,
then from the store); headless chromium (Debian's, driven over the DevTools protocol) loads / on
hubcache_metrics_listen and the test reads the page as rendered: the pulled image, the hit ratio
and the pulls saved, each equal to what /metrics counts; the page asked for nothing but itself and
no load was blocked. The screenshot is kept in $HUBCACHE_ARTIFACTS (default: the test's tmp dir)."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from harness import browser
from harness.clients import skopeo_copy
from harness.proxy import free_port
from hubcache.store import Store

pytestmark = pytest.mark.e2e
IMAGE = "docker.io/library/statuspage:1"


def metric(page: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for found, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", page, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(k) in v.split("|") for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def pulled(upstream, start_hubcache, certs, tmp_path):
    """A hubcache with its metrics listener, after a cold and a warm pull of IMAGE: (its port, the proxy)."""
    if why := browser.missing():
        pytest.skip(why)
    upstream.push_image("library/statuspage", "1", [(400_000, 9401), (120_000, 9402)])
    port = free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{port}")
    for n in ("cold", "warm"):
        res = skopeo_copy(IMAGE, tmp_path / n, proxy=hub.url, cert_dir=certs)
        assert res.returncode == 0, res.stderr
    return port, hub


def load(port: int, tmp_path: Path, shot: str) -> browser.Loaded:
    with browser.Browser(tmp_path / "chromium") as b:
        seen = b.load(f"http://127.0.0.1:{port}/")
    artifacts = Path(os.environ.get("HUBCACHE_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / shot).write_bytes(seen.screenshot)
    return seen


def test_status_page_in_a_browser_shows_the_pulled_image_hit_ratio_and_pulls_saved(pulled, tmp_path):
    port, hub = pulled
    seen = load(port, tmp_path, "status-page.png")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    text = " ".join(seen.text.split())

    # the page asked for itself only, and nothing it holds was blocked by its CSP (nor would run)
    assert seen.requested == [f"http://127.0.0.1:{port}/"]
    assert seen.console == [], seen.console
    assert seen.title == "hubcache status"
    assert seen.screenshot.startswith(b"\x89PNG") and len(seen.screenshot) > 20_000

    # the hit ratio as /metrics counts it: manifests and blobs from the store against fetched upstream
    kinds = "manifest|blob|cdn"
    hits = metric(metrics, "hubcache_requests_total", kind=kinds, outcome="hit|revalidated|stale")
    misses = metric(metrics, "hubcache_requests_total", kind=kinds, outcome="miss")
    assert hits >= 3 and misses >= 3  # the warm pull from the store, the cold one upstream
    assert f"Hit ratio {hits / (hits + misses) * 100:.1f} %" in text
    assert f"{hits:,.0f} from the store, {misses:,.0f} from upstream" in text

    # pulls saved: the warm pull's manifest GET was counted by no registry
    saved = metric(metrics, "hubcache_pulls_saved_total")
    assert saved >= 1
    assert f"Pulls saved {saved:,.0f}" in text
    spent = metric(metrics, "hubcache_pulls_spent_total", account="anonymous")
    assert re.search(rf"anonymous {spent:,.0f} ", text), text  # the account's pulls spent, in its row

    # the pulled image: its misses, as the log names them, and its upstream as answering
    assert "GET manifest library/statuspage 1 200" in text
    assert re.search(r"registry-1.docker.io \(Docker Hub.s registry\) answers \d+ s ago", text), text
    assert "Hit ratio over time" in text and "Bytes served: store against upstream" in text
    assert "Store size against its cap" in text


@pytest.mark.skipif(not hasattr(Store, "image_counters"), reason="needs the store's per-image counters (issue 14 item 2)")
def test_status_page_top_images_come_from_the_stores_counters(pulled, tmp_path):
    port, hub = pulled
    deadline = time.monotonic() + 20  # the store writes its counters with the access times, every 5 s
    while IMAGE not in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode():
        assert time.monotonic() < deadline, "the pulled image never reached the page's top images"
        time.sleep(1)
    text = " ".join(load(port, tmp_path, "status-page-top-images.png").text.split())
    by_pulls = text.split("Top images by pulls", 1)[1].split("Top images by size", 1)[0]
    assert re.search(rf"{re.escape(IMAGE)} sha256:\w+ 2 ", by_pulls), by_pulls  # two pulls, cold and warm
    assert IMAGE in text.split("Top images by size", 1)[1]
