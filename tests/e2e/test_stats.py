"""`hubcache stats` and `ls` beside a running proxy, after real pulls: they name the images served,
count the pulls and the bytes the client got, and the counts survive a restart (issue 14)."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest

from harness.clients import pull_ok

pytestmark = pytest.mark.e2e
HUBCACHE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hubcache"
_seeds = itertools.count(14_000)


def hubcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), *args], capture_output=True, text=True, timeout=60)


def stats(store: Path, pulls: int) -> dict:
    """`hubcache stats --json` once it shows `pulls` pulls (the proxy writes its counters every 5 s)."""
    deadline = time.monotonic() + 20
    while True:
        res = hubcache("stats", "--store", str(store), "--json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        if doc["total"]["pulls"] >= pulls or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


def test_stats_beside_a_running_proxy_names_the_images_and_survives_a_restart(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/statsimg", "1", [(300_000, next(_seeds)), (40_000, next(_seeds))])
    image_bytes = len(img.manifest_bytes) + len(img.config_bytes) + sum(img.layer_sizes)
    hub = start_hubcache()
    pull_ok("docker.io/library/statsimg:1", tmp_path / "cold", hub, certs)
    pull_ok("docker.io/library/statsimg:1", tmp_path / "warm", hub, certs)
    doc = stats(hub.store, 2)
    [row] = [i for i in doc["images"] if i["reference"] == "docker.io/library/statsimg:1"]
    assert row["digest"] == img.manifest_digest
    assert (row["pulls"], row["saved"]) == (2, 1)  # the first went upstream, the second came from the store
    assert row["bytes"] == 2 * image_bytes and row["store_bytes"] == image_bytes
    assert doc["total"]["pulls"] == 2 and doc["total"]["saved"] == 1
    [client] = doc["clients"]
    assert client["client"] == "127.0.0.1" and client["pulls"] == 2 and client["bytes"] == 2 * image_bytes
    text = hubcache("stats", "--store", str(hub.store))
    assert "docker.io/library/statsimg:1" in text.stdout and "served 2 pulls: 1 from the store" in text.stdout
    listed = hubcache("ls", "--store", str(hub.store), "statsimg*")
    assert listed.returncode == 0 and "docker.io/library/statsimg:1" in listed.stdout, listed.stderr
    hub.stop()
    hub.start()
    pull_ok("docker.io/library/statsimg:1", tmp_path / "again", hub, certs)
    doc = stats(hub.store, 3)
    [row] = [i for i in doc["images"] if i["reference"] == "docker.io/library/statsimg:1"]
    assert (row["pulls"], row["saved"], row["bytes"]) == (3, 2, 3 * image_bytes)


def test_evict_beside_a_running_proxy_frees_the_image_and_the_next_pull_fetches_it_again(upstream, start_hubcache,
                                                                                          certs, tmp_path):
    img = upstream.push_image("library/evictimg", "1", [(200_000, next(_seeds))])
    hub = start_hubcache()
    cold = pull_ok("docker.io/library/evictimg:1", tmp_path / "cold", hub, certs)
    res = hubcache("evict", "--store", str(hub.store), "evictimg:1")
    assert res.returncode == 0 and "evicted 3 manifests and blobs" in res.stdout, res.stdout + res.stderr
    assert hubcache("ls", "--store", str(hub.store), "evictimg*").returncode == 1
    mark = upstream.mark()
    again = pull_ok("docker.io/library/evictimg:1", tmp_path / "again", hub, certs)
    assert (again / img.layer_digests[0].split(":")[1]).read_bytes() == (cold / img.layer_digests[0].split(":")[1]).read_bytes()
    fetched = {r.path.rsplit("/", 1)[-1] for r in upstream.requests_since(mark) if "/blobs/" in r.path and r.method == "GET"}
    assert img.layer_digests[0] in fetched, "the evicted layer was not fetched again"
