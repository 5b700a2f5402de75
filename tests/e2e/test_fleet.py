"""A fleet of hubcache hosts under one parent registry (issue 13, docs/design.md, "A parent registry"): Debian's
docker-registry 2.8 in proxy mode (harness.parent) over TLS as https://mirror.internal, with a CA
of its own and an account of its own at the fake Docker Hub, and hubcache instances with stores of
their own. What reached Docker Hub is read from the fake Hub's request log, what reached the
parent from its own; every pull is compared byte for byte with a direct one."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import urllib.request

import pytest

from harness.clients import dir_files, pull_ok, skopeo_copy, warm_pull_ok
from harness.hubenv import AUTH_HOST, CDN_HOST, GHCR_HOST, REGISTRY_HOST
from harness.parent import Parent
from harness.proxy import BIN, free_port

pytestmark = pytest.mark.e2e
_seeds = itertools.count(131000)
MiB = 1 << 20
PARENT_ACCOUNT = ("parentbot", "parent-pw")


@pytest.fixture
def parent(upstream, tmp_path):
    upstream.add_account(*PARENT_ACCOUNT)
    with Parent(tmp_path / "parent", upstream, PARENT_ACCOUNT, tls=True) as p:
        yield p


def with_parent(parent: Parent, *more: str) -> list[str]:
    return [f"hubcache_parent={parent.url}", f"hubcache_parent_ca={parent.ca_cert}", *more]


def image(upstream, name: str, sizes=(3 * MiB, 200_000), tag: str = "1"):
    return upstream.push_image(name, tag, [(size, next(_seeds)) for size in sizes])


def hub_gets(reqs) -> tuple[list, list]:
    """(manifest GETs at the registry, blob GETs at the CDN) among `reqs`."""
    manifests = [r for r in reqs if r.host == REGISTRY_HOST and r.method == "GET" and "/manifests/" in r.path]
    cdn = [r for r in reqs if r.host == CDN_HOST and r.method == "GET"]
    return manifests, cdn


def verified_store(hub) -> str:
    """`hubcache verify` of a stopped hubcache's store: exit 0, nothing dropped."""
    hub.stop()
    res = subprocess.run([str(BIN / "hubcache"), "verify", "--store", str(hub.store)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_a_second_host_pulls_what_the_first_brought_into_the_parent_without_docker_hub(
        upstream, parent, start_hubcache, certs, tmp_path):
    img = image(upstream, "library/fleetone")
    ref = "docker.io/library/fleetone:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    port = free_port()
    a = start_hubcache(*with_parent(parent, f"hubcache_metrics_listen=127.0.0.1:{port}"), name="a")
    b = start_hubcache(*with_parent(parent), name="b")
    before, pmark = upstream.pulls_by_account(), parent.mark()
    assert dir_files(pull_ok(ref, tmp_path / "pull-a", a, certs)) == dir_files(direct)
    after_a = upstream.pulls_by_account()
    # host A's pull went through the parent: one counted pull, the parent's; none of hubcache's own
    assert after_a.get("parentbot", 0) == before.get("parentbot", 0) + 1, after_a
    assert sum(after_a.values()) == sum(before.values()) + 1, after_a
    asked = {r.path for r in parent.requests_since(pmark) if r.status == 200}
    assert {f"/v2/library/fleetone/blobs/{d}" for d in img.layer_digests} <= asked
    assert "/v2/library/fleetone/manifests/1" in asked  # by tag: the parent keeps the tag for an outage
    assert "from the parent" in a.log()
    parent.wait_stored(img.layer_digests)
    mark = upstream.mark()
    assert dir_files(pull_ok(ref, tmp_path / "pull-b", b, certs)) == dir_files(direct)
    manifests, cdn = hub_gets(upstream.requests_since(mark))
    assert manifests == [] and cdn == [], (manifests, cdn)
    assert upstream.pulls_by_account() == after_a
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    blobs = len([p for p in asked if "/blobs/" in p])  # the layers and the config
    assert f'hubcache_parent_requests_total{{kind="blob",registry="docker.io",result="ok"}} {blobs}.0' in metrics, metrics
    assert 'hubcache_parent_requests_total{kind="manifest",registry="docker.io",result="ok"} 1.0' in metrics


def test_without_the_parents_ca_the_parent_is_not_trusted_and_pulls_come_from_docker_hub(
        upstream, parent, start_hubcache, certs, tmp_path):
    image(upstream, "library/fleetnoca")
    direct = pull_ok("docker.io/library/fleetnoca:1", tmp_path / "direct", None, certs)
    hub = start_hubcache(f"hubcache_parent={parent.url}")  # the registries' trust: not the parent's CA
    pmark = parent.mark()
    assert dir_files(pull_ok("docker.io/library/fleetnoca:1", tmp_path / "pull", hub, certs)) == dir_files(direct)
    assert parent.requests_since(pmark) == []  # the TLS handshake failed: no request was made
    backoff = [line for line in hub.log().splitlines() if "parent https://mirror.internal failed" in line]
    assert len(backoff) == 1 and "certificate" in backoff[0] and "Traceback" not in hub.log(), hub.log()


def test_with_the_parent_stopped_an_empty_host_falls_back_to_docker_hub_or_fails_clearly_with_never(
        upstream, parent, start_hubcache, certs, tmp_path):
    image(upstream, "library/fleetdown")
    ref = "docker.io/library/fleetdown:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    parent.stop()
    never = start_hubcache(*with_parent(parent, "hubcache_parent_fallback=never"), name="never")
    res = skopeo_copy(ref, tmp_path / "pull-never", proxy=never.url, cert_dir=certs)
    assert res.returncode != 0
    assert "hubcache_parent_fallback=never" in res.stderr, res.stderr
    mark = upstream.mark()
    third = start_hubcache(*with_parent(parent), name="third")
    assert dir_files(pull_ok(ref, tmp_path / "pull-third", third, certs)) == dir_files(direct)
    manifests, cdn = hub_gets(upstream.requests_since(mark))
    assert manifests and cdn  # from Docker Hub itself
    warnings = [line for line in third.log().splitlines() if "parent https://mirror.internal failed" in line]
    assert len(warnings) == 1 and "not asked for" in warnings[0], third.log()


def test_a_corrupt_blob_in_the_parent_is_never_served_nor_stored_and_good_bytes_come_from_docker_hub(
        upstream, parent, start_hubcache, certs, tmp_path):
    img = image(upstream, "library/fleetcorrupt", sizes=(3 * MiB, 300_000))
    ref = "docker.io/library/fleetcorrupt:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    a = start_hubcache(*with_parent(parent), name="a")
    pull_ok(ref, tmp_path / "pull-a", a, certs)
    parent.wait_stored(img.layer_digests)
    for digest in img.layer_digests:  # flip one byte of each layer in the parent's storage
        path = parent.blob_file(digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    b = start_hubcache(*with_parent(parent), name="b")
    mark = upstream.mark()
    # a client retries a layer cut short, as docker and containerd do
    res = skopeo_copy(ref, tmp_path / "pull-b", proxy=b.url, cert_dir=certs, extra_args=["--retry-times", "3"])
    assert res.returncode == 0, res.stderr + b.log()[-3000:]
    assert dir_files(tmp_path / "pull-b") == dir_files(direct)
    _, cdn = hub_gets(upstream.requests_since(mark))
    assert [r for r in cdn if any(d.split(":")[1] in r.path for d in img.layer_digests)], cdn
    log = b.log()
    assert "parent https://mirror.internal failed" in log and "hashing to" in log, log
    assert "Traceback" not in log
    with upstream.down():  # what host B stored is the good bytes, served without Hub
        warm_pull_ok(upstream, b, ref, tmp_path / "warm-b", direct, certs)
    assert ": 0 did not match their digest" in verified_store(b)


def test_with_docker_hub_down_an_empty_host_still_pulls_what_the_parent_has(
        upstream, parent, start_hubcache, certs, tmp_path):
    img = image(upstream, "library/fleetoutage")
    ref = "docker.io/library/fleetoutage:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    a = start_hubcache(*with_parent(parent), name="a")
    pull_ok(ref, tmp_path / "pull-a", a, certs)
    parent.wait_stored(img.layer_digests)
    b = start_hubcache(*with_parent(parent), name="b")
    with upstream.down():
        assert dir_files(pull_ok(ref, tmp_path / "pull-b", b, certs)) == dir_files(direct)
    assert "from the parent" in b.log()


def test_a_pull_with_the_clients_own_login_never_reaches_the_parent(upstream, parent, start_hubcache, certs, tmp_path):
    upstream.add_account("alice", "alice-pw")
    img = image(upstream, "acme/fleetsecret")
    upstream.set_private("acme/fleetsecret", ["alice"])
    ref = "docker.io/acme/fleetsecret:1"
    hub = start_hubcache(*with_parent(parent))
    pmark = parent.mark()
    res = skopeo_copy(ref, tmp_path / "pull", proxy=hub.url, cert_dir=certs, creds="alice:alice-pw")
    assert res.returncode == 0, res.stderr
    assert [r for r in parent.requests_since(pmark) if "fleetsecret" in r.path] == []
    assert (tmp_path / "pull" / img.layer_digests[0].split(":")[1]).is_file()


def test_hubcache_starts_and_serves_with_its_parent_down_and_uses_it_once_it_is_up(
        upstream, parent, start_hubcache, certs, tmp_path):
    image(upstream, "library/fleetlate")
    img2 = image(upstream, "library/fleetlater")
    direct = pull_ok("docker.io/library/fleetlate:1", tmp_path / "direct", None, certs)
    parent.stop()
    hub = start_hubcache(*with_parent(parent, "hubcache_backoff=1"))
    assert dir_files(pull_ok("docker.io/library/fleetlate:1", tmp_path / "cold", hub, certs)) == dir_files(direct)
    with upstream.down():  # a hit needs neither
        warm_pull_ok(upstream, hub, "docker.io/library/fleetlate:1", tmp_path / "warm", direct, certs)
    parent.start()
    time.sleep(1.5)  # the back-off ends
    pmark = parent.mark()
    pull_ok("docker.io/library/fleetlater:1", tmp_path / "later", hub, certs)
    assert {f"/v2/library/fleetlater/blobs/{d}" for d in img2.layer_digests} <= {r.path for r in parent.requests_since(pmark)}
    assert "parent https://mirror.internal answers again" in hub.log()


def test_a_moved_tag_is_seen_by_every_host_within_the_tag_ttl(upstream, parent, start_hubcache, certs, tmp_path):
    image(upstream, "library/fleetmoved")
    ref = "docker.io/library/fleetmoved:1"
    hosts = [start_hubcache(*with_parent(parent, "hubcache_tag_ttl=1"), name=n) for n in ("a", "b")]
    for h in hosts:
        pull_ok(ref, tmp_path / f"old-{h.workdir.name}", h, certs)
    image(upstream, "library/fleetmoved", sizes=(400_000,))  # the tag moves
    moved = pull_ok(ref, tmp_path / "direct-new", None, certs)
    time.sleep(1.5)
    for h in hosts:
        assert dir_files(pull_ok(ref, tmp_path / f"new-{h.workdir.name}", h, certs)) == dir_files(moved)


def test_the_parents_own_login_goes_to_the_parent_from_a_0600_file(upstream, start_hubcache, certs, tmp_path):
    upstream.add_account(*PARENT_ACCOUNT)
    img = image(upstream, "library/fleetlogin")
    direct = pull_ok("docker.io/library/fleetlogin:1", tmp_path / "direct", None, certs)
    with Parent(tmp_path / "parent", upstream, PARENT_ACCOUNT, tls=True, login=("runnerfleet", "fleet-secret")) as parent:
        login = tmp_path / "parent-login"
        login.write_text("runnerfleet:fleet-secret\n")
        os.chmod(login, 0o644)
        with pytest.raises(RuntimeError) as refused:
            start_hubcache(*with_parent(parent, f"hubcache_parent_credentials={login}"), name="refused")
        assert "exited with 2" in str(refused.value) and "chmod 600" in str(refused.value), refused.value
        os.chmod(login, 0o600)
        hub = start_hubcache(*with_parent(parent, f"hubcache_parent_credentials={login}"), name="hub")
        pmark = parent.mark()
        assert dir_files(pull_ok("docker.io/library/fleetlogin:1", tmp_path / "pull", hub, certs)) == dir_files(direct)
        ok = {r.path for r in parent.requests_since(pmark) if r.status == 200}
        assert {f"/v2/library/fleetlogin/blobs/{d}" for d in img.layer_digests} <= ok
        assert "fleet-secret" not in hub.log()


def test_with_tags_at_the_parent_hubcache_itself_asks_docker_hub_nothing(upstream, parent, start_hubcache, certs, tmp_path):
    image(upstream, "library/fleettags")
    ref = "docker.io/library/fleettags:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    hub = start_hubcache(*with_parent(parent, "hubcache_parent_tags=parent", "hubcache_tag_ttl=0"))
    mark, pmark = upstream.mark(), parent.mark()
    assert dir_files(pull_ok(ref, tmp_path / "cold", hub, certs)) == dir_files(direct)
    assert dir_files(pull_ok(ref, tmp_path / "again", hub, certs)) == dir_files(direct)  # revalidated (TTL 0)
    tokens = [r for r in upstream.requests_since(mark) if r.host == AUTH_HOST]
    assert tokens and {r.extra.get("account") for r in tokens} == {"parentbot"}, tokens  # only the parent's
    at_parent = [(r.method, r.path) for r in parent.requests_since(pmark)]
    assert ("GET", "/v2/library/fleettags/manifests/1") in at_parent
    assert ("HEAD", "/v2/library/fleettags/manifests/1") in at_parent  # the revalidation went there too


def test_another_registry_has_a_parent_of_its_own(upstream, start_hubcache, certs, tmp_path):
    """ghcr.io=https://mirror.internal:5000: a parent per registry, the registry's own challenge
    and token realm for hubcache's HEAD, the parent's own account at that registry."""
    upstream.add_account("ghcrparent", "ghcr-parent-pw", registry=GHCR_HOST)
    img = upstream.push_image("team/fleetghcr", "1", [(3 * MiB, next(_seeds)), (100_000, next(_seeds))], registry=GHCR_HOST)
    ref = f"{GHCR_HOST}/team/fleetghcr:1"
    direct = pull_ok(ref, tmp_path / "direct", None, certs)
    with Parent(tmp_path / "ghcr-parent", upstream, ("ghcrparent", "ghcr-parent-pw"), tls=True, port=5000,
                remote=f"https://{GHCR_HOST}") as parent:
        sets = [f"hubcache_parent={GHCR_HOST}={parent.url}", f"hubcache_parent_ca={parent.ca_cert}"]
        a, b = (start_hubcache(*sets, name=n) for n in ("a", "b"))
        pmark = parent.mark()
        assert dir_files(pull_ok(ref, tmp_path / "pull-a", a, certs)) == dir_files(direct)
        assert {f"/v2/team/fleetghcr/blobs/{d}" for d in img.layer_digests} <= {
            r.path for r in parent.requests_since(pmark) if r.status == 200}
        parent.wait_stored(img.layer_digests)
        mark = upstream.mark()
        assert dir_files(pull_ok(ref, tmp_path / "pull-b", b, certs)) == dir_files(direct)
        at_ghcr = [r for r in upstream.requests_since(mark) if r.method == "GET" and
                   ("/blobs/" in r.path or "/manifests/" in r.path)]
        assert at_ghcr == [], at_ghcr  # host B: a HEAD at ghcr.io for the tag, everything else from the parent
    # Docker Hub has no parent in that setting: its pulls go to Hub as before
    image(upstream, "library/fleetnohubparent")
    mark = upstream.mark()
    pull_ok("docker.io/library/fleetnohubparent:1", tmp_path / "hub-pull", a, certs)
    assert hub_gets(upstream.requests_since(mark))[1]
