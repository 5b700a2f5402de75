"""Offline replay: cached images keep pulling when Docker Hub is down, from a warm or a cold-started
hubcache, and with --offline; misses get a clear OCI error naming the image."""

from __future__ import annotations

import itertools

import pytest

from harness.clients import dir_files, pull_ok, skopeo_copy

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(5000)






def test_cached_images_pull_with_every_upstream_service_stopped(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/offline", "1", [(1 * MiB, next(_seeds)), (200_000, next(_seeds))])
    hub = start_hubcache("hubcache_tag_ttl=0")  # every tag pull wants to revalidate: the hardest case
    cold = pull_ok("docker.io/library/offline:1", tmp_path / "cold", hub, certs)
    with upstream.down():
        by_tag = pull_ok("docker.io/library/offline:1", tmp_path / "tag", hub, certs)
        by_digest = pull_ok(f"docker.io/library/offline@{img.manifest_digest}", tmp_path / "digest", hub, certs)
        assert dir_files(by_tag) == dir_files(cold) and dir_files(by_digest) == dir_files(cold)
        assert "stale" in hub.log()
        hub.stop()
        hub.start()  # a cold start while upstream is unreachable
        again = pull_ok("docker.io/library/offline:1", tmp_path / "again", hub, certs)
        assert dir_files(again) == dir_files(cold)
        miss = skopeo_copy("docker.io/library/nevercached:1", tmp_path / "miss", proxy=hub.url, cert_dir=certs)
        assert miss.returncode != 0
        assert "docker.io/library/nevercached:1" in miss.stderr, miss.stderr
    # upstream is back: the tag is confirmed again, not served stale
    pull_ok("docker.io/library/offline:1", tmp_path / "back", hub, certs)


def test_offline_mode_serves_the_store_and_never_asks_upstream(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/offlinemode", "1", [(500_000, next(_seeds))])
    hub = start_hubcache()
    cold = pull_ok("docker.io/library/offlinemode:1", tmp_path / "cold", hub, certs)
    hub.stop()
    offline = start_hubcache("hubcache_tag_ttl=0", f"hubcache_store={hub.store}", name="offline", args=["--offline"])
    mark = upstream.mark()
    warm = pull_ok("docker.io/library/offlinemode:1", tmp_path / "warm", offline, certs)
    assert dir_files(warm) == dir_files(cold)
    miss = skopeo_copy("docker.io/library/offlinemiss:7", tmp_path / "miss", proxy=offline.url, cert_dir=certs)
    assert miss.returncode != 0
    assert "docker.io/library/offlinemiss:7 is not in hubcache's store and hubcache is offline" in miss.stderr, miss.stderr
    assert upstream.requests_since(mark) == []


def test_docker_daemon_pulls_cached_images_with_upstream_stopped(upstream, start_hubcache, tmp_path):
    from harness.engines import Docker, missing_engine

    if why := missing_engine("docker"):
        pytest.skip(why)
    img = upstream.push_image("library/offlinedocker", "1", [(1 * MiB, next(_seeds))], fmt="v2s2")
    hub = start_hubcache("hubcache_tag_ttl=0")
    with Docker(tmp_path / "docker", proxy=hub.url, ca_cert=hub.ca_cert) as docker:
        docker.pull("docker.io/library/offlinedocker:1")
        with upstream.down():
            for attempt in ("warm", "cold-started"):
                if attempt == "cold-started":
                    hub.stop()
                    hub.start()
                by_digest = f"docker.io/library/offlinedocker@{img.manifest_digest}"
                docker.remove("docker.io/library/offlinedocker:1")
                docker.pull("docker.io/library/offlinedocker:1")
                assert docker.describe("docker.io/library/offlinedocker:1").config_digest == img.config_digest
                docker.remove("docker.io/library/offlinedocker:1")
                docker.pull(by_digest)
                assert docker.describe(by_digest).config_digest == img.config_digest
                docker.remove(by_digest)
                docker.pull("docker.io/library/offlinedocker:1")
        assert "stale" in hub.log()
