"""A fleet of hubcache hosts under one parent registry (issue 13, docs/fleet.md): Debian's
docker-registry 2.8 in proxy mode (harness.parent) with an account of its own at the fake Docker
Hub, and hubcache instances with stores of their own. What each host takes from Docker Hub is
read from the fake Hub's request log; every pull is compared byte for byte with a direct one."""

from __future__ import annotations

import itertools

import pytest

from harness.clients import dir_files, pull_ok
from harness.hubenv import CDN_HOST, REGISTRY_HOST
from harness.parent import Parent

pytestmark = pytest.mark.e2e
_seeds = itertools.count(131000)
MiB = 1 << 20
PARENT_ACCOUNT = ("parentbot", "parent-pw")


@pytest.fixture
def parent(upstream, tmp_path):
    upstream.add_account(*PARENT_ACCOUNT)
    with Parent(tmp_path / "parent", upstream, PARENT_ACCOUNT) as p:
        yield p


def image(upstream, name: str, sizes=(3 * MiB, 200_000)):
    return upstream.push_image(name, "1", [(size, next(_seeds)) for size in sizes])


def hub_gets(reqs) -> tuple[list, list]:
    """(manifest GETs at the registry, blob GETs at the CDN) among `reqs`."""
    manifests = [r for r in reqs if r.host == REGISTRY_HOST and r.method == "GET" and "/manifests/" in r.path]
    cdn = [r for r in reqs if r.host == CDN_HOST and r.method == "GET"]
    return manifests, cdn


def test_a_second_host_pulls_what_the_first_brought_into_the_parent_without_docker_hub(
        upstream, parent, start_hubcache, certs, tmp_path):
    img = image(upstream, "library/fleetone")
    ref = "docker.io/library/fleetone:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    a = start_hubcache(f"hubcache_parent={parent.url}", name="a")
    b = start_hubcache(f"hubcache_parent={parent.url}", name="b")
    before = upstream.pulls_by_account()
    mark = upstream.mark()
    assert dir_files(pull_ok(ref, tmp_path / "pull-a", a, certs)) == dir_files(direct)
    after_a = upstream.pulls_by_account()
    # host A's pull went through the parent: hubcache spent no pull of its own, the parent one
    assert after_a.get("parentbot", 0) == before.get("parentbot", 0) + 1, after_a
    assert sum(after_a.values()) == sum(before.values()) + 1, after_a
    assert parent.blob_file(img.layer_digests[0]).is_file()
    assert "from the parent" in a.log()
    mark = upstream.mark()
    assert dir_files(pull_ok(ref, tmp_path / "pull-b", b, certs)) == dir_files(direct)
    manifests, cdn = hub_gets(upstream.requests_since(mark))
    assert manifests == [] and cdn == [], (manifests, cdn)
    assert upstream.pulls_by_account() == after_a
