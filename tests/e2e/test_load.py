"""Load: 50 clients for a minute against one hubcache, every answer checked (support.loadgen).

The mix: blob GETs of stored images (hits), blob and manifest HEADs, tag manifest GETs and
manifest GETs by digest, and, spread over the minute, pulls of images hubcache has never seen,
by groups of clients that ask for the same cold manifest and blobs at the same moment. Every
response must be right (status, sizes, sha256 of every body); afterwards the store must verify
clean, and the upstream must have been asked for each cold object once and for the stored ones
never.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.loadgen import DEFAULT_WEIGHTS, Image, Plan, prime, run_load

pytestmark = pytest.mark.e2e
KiB, MiB = 1 << 10, 1 << 20
REG, CDN = "registry-1.docker.io", "production.cloudflare.docker.com"
HUBCACHE = Path(sys.executable).parent / "hubcache"
_seeds = itertools.count(52000)

CLIENTS, SECONDS = 50, 60
WARM = [  # layer sizes of the images pulled before the load starts
    (64 * KiB, 1 * MiB, 4 * MiB),
    (256 * KiB, 2 * MiB, 8 * MiB),
    (128 * KiB, 512 * KiB, 6 * MiB),
    (32 * MiB,),
]
COLD = [  # pulled for the first time during the load
    (64 * KiB, 2 * MiB, 8 * MiB),
    (128 * KiB, 4 * MiB),
    (32 * MiB, 256 * KiB),
    (512 * KiB, 1 * MiB, 6 * MiB),
    (64 * KiB, 3 * MiB),
    (192 * KiB, 8 * MiB),
]


def push(upstream, name: str, sizes) -> Image:
    return Image.from_info(upstream.push_image(name, "1", [(s, next(_seeds)) for s in sizes]))


def verify(store: Path) -> tuple[int, int, str]:
    """`hubcache verify` on a stopped proxy's store: (bad, orphan chunk sets, its report)."""
    out = subprocess.run([HUBCACHE, "verify", "--store", store], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    bad = re.search(r"(\d+) did not match", out.stdout)
    orphans = re.search(r"(\d+) orphaned chunk sets", out.stdout)
    assert bad and orphans, f"unexpected verify report: {out.stdout!r}"
    return int(bad[1]), int(orphans[1]), out.stdout.strip()


def test_fifty_clients_for_a_minute(upstream, start_hubcache):
    warm = [push(upstream, f"library/loadwarm{i}", sizes) for i, sizes in enumerate(WARM)]
    cold = [push(upstream, f"library/loadcold{i}", sizes) for i, sizes in enumerate(COLD)]
    hub = start_hubcache()
    prime(hub.port, hub.ca_cert, warm)
    mark = upstream.mark()

    result = run_load(hub.port, hub.ca_cert, Plan(warm, cold, miss_groups=2, miss_group_size=5),
                      clients=CLIENTS, seconds=SECONDS)
    print("load:", json.dumps(result))

    assert hub.proc is not None and hub.proc.poll() is None, f"hubcache died under load: {hub.log()[-3000:]}"
    assert (result["errors"], result["corrupt"]) == (0, 0), json.dumps(result["error_samples"], indent=1)
    for kind in [*DEFAULT_WEIGHTS, "token", "cold_manifest_get", "cold_blob_get"]:
        assert result["requests"].get(kind, 0) > 0, f"no {kind} requests ran: {result['requests']}"
    assert result["cold_images_pulled"] == len(cold)

    assert hub.stop() is not None
    bad, orphans, report = verify(hub.store)
    assert (bad, orphans) == (0, 0), report

    reqs = upstream.requests_since(mark)
    stored = [r for r in reqs if any(f"/{i.repo}/" in r.path for i in warm)
              or any(d.split(":")[1] in r.path for i in warm for d, _ in i.blobs)]
    assert stored == [], f"{len(stored)} upstream requests for content hubcache had stored"
    got, want = {}, {}
    for image in cold:
        key = f"{image.repo} manifest GETs"
        got[key] = sum(1 for r in reqs if r.host == REG and r.method == "GET" and r.path == f"/v2/{image.repo}/manifests/1")
        want[key] = 1
        for digest, _ in image.blobs:
            key = f"{image.repo} {digest[:19]} registry/CDN GETs"
            got[key] = (sum(1 for r in reqs if r.host == REG and r.method == "GET" and r.path.endswith(f"/blobs/{digest}")),
                        sum(1 for r in reqs if r.host == CDN and r.method == "GET" and digest.split(":")[1] in r.path))
            want[key] = (1, 1)
    assert got == want, "each cold object fetched from upstream once, however many clients asked at once"
