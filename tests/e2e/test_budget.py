"""Docker Hub's pull budget through hubcache: counted pulls equal the tag changes, not the pulls;
a pool spreads them; when budgets are spent, cached tags still pull. The upstream counts and
limits pulls like Docker Hub (tests/support/hubfront.py)."""

from __future__ import annotations

import pytest

from harness import budgetdemo
from harness.clients import skopeo_copy

pytestmark = pytest.mark.e2e
POOL = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture
def limited(upstream):
    upstream.set_limits({"alice": 200, "bob": 200, "anonymous": 100, "pusher": None}, retry_after=0)
    upstream.reset_pulls()
    yield upstream
    upstream.set_limits(None)


def test_repeated_ci_pulls_spend_only_the_tag_changes(limited, start_hubcache, certs, tmp_path):
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", POOL)
    hub = start_hubcache(f"hubcache_credentials={creds}", "hubcache_tag_ttl=0")  # revalidate on every pull
    result = budgetdemo.run(limited, hub, certs, tmp_path / "pulls", pipelines=10, move_every=4)
    print(result.line())
    assert result.pulls == 20 and result.tag_changes == 4
    assert result.spent == result.tag_changes
    assert set(result.counted) <= set(POOL)  # spent as the pool's accounts, never anonymously
    assert abs(result.counted.get("alice", 0) - result.counted.get("bob", 0)) <= 1  # spread over the pool


def test_spent_budget_still_serves_cached_tags(limited, start_hubcache, certs, tmp_path):
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", {"alice": "alice-pw"})
    limited.set_limits({"alice": 1, "pusher": None}, retry_after=0)
    limited.push_image("library/spent", "1", [(100_000, 61)])
    hub = start_hubcache(f"hubcache_credentials={creds}", "hubcache_tag_ttl=0")
    first = skopeo_copy("docker.io/library/spent:1", tmp_path / "a", proxy=hub.url, cert_dir=certs)
    assert first.returncode == 0, first.stderr
    limited.push_image("library/spent", "1", [(100_000, 62)])  # the tag moves; alice has no pull left
    mark = limited.mark()
    again = skopeo_copy("docker.io/library/spent:1", tmp_path / "b", proxy=hub.url, cert_dir=certs)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()
    assert any(r.status == 429 for r in limited.requests_since(mark))  # Hub said no: served stale
    assert "stale" in hub.log() and "pull limit" in hub.log()
    # after the 429 hubcache backs off: the next pull is served stale without spending or asking
    mark = limited.mark()
    third = skopeo_copy("docker.io/library/spent:1", tmp_path / "c", proxy=hub.url, cert_dir=certs)
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "c" / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()
    assert limited.requests_since(mark) == []


def test_budget_reserve_keeps_the_last_pulls(limited, start_hubcache, certs, tmp_path):
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", {"alice": "alice-pw"})
    limited.set_limits({"alice": 3, "pusher": None}, retry_after=0)
    limited.push_image("library/reserve", "1", [(100_000, 63)])
    hub = start_hubcache(f"hubcache_credentials={creds}", "hubcache_tag_ttl=0", "hubcache_budget_reserve=3")
    first = skopeo_copy("docker.io/library/reserve:1", tmp_path / "a", proxy=hub.url, cert_dir=certs)
    assert first.returncode == 0, first.stderr  # spends 1: 2 left, below the reserve of 3
    limited.push_image("library/reserve", "1", [(100_000, 64)])
    mark = limited.mark()
    again = skopeo_copy("docker.io/library/reserve:1", tmp_path / "b", proxy=hub.url, cert_dir=certs)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()
    assert [r.method for r in limited.requests_since(mark) if "/manifests/" in r.path] == ["HEAD"]  # free
    assert limited.pulls_by_account() == {"alice": 1}
    assert "pull reserve" in hub.log()


def test_docker_daemon_pulls_spend_the_pool_once(limited, start_hubcache, tmp_path):
    from harness.engines import Docker, missing_engine

    if why := missing_engine("docker"):
        pytest.skip(why)
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", POOL)
    limited.push_image("library/dockerbudget", "1", [(200_000, 80)], fmt="v2s2")
    hub = start_hubcache(f"hubcache_credentials={creds}", "hubcache_tag_ttl=0")
    limited.reset_pulls()
    ref = "docker.io/library/dockerbudget:1"
    with Docker(tmp_path / "docker", proxy=hub.url, ca_cert=hub.ca_cert) as docker:
        docker.pull(ref)
        spent = limited.pulls_by_account()
        assert sum(spent.values()) == 1 and set(spent) <= set(POOL)  # the daemon logged in nowhere
        for _ in range(3):  # later jobs: HEAD-revalidated, served from the store
            docker.remove(ref)
            docker.pull(ref)
        assert limited.pulls_by_account() == spent
