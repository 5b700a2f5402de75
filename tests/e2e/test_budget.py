"""Docker Hub's pull budget through hubcache: counted pulls equal the tag changes, not the pulls;
a pool spreads them, by either family of limit headers, preferring an unlimited (paid) account;
when budgets are spent, cached tags still pull; one account's pull limit (429 TOOMANYREQUESTS)
is not the address's abuse limit (a bare 429). The upstream counts and limits pulls like Docker
Hub (scripts/harness/hubfront.py)."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request

import pytest

from harness import budgetdemo
from harness.clients import direct_request, proxied_request, skopeo_copy
from harness.proxy import free_port

pytestmark = pytest.mark.e2e
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
POOL = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture
def limited(upstream):
    upstream.set_limits({"alice": 200, "bob": 200, "anonymous": 100, "pusher": None}, retry_after=0)
    upstream.reset_pulls()
    yield upstream
    upstream.abuse_limit(0)
    upstream.set_limits(None)


def budget_gauges(port: int) -> dict[str, float]:
    """hubcache_pull_budget_remaining by account, from hubcache's /metrics."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^hubcache_pull_budget_remaining\{account="([^"]+)"\} (\S+)$', page, re.M)
    return {account: float(value) for account, value in found}


def manifest_requests(upstream, mark: int) -> list[tuple[str, int]]:
    """(method, status) of every manifest request that reached the registry host since `mark`."""
    return [(r.method, r.status) for r in upstream.requests_since(mark) if "/manifests/" in r.path]


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
    # alice, the only account, is spent until her window ends: the next pull is served stale
    # without asking (the HEAD told the tag moved; asking again would only get another 429)
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


def _pull(ref: str, dest, hub, certs):
    res = skopeo_copy(f"docker.io/{ref}", dest, proxy=hub.url, cert_dir=certs)
    assert res.returncode == 0, res.stderr
    return (dest / "manifest.json").read_bytes()


@pytest.mark.parametrize(("family", "window"), [("ratelimit", 21600), ("x-ratelimit", 3600)])
def test_the_pool_and_the_budget_metric_follow_either_header_family(limited, start_hubcache, certs, tmp_path,
                                                                      family, window):
    """alice has 5 pulls, bob 200: once hubcache has read both, every pull goes as bob. Were the
    headers not read, both would stay unknown and every pull would go as alice, the first."""
    limited.set_limits({"alice": 5, "bob": 200, "anonymous": 100, "pusher": None}, retry_after=0, window=window,
                       headers=family)
    _, sent, _ = direct_request(limited.ca_cert, "HEAD", "registry-1.docker.io", "/v2/library/x/manifests/1")
    assert {k for k in sent if "ratelimit-" in k} == {  # the fake sends this family only
        f"{family}-limit", f"{family}-remaining", "docker-ratelimit-source"}
    assert sent[f"{family}-remaining"] == f"100;w={window}"
    images = [f"library/family-{family}-{i}" for i in range(4)]
    for i, name in enumerate(images):
        limited.push_image(name, "1", [(50_000, 7100 + i + (10 if family == "x-ratelimit" else 0))])
    limited.reset_pulls()
    port = free_port()
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", POOL)
    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_metrics_listen=127.0.0.1:{port}")
    for name in images:
        _pull(f"{name}:1", tmp_path / name.split("/")[1], hub, certs)
    assert limited.pulls_by_account() == {"alice": 1, "bob": 3}  # alice first (both unknown), then bob
    assert budget_gauges(port) == {"alice": 4, "bob": 197}
    assert "pull limit" not in hub.log()


def test_an_unlimited_paid_account_is_preferred_and_shown_as_unlimited(limited, start_hubcache, certs, tmp_path):
    limited.add_account("pro", "pro-pw")
    limited.set_limits({"alice": 1000, "pro": None, "pusher": None}, retry_after=0)  # pro: docker-ratelimit-source only
    images = [f"library/paid-{i}" for i in range(4)]
    for i, name in enumerate(images):
        limited.push_image(name, "1", [(50_000, 7120 + i)])
    limited.reset_pulls()
    port = free_port()
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", {"alice": "alice-pw", "pro": "pro-pw"})
    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_metrics_listen=127.0.0.1:{port}")
    for name in images:
        _pull(f"{name}:1", tmp_path / name.split("/")[1], hub, certs)
    # alice first (nothing known), pro next (not seen yet); once pro is known unlimited, only pro,
    # though alice has 999 pulls left
    assert limited.pulls_by_account() == {"alice": 1, "pro": 3}
    assert budget_gauges(port) == {"alice": 999, "pro": math.inf}


def test_a_bare_429_backs_off_the_host_serves_stale_and_spends_no_account(limited, start_hubcache, certs, tmp_path):
    limited.set_limits({"alice": 200, "bob": 200, "pusher": None}, retry_after=0, window=3600, headers="x-ratelimit")
    limited.push_image("library/abuse-a", "1", [(100_000, 7130)])
    limited.push_image("library/abuse-b", "1", [(100_000, 7131)])
    limited.reset_pulls()
    port = free_port()
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", POOL)
    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_metrics_listen=127.0.0.1:{port}",
                         "hubcache_tag_ttl=0", "hubcache_backoff=3")
    first = _pull("library/abuse-a:1", tmp_path / "a1", hub, certs)
    _pull("library/abuse-b:1", tmp_path / "b1", hub, certs)
    before, pulls = budget_gauges(port), limited.pulls_by_account()
    assert before == {"alice": 199, "bob": 199} and pulls == {"alice": 1, "bob": 1}
    limited.push_image("library/abuse-a", "1", [(100_000, 7132)])  # the tag moves
    limited.push_image("library/abuse-c", "1", [(100_000, 7133)])  # not in hubcache's store

    limited.abuse_limit(600)  # every request from this address: a bare 429
    mark = limited.mark()
    assert _pull("library/abuse-a:1", tmp_path / "a2", hub, certs) == first  # stale, not an error
    missed = skopeo_copy("docker.io/library/abuse-c:1", tmp_path / "c", proxy=hub.url, cert_dir=certs)
    assert missed.returncode != 0 and "abuse limit" in missed.stderr, missed.stderr  # the back-off's error
    # one request met the 429 (the tag's HEAD); the miss after it was not sent, as no account
    assert manifest_requests(limited, mark) == [("HEAD", 429)]
    assert budget_gauges(port) == before and limited.pulls_by_account() == pulls
    assert "abuse limit" in hub.log() and "pull limit" not in hub.log()

    limited.abuse_limit(0)
    time.sleep(3.5)  # hubcache_backoff
    moved = _pull("library/abuse-a:1", tmp_path / "a3", hub, certs)
    assert moved != first  # the accounts were not marked spent: the moved tag is pulled at once
    assert _pull("library/abuse-c:1", tmp_path / "c2", hub, certs)
    assert sum(limited.pulls_by_account().values()) == 4


def test_one_accounts_pull_limit_lets_the_next_pull_go_as_another_at_once(limited, start_hubcache, certs, tmp_path):
    limited.set_limits({"alice": 200, "bob": 150, "pusher": None}, retry_after=0)
    for i in range(3):
        limited.push_image(f"library/toomany-{i}", "1", [(50_000, 7140 + i)])
    limited.reset_pulls()
    port = free_port()
    creds = budgetdemo.write_credentials(tmp_path / "hub.toml", POOL)
    hub = start_hubcache(f"hubcache_credentials={creds}", f"hubcache_metrics_listen=127.0.0.1:{port}")
    _pull("library/toomany-0:1", tmp_path / "0", hub, certs)  # as alice: 199 left
    _pull("library/toomany-1:1", tmp_path / "1", hub, certs)  # as bob (not known yet): 149 left
    limited.set_limits({"alice": 1, "bob": 150, "pusher": None}, retry_after=0)  # alice spent elsewhere
    mark = limited.mark()
    # one GET, as a client's first try: hubcache picks alice (199 left, as far as it knows), Hub
    # refuses, and the client gets Hub's own answer (nothing stored to serve instead)
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", "registry-1.docker.io",
                                      "/v2/library/toomany-2/manifests/1", [("Accept", OCI_MANIFEST)])
    assert status == 429 and json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    _pull("library/toomany-2:1", tmp_path / "2", hub, certs)  # the next pull, at once: no back-off to wait out
    assert manifest_requests(limited, mark) == [("GET", 429), ("GET", 200)]
    assert limited.pulls_by_account() == {"alice": 1, "bob": 2}  # the 429 was alice's; the pull went as bob
    assert budget_gauges(port) == {"alice": 0, "bob": 148}
    assert "pull limit reached for alice" in hub.log()
    assert "abuse limit" not in hub.log() and "not asked for" not in hub.log()  # no back-off
