"""Offline replay: cached images keep pulling when Docker Hub is down, from a warm or a cold-started
hubcache, and with --offline; misses get a clear OCI error naming the image."""

from __future__ import annotations

import itertools

import pytest

from support.clients import skopeo_copy

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(5000)


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "version"}


def pull(ref, dest, hub, certs):
    res = skopeo_copy(ref, dest, proxy=hub.url, cert_dir=certs)
    assert res.returncode == 0, f"pull of {ref} failed: {res.stderr}"
    return dest


def test_cached_images_pull_with_every_upstream_service_stopped(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/offline", "1", [(1 * MiB, next(_seeds)), (200_000, next(_seeds))])
    hub = start_hubcache("hubcache_tag_ttl=0")  # every tag pull wants to revalidate: the hardest case
    cold = pull("docker.io/library/offline:1", tmp_path / "cold", hub, certs)
    with upstream.down():
        by_tag = pull("docker.io/library/offline:1", tmp_path / "tag", hub, certs)
        by_digest = pull(f"docker.io/library/offline@{img.manifest_digest}", tmp_path / "digest", hub, certs)
        assert files(by_tag) == files(cold) and files(by_digest) == files(cold)
        assert "stale" in hub.log()
        hub.stop()
        hub.start()  # a cold start while upstream is unreachable
        again = pull("docker.io/library/offline:1", tmp_path / "again", hub, certs)
        assert files(again) == files(cold)
        miss = skopeo_copy("docker.io/library/nevercached:1", tmp_path / "miss", proxy=hub.url, cert_dir=certs)
        assert miss.returncode != 0
        assert "docker.io/library/nevercached:1" in miss.stderr, miss.stderr
    # upstream is back: the tag is confirmed again, not served stale
    pull("docker.io/library/offline:1", tmp_path / "back", hub, certs)


def test_offline_mode_serves_the_store_and_never_asks_upstream(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/offlinemode", "1", [(500_000, next(_seeds))])
    hub = start_hubcache()
    cold = pull("docker.io/library/offlinemode:1", tmp_path / "cold", hub, certs)
    hub.stop()
    offline = start_hubcache("hubcache_tag_ttl=0", f"hubcache_store={hub.store}", name="offline", args=["--offline"])
    mark = upstream.mark()
    warm = pull("docker.io/library/offlinemode:1", tmp_path / "warm", offline, certs)
    assert files(warm) == files(cold)
    miss = skopeo_copy("docker.io/library/offlinemiss:7", tmp_path / "miss", proxy=offline.url, cert_dir=certs)
    assert miss.returncode != 0
    assert "docker.io/library/offlinemiss:7 is not in hubcache's store and hubcache is offline" in miss.stderr, miss.stderr
    assert upstream.requests_since(mark) == []
