"""hubcache's own faults and history: SIGKILL at random moments, tampered manifests, tag history
and replaying a past pipeline with hubcache_pin_time."""

from __future__ import annotations

import hashlib
import itertools
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.clients import client_env, dir_files, pull_ok, skopeo_copy

pytestmark = pytest.mark.e2e
MiB = 1 << 20
HUBCACHE = Path(sys.executable).parent / "hubcache"
_seeds = itertools.count(9000)






def verify(store: Path) -> str:
    out = subprocess.run([HUBCACHE, "verify", "--store", store], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("workers,rounds", [(1, 50), (2, 30)])
def test_sigkill_during_cold_pulls_leaves_a_store_that_verifies(upstream, start_hubcache, certs, tmp_path, workers, rounds):
    images = [f"library/killme{workers}-{i}" for i in range(4)]
    for name in images:
        # layers over the 8 MiB write batch, so that a kill can land between two batches
        upstream.push_image(name, "1", [(20 * MiB, next(_seeds)), (12 * MiB, next(_seeds)), (100_000, next(_seeds))])
    hub = start_hubcache(workers=workers)
    rng = random.Random(1234)
    policy = tmp_path / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    kills = interrupted = 0
    # The CDN paced like an internet link (20 MB/s per connection): a layer takes about a second
    # to arrive, so most kills land while a blob is being written, not before or after it.
    (tmp_path / "k").mkdir()
    with upstream.cdn_rate(20e6):
        for i in range(rounds):
            if i % 10 == 0 and i:
                for p in hub.store.iterdir():  # a fresh store now and then, so most pulls stay cold
                    p.unlink()
            if hub.proc is None:
                hub.start()
            client = subprocess.Popen(
                ["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs), "--src-no-creds",
                 f"docker://docker.io/{images[i % len(images)]}:1", f"dir:{tmp_path / 'k' / str(i)}"],
                env=client_env(hub.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.2, 1.2))  # skopeo starts in ~0.2 s; at 20 MB/s a cold pull takes ~1.5 s
            hub.kill()  # with workers: the supervisor and every worker at once
            kills += 1
            client.send_signal(signal.SIGKILL)
            client.wait()
            report = verify(hub.store)
            assert " 0 did not match" in report, report
            interrupted += int(report.split("; ")[1].split()[0])
    assert kills == rounds
    assert interrupted > 0  # some kills did land in the middle of a blob write
    hub.start()
    direct = skopeo_copy(f"docker.io/{images[0]}:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    through = pull_ok(f"docker.io/{images[0]}:1", tmp_path / "after", hub, certs)
    assert dir_files(through) == dir_files(tmp_path / "direct")
    hub.stop()
    assert " 0 did not match" in verify(hub.store)


def test_tampered_upstream_manifest_is_refused_and_not_stored(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/badmanifest", "1", [(100_000, next(_seeds))])
    path = upstream.blob_file(img.manifest_digest)
    good = path.read_bytes()
    hub = start_hubcache()
    path.write_bytes(good.replace(b'"schemaVersion": 2', b'"schemaVersion":  2') if b'"schemaVersion": 2' in good
                     else good[:-1] + b" ")
    try:
        res = skopeo_copy("docker.io/library/badmanifest:1", tmp_path / "bad", proxy=hub.url, cert_dir=certs)
        by_digest = skopeo_copy(f"docker.io/library/badmanifest@{img.manifest_digest}", tmp_path / "bad2",
                                proxy=hub.url, cert_dir=certs)
    finally:
        path.write_bytes(good)
    assert res.returncode != 0 and by_digest.returncode != 0
    # an upstream fault: 502 (clients may retry), the reason in hubcache's log
    assert "502" in res.stderr and "502" in by_digest.stderr, (res.stderr, by_digest.stderr)
    assert hub.log().count("rejected") == 2
    mark = upstream.mark()
    ok = pull_ok("docker.io/library/badmanifest:1", tmp_path / "good", hub, certs)
    assert (ok / "manifest.json").read_bytes() == img.manifest_bytes
    manifest_gets = [r for r in upstream.requests_since(mark) if r.method == "GET" and "/manifests/" in r.path]
    assert len(manifest_gets) == 1  # the refused manifest had not been stored


@pytest.mark.parametrize("registry", ["docker.io", "ghcr.io"])
def test_tag_history_and_replaying_a_past_pipeline(upstream, start_hubcache, certs, tmp_path, registry):
    """Every registry's tags have a history, and hubcache_pin_time replays any of them."""
    name = "library/pinme" if registry == "docker.io" else "team/pinme"
    ref = f"{registry}/{name}:1"
    upstream.push_image(name, "1", [(300_000, next(_seeds))], registry=registry)
    hub = start_hubcache("hubcache_tag_ttl=0")
    v1 = pull_ok(ref, tmp_path / "v1", hub, certs)
    time.sleep(1.1)
    between = time.time()
    time.sleep(1.1)
    upstream.push_image(name, "1", [(300_000, next(_seeds))], registry=registry)
    v2 = pull_ok(ref, tmp_path / "v2", hub, certs)
    assert dir_files(v1) != dir_files(v2)
    short = "pinme:1" if registry == "docker.io" else ref
    out = subprocess.run([HUBCACHE, "history", short, "--store", hub.store], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2 and f"{registry}/{name}:1" in out.stdout
    hub.stop()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(between))
    replay = start_hubcache(f"hubcache_store={hub.store}", f"hubcache_pin_time={stamp}", name="replay")
    mark = upstream.mark()
    again = pull_ok(ref, tmp_path / "replayed", replay, certs)
    assert dir_files(again) == dir_files(v1)
    assert upstream.requests_since(mark) == []


def test_full_disk_refuses_to_store_and_keeps_serving(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/fits", "1", [(6 * MiB, next(_seeds))])
    big = upstream.push_image("library/toobig", "1", [(24 * MiB, next(_seeds))])
    store = tmp_path / "tinydisk"
    store.mkdir()
    # a 16 MiB file system of the test's own (this process is in a private mount namespace)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(store)], check=True)
    try:
        hub = start_hubcache(f"hubcache_store={store}")
        first = pull_ok("docker.io/library/fits:1", tmp_path / "fits", hub, certs)
        through = pull_ok("docker.io/library/toobig:1", tmp_path / "toobig", hub, certs)  # served, not stored
        layer = big.layer_digests[0].split(":")[1]
        assert hashlib.sha256((through / layer).read_bytes()).hexdigest() == layer
        log = hub.log()
        assert "Traceback" not in log, log
        assert any("not stored" in line and layer in line for line in log.splitlines()), log  # named, one line
        mark = upstream.mark()
        again = pull_ok("docker.io/library/fits:1", tmp_path / "fits2", hub, certs)  # what it had, it still serves
        assert dir_files(again) == dir_files(first) and upstream.requests_since(mark) == []
        hub.stop()
        assert " 0 did not match" in verify(store)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
