"""`hubcache run --workers N`: several proxy processes on one port and one store.

What a user sees is checked: bytes identical to a direct pull, the requests that reached the
upstream (its own logs), what a client gets while a worker dies, one metrics endpoint counting every
worker, and a clean stop. Workers are told apart by the `[worker I]` their log lines end with and by
their pids (Proxy.worker_pids)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request

import pytest

from harness.blobtests import cdn_gets, concurrent_pulls, fetches_per_object, layers, token_for, wait_until
from harness.clients import dir_files, pull_ok
from harness.proxy import BIN, free_port

pytestmark = pytest.mark.e2e
MiB = 1 << 20


def request_lines(hub, worker: int) -> int:
    return len(re.findall(rf"hubcache: \S+ +(?:GET|HEAD) .*\[worker {worker}\]", hub.log()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet) is gone for a user
        return open(f"/proc/{pid}/stat").read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_concurrent_cold_pulls_over_two_workers_fetch_each_blob_once(upstream, start_hubcache, certs, tmp_path):
    repo = "library/wkconcurrent"
    img = upstream.push_image(repo, "1", layers(8 * MiB, 8 * MiB, 8 * MiB, 8 * MiB))
    direct = dir_files(pull_ok(f"docker.io/{repo}:1", tmp_path / "direct", None, certs))
    metrics = f"127.0.0.1:{free_port()}"
    hub = start_hubcache(f"hubcache_metrics_listen={metrics}", workers=2)
    assert len(hub.worker_pids()) == 2
    mark = upstream.mark()
    for i, pulled in enumerate(concurrent_pulls(8, f"docker.io/{repo}:1", hub.url, certs, tmp_path)):
        assert dir_files(pulled) == direct, f"pull {i} differs from a direct pull"
    served = {w: request_lines(hub, w) for w in (1, 2)}
    assert all(served.values()), f"requests per worker {served}: the pulls were not spread over both workers"

    reqs = upstream.requests_since(mark)
    got = fetches_per_object(reqs, img)
    assert got == dict.fromkeys(got, 1), "8 concurrent pulls over 2 workers: each object fetched once"

    # One metrics endpoint counts both workers' requests.
    total = metric(f"http://{metrics}/metrics", "hubcache_requests_total{")
    assert total == served[1] + served[2], f"/metrics counts {total} requests, the workers logged {served}"


def test_a_worker_killed_mid_download_is_taken_over(upstream, start_hubcache, tmp_path, curl):
    repo = "library/wkkilled"
    img = upstream.push_image(repo, "1", layers(24 * MiB))
    layer, size = img.layer_digests[0], img.layer_sizes[0]
    hub = start_hubcache(workers=2)
    token = token_for(hub, repo)
    mark = upstream.mark()
    from hubcache.store import Store

    def claimant() -> int:
        store = Store(hub.store, readonly=True)
        try:
            claim = store.claims.held(layer)
            return claim.pid if claim is not None and claim.blob_id else 0
        finally:
            store.close()

    with upstream.cdn_fault(layer, stall_at=2 * MiB, stall_seconds=5, resume=True):
        early = [curl(hub, repo, layer, token, f"early-{i}") for i in range(6)]
        assert wait_until(lambda: claimant() and any(c.received() for c in early), 20), "no download under way"
        victim = claimant()
        assert victim in hub.worker_pids()
        os.kill(victim, signal.SIGKILL)  # the worker downloading the blob dies mid-body
        assert wait_until(lambda: "worker_died" in hub.log() or "died (killed by SIGKILL)" in hub.log(), 10)
        late = [curl(hub, repo, layer, token, f"late-{i}") for i in range(4)]
        late_codes = [c.wait(60) for c in late]
        early_codes = [c.wait(60) for c in early]
    for c, rc in zip(late, late_codes, strict=True):  # after the death: the download was taken over
        assert rc == 0, c.stderr()
        assert c.sha256() == layer and c.received() == size
    for i, (c, rc) in enumerate(zip(early, early_codes, strict=True)):
        if rc == 0:  # it followed the survivor's takeover from the start
            assert c.sha256() == layer, f"early client {i}: wrong bytes"
        else:  # cut short: never a whole body of a broken download
            assert c.received() < size, f"early client {i}: failed with a whole body"
            again = curl(hub, repo, layer, token, f"again-{i}")
            assert again.wait(60) == 0, again.stderr()
            assert again.sha256() == layer
    fetches = len(cdn_gets(upstream.requests_since(mark), layer))
    assert fetches == 2, f"{fetches} CDN GETs: one cut by the kill, one by the worker that took over"
    assert wait_until(lambda: len(hub.worker_pids()) == 2, 20), "the dead worker was not started again"
    assert victim not in hub.worker_pids()
    line = next(ln for ln in hub.log().splitlines() if "died (killed by SIGKILL)" in ln)
    assert f"pid {victim}" in line and "1 download it had under way dropped" in line, line

    pids = hub.worker_pids()
    assert hub.stop() == 0
    assert not any(alive(p) for p in pids), "a worker outlived the supervisor's stop"
    verify = subprocess.run([str(BIN / "hubcache"), "verify", "--store", str(hub.store)], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stderr
    assert "0 did not match" in verify.stdout and "0 interrupted writes" in verify.stdout, verify.stdout


@pytest.mark.parametrize("who", ["supervisor", "every process"])  # `kill PID`; systemd's stop (KillMode=control-group)
def test_sigterm_stops_every_worker_and_frees_the_store(upstream, start_hubcache, tmp_path, who):
    hub = start_hubcache(workers=3)
    pids = hub.worker_pids()
    assert len(pids) == 3
    supervisor = hub.proc.pid
    for pid in [supervisor] + (pids if who == "every process" else []):
        os.kill(pid, signal.SIGTERM)
    assert hub.proc.wait(30) == 0
    assert not alive(supervisor) and not any(alive(p) for p in pids)
    from hubcache.store import Store

    Store(hub.store).close()  # the lock is free: a new hubcache could open it
    log = hub.log()
    assert f"3 workers share the port and the store (pids {' '.join(map(str, pids))})" in log, log[:2000]
    assert log.count("stopped; store") == 3, "each worker closes the store"
    assert "died" not in log and "Traceback" not in log, log[-2000:]
