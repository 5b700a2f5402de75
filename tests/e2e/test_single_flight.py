"""Single flight: clients that want the same object at the same time share one upstream transfer.

What a user sees is checked: every copy's bytes (against a direct pull or the digest), clients'
errors, and the requests the upstream saw (its own logs, never the proxy's). Blob clients are curl
processes (the registry URL with a token from the token endpoint, 307s followed), so that a test
can kill one by its PID mid-body; the CDN is slowed down with a stall that resumes
(Upstream.cdn_fault(..., resume=True)) so that clients overlap on one transfer.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from harness.blobtests import (
    CDN,
    REG,
    cdn_gets,
    concurrent_pulls,
    count,
    fetches_per_object,
    hexd,
    layers,
    one_blob,
    seen_since,
    sha256_file,
    token_fetches,
    token_for,
    wait_until,
)
from harness.clients import client_env, dir_files, proxied_request, pull_ok

pytestmark = pytest.mark.e2e
MiB = 1 << 20


# -- the fake CDN's slow transfer, which the tests below rely on --------------------------------

def test_cdn_stall_with_resume_is_slow_but_whole(upstream, tmp_path):
    """Set-up check, no proxy: stall_at + resume sends the first part, pauses, then the rest."""
    img = upstream.push_image("library/sfstallcheck", "1", layers(3 * MiB))
    layer, size = img.layer_digests[0], img.layer_sizes[0]
    path = f"/docker/registry/v2/blobs/sha256/{hexd(layer)[:2]}/{hexd(layer)}/data"
    out = tmp_path / "blob"
    with upstream.cdn_fault(layer, stall_at=1 * MiB, stall_seconds=1.5, resume=True):
        t0 = time.monotonic()
        res = subprocess.run(["curl", "-sS", "-f", "--max-time", "30", "--cacert", str(upstream.ca_cert),
                              "-o", str(out), f"https://{CDN}{path}"],
                             env=client_env(None), capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert sha256_file(out) == layer and out.stat().st_size == size
    assert took >= 1.5


# -- 1. many pulls of one cold image ----------------------------------------------------------

def test_sixteen_concurrent_cold_pulls_fetch_each_object_once(upstream, start_hubcache, certs, tmp_path):
    repo = "library/sfconcurrent"
    img = upstream.push_image(repo, "1", layers(8 * MiB, 8 * MiB, 8 * MiB, 8 * MiB))
    direct = dir_files(pull_ok(f"docker.io/{repo}:1", tmp_path / "direct", None, certs))
    hub = start_hubcache()
    mark = upstream.mark()
    for i, pulled in enumerate(concurrent_pulls(16, f"docker.io/{repo}:1", hub.url, certs, tmp_path)):
        assert dir_files(pulled) == direct, f"pull {i} differs from a direct pull"

    reqs = upstream.requests_since(mark)
    got = fetches_per_object(reqs, img)
    assert got == dict.fromkeys(got, 1), "16 concurrent pulls: each object fetched once"
    tokens = token_fetches(reqs, repo)
    assert tokens <= 1, f"{tokens} upstream token fetches for one repository"


# -- 2. many GETs of one tag manifest ---------------------------------------------------------

def test_sixteen_concurrent_tag_manifest_gets_spend_one_pull(upstream, start_hubcache, tmp_path):
    repo = "library/sfmanifest"
    img = upstream.push_image(repo, "1", layers(100_000))
    hub = start_hubcache()
    token = token_for(hub, repo)
    before = sum(upstream.pulls_by_account().values())
    mark = upstream.mark()
    n = 16
    start = threading.Barrier(n)
    results: list = [None] * n

    def get(i: int) -> None:
        try:
            start.wait(timeout=30)
            results[i] = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/{repo}/manifests/1",
                                         [("Accept", img.media_type), ("Authorization", f"Bearer {token}")])
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=get, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, res in enumerate(results):
        assert isinstance(res, tuple), f"GET {i}: {res!r}"
        status, headers, body = res
        assert status == 200, f"GET {i}: {status} {body[:300]!r}"
        assert headers.get("docker-content-digest") == img.manifest_digest, f"GET {i}: {headers}"
        assert body == img.manifest_bytes, f"GET {i}: body differs"

    gets = count(upstream.requests_since(mark), REG, "GET", "/manifests/")
    pulls = sum(upstream.pulls_by_account().values()) - before
    assert (gets, pulls) == (1, 1), f"16 GETs of one tag: {gets} upstream manifest GETs, {pulls} counted pulls"


# -- 3. a late joiner gets what has already arrived at once --------------------------------------

STALL = 5.0  # seconds the CDN pauses mid-blob
JOIN_BOUND = 3.0  # seconds within which the late joiner must have 8 MiB (the stall ends later)


def test_late_joiner_streams_what_has_arrived_at_once(upstream, start_hubcache, curl):
    repo = "library/sflatejoiner"
    layer, size, hub, token, mark = one_blob(upstream, start_hubcache, repo, 48 * MiB)
    with upstream.cdn_fault(layer, stall_at=16 * MiB, stall_seconds=STALL, resume=True):
        a = curl(hub, repo, layer, token, "a")
        time.sleep(1.0)
        b = curl(hub, repo, layer, token, "b")
        reached = None  # when B had 8 MiB (time.time(), as in the upstream's logs)
        if wait_until(lambda: b.received() >= 8 * MiB or b.proc.poll() is not None, JOIN_BOUND + STALL + 5):
            if b.received() >= 8 * MiB:
                reached = time.time()
        took = time.monotonic() - b.started
        rc_a, rc_b = a.wait(), b.wait()
    assert rc_a == 0, a.stderr()
    assert rc_b == 0, b.stderr()
    assert a.sha256() == layer and b.sha256() == layer
    assert a.received() == size and b.received() == size

    reqs = upstream.requests_since(mark)
    fetches = cdn_gets(reqs, layer)
    assert fetches and all(r.t - r.extra["t0"] >= STALL for r in fetches), "the CDN did not stall: test set-up"
    stall_over = min(r.extra["t0"] for r in fetches) + STALL  # the stall cannot have ended before this
    assert reached is not None and took <= JOIN_BOUND, (
        f"the late joiner had {b.received() if reached is None else 8 * MiB} bytes only after {took:.1f} s: "
        f"it waited for the transfer instead of getting the 16 MiB already there")
    assert reached < stall_over, f"the late joiner reached 8 MiB {reached - stall_over:.1f} s after the stall ended"
    n = len(fetches)
    assert n == 1, f"{n} CDN GETs for one blob wanted by two clients at once"


# -- 4. a failure reaches every waiter; the next request fetches afresh -----------------------------

def test_failure_reaches_every_waiter_and_the_next_get_fetches_afresh(upstream, start_hubcache, curl):
    repo = "library/sffailure"
    layer, size, hub, token, mark = one_blob(upstream, start_hubcache, repo, 24 * MiB)
    # the CDN sends 4 MiB, pauses 3 s (all three clients are waiting by then), then hangs up
    with upstream.cdn_fault(layer, stall_at=4 * MiB, stall_seconds=3):
        waiters = []
        for i in range(3):
            waiters.append(curl(hub, repo, layer, token, f"waiter-{i}"))
            time.sleep(0.5)
        codes = [w.wait() for w in waiters]
    for i, (w, rc) in enumerate(zip(waiters, codes, strict=True)):
        assert rc != 0, f"waiter {i}: curl succeeded with {w.received()} bytes of a cut transfer"
        assert w.received() < size, f"waiter {i}: a whole body from a cut transfer"
    n = len(cdn_gets(upstream.requests_since(mark), layer))
    assert n == 1, f"three waiters of one transfer: {n} CDN GETs"

    mark = upstream.mark()
    again = curl(hub, repo, layer, token, "after")
    assert again.wait() == 0, again.stderr()
    assert again.sha256() == layer and again.received() == size
    n = len(cdn_gets(upstream.requests_since(mark), layer))
    assert n == 1, f"after the failure: {n} CDN GETs (1: fetched afresh, not served from the failed transfer)"

    mark = upstream.mark()
    stored = curl(hub, repo, layer, token, "stored")
    assert stored.wait() == 0, stored.stderr()
    assert stored.sha256() == layer
    assert seen_since(upstream, mark) == []


# -- 5. the client that started the transfer goes away ---------------------------------------

@pytest.mark.parametrize("leaver", ["starter", "joiner"])
def test_a_client_going_away_leaves_the_other_its_blob(leaver, upstream, start_hubcache, curl):
    """A starts the transfer, B joins; one of them (the starter A, or the joiner B: item 6, a
    waiter that goes away disturbs nobody) is killed mid-body: the other still gets the whole
    blob, from the same upstream transfer."""
    repo = f"library/sfgone{leaver}"
    layer, size, hub, token, mark = one_blob(upstream, start_hubcache, repo, 32 * MiB)
    with upstream.cdn_fault(layer, stall_at=8 * MiB, stall_seconds=3, resume=True):
        a = curl(hub, repo, layer, token, "a")
        time.sleep(0.5)
        b = curl(hub, repo, layer, token, "b")
        gone, stays = (a, b) if leaver == "starter" else (b, a)
        wait_until(lambda: gone.received() >= MiB and stays.received() >= MiB, 5)
        assert 0 < gone.received() < size, f"the {leaver} is not mid-body: {gone.received()} bytes"
        gone.kill()
        rc = stays.wait()
    assert rc == 0, stays.stderr()
    assert stays.sha256() == layer and stays.received() == size
    n = len(cdn_gets(upstream.requests_since(mark), layer))
    assert n == 1, f"{n} CDN GETs for one blob wanted by two clients at once"


def test_a_transfer_whose_only_client_went_away_is_stored_all_the_same(upstream, start_hubcache, curl):
    """A alone is killed mid-body; once the upstream transfer has had time to end, the blob is
    served from the store with no upstream request."""
    repo = "library/sfalonegone"
    layer, size, hub, token, mark = one_blob(upstream, start_hubcache, repo, 32 * MiB)
    with upstream.cdn_fault(layer, stall_at=8 * MiB, stall_seconds=3, resume=True):
        a = curl(hub, repo, layer, token, "a")
        wait_until(lambda: a.received() >= MiB, 5)
        assert 0 < a.received() < size, f"A is not mid-body: {a.received()} bytes"
        a.kill()
        # the CDN logs its GET when it has sent the whole blob, or when the other side hung up
        wait_until(lambda: cdn_gets(upstream.requests_since(mark, settle=0), layer), 3 + 20, step=0.1)
    transfer = [(r.status, r.bytes) for r in cdn_gets(upstream.requests_since(mark), layer)]
    time.sleep(2)  # time for hubcache to verify and commit what it received
    mark = upstream.mark()
    c = curl(hub, repo, layer, token, "after")
    assert c.wait() == 0, c.stderr()
    assert c.sha256() == layer and c.received() == size
    assert seen_since(upstream, mark) == [], (
        f"not stored after its only client went away; the CDN transfer (status, bytes sent of {size}): {transfer}")


def test_clients_killed_mid_download_leave_one_line_each_and_no_traceback(upstream, start_hubcache, curl):
    """A cancelled CI job is an everyday event: each transfer it cuts is one log line naming the
    client and the bytes it got, cold (following a download under way) and warm (from the store)."""
    layer, size, hub, token, _ = one_blob(upstream, start_hubcache, "library/cancelled", 24 * MiB)
    with upstream.cdn_rate(4e6):  # cold: the download takes seconds; the client leaves in the middle
        cold = curl(hub, "library/cancelled", layer, token, "cold")
        assert wait_until(lambda: cold.received() >= MiB, 30), cold.stderr()
        cold.kill()
    assert wait_until(lambda: "stored " + layer in hub.log(), 60)  # the download went on without it
    warm = curl(hub, "library/cancelled", layer, token, "warm", rate="2M")  # warm: from the store, slowly
    assert wait_until(lambda: warm.received() >= MiB, 30), warm.stderr()
    warm.kill()
    gone = lambda: [line for line in hub.log().splitlines() if "went away after" in line and layer in line]  # noqa: E731
    assert wait_until(lambda: len(gone()) >= 2, 10), hub.log()[-3000:]
    for line in gone():
        assert "hubcache: client 127.0.0.1:" in line and f" of {size} bytes of {layer}" in line
    assert "Traceback" not in hub.log()
