"""Registries other than Docker Hub, cached like it (issue 12): a ghcr-like registry (token realm on
its own host), a gitlab-like one (realm on gitlab.com) and an mcr-like one (anonymous, blobs on a
data host), each the real CNCF registry (harness.registries). Cold pulls are byte-identical to
direct ones, warm pulls reach none of that registry's hosts, and pulls keep working with the
registry stopped, from a warm hubcache and from one started while it is down."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from harness.clients import dir_files, skopeo_copy, warm_pull_ok
from harness.hubenv import GHCR_HOST, GITLAB_HOST, MCR_HOST
from harness.registries import BY_NAME

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(91000)
HUBCACHE = str(Path(sys.executable).parent / "hubcache")


def _hosts(registry: str) -> set[str]:
    spec = BY_NAME[registry]
    return {spec.name} | {h for h, _ in spec.addresses[1:]}


@pytest.mark.parametrize("registry", [GHCR_HOST, GITLAB_HOST, MCR_HOST])
def test_a_public_image_of_another_registry_is_cached_and_replayed_offline(upstream, start_hubcache, certs, tmp_path,
                                                                            registry):
    img = upstream.push_image("team/cached", "1", [(3 * MiB, next(_seeds)), (200_000, next(_seeds))], registry=registry)
    ref = f"{registry}/team/cached:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    hub = start_hubcache()
    mark = upstream.mark()
    cold = skopeo_copy(ref, tmp_path / "cold", proxy=hub.url, cert_dir=certs)
    assert cold.returncode == 0, cold.stderr
    assert dir_files(tmp_path / "cold") == dir_files(tmp_path / "direct")
    reqs = upstream.requests_since(mark)
    assert {r.host for r in reqs} <= _hosts(registry), reqs  # nothing of it went to Docker Hub's hosts
    for d in (img.config_digest, *img.layer_digests):  # each blob fetched once
        assert len([r for r in reqs if r.method == "GET" and d.split(":")[1] in r.path and r.status == 200]) == 1, reqs
    assert f"miss        GET  manifest {registry}/team/cached 1 200" in hub.log()

    warm_pull_ok(upstream, hub, ref, tmp_path / "warm", tmp_path / "direct", certs)
    history = subprocess.run([HUBCACHE, "history", ref, "--store", hub.store], capture_output=True, text=True)
    assert history.returncode == 0 and f"  {ref}  {img.manifest_digest}" in history.stdout, history

    with upstream.down(registry=registry):
        offline = skopeo_copy(ref, tmp_path / "offline", proxy=hub.url, cert_dir=certs)
        assert offline.returncode == 0, offline.stderr
        hub.stop()
        hub.start()  # started while the registry is down: /v2/ and tokens still answered here
        again = skopeo_copy(ref, tmp_path / "again", proxy=hub.url, cert_dir=certs)
        assert again.returncode == 0, again.stderr
        assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
        missing = skopeo_copy(f"{registry}/team/nevercached:1", tmp_path / "missing", proxy=hub.url, cert_dir=certs)
        assert missing.returncode != 0 and f"{registry}/team/nevercached:1" in missing.stderr, missing.stderr


def test_a_blob_two_registries_serve_is_stored_once_and_private_content_stays_in_its_registry(
        upstream, start_hubcache, certs, tmp_path):
    from harness.clients import proxied_request
    from harness.hubenv import HUB

    seed = next(_seeds)
    on_hub = upstream.push_image("team/shared", "1", [(2 * MiB, seed)], registry=HUB)
    on_ghcr = upstream.push_image("team/shared", "1", [(2 * MiB, seed)], registry=GHCR_HOST)
    layer = on_hub.layer_digests[0]
    assert on_ghcr.layer_digests[0] == layer
    hub = start_hubcache()
    first = skopeo_copy("docker.io/team/shared:1", tmp_path / "hub", proxy=hub.url, cert_dir=certs)
    assert first.returncode == 0, first.stderr
    mark = upstream.mark()
    second = skopeo_copy(f"{GHCR_HOST}/team/shared:1", tmp_path / "ghcr", proxy=hub.url, cert_dir=certs)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "ghcr" / layer.split(":")[1]).read_bytes() == (tmp_path / "hub" / layer.split(":")[1]).read_bytes()
    at_ghcr = [r for r in upstream.requests_since(mark) if layer.split(":")[1] in r.path]
    # ghcr's manifest (verified) says the layer is in that repository: its bytes came from the store
    assert at_ghcr == []

    # a private image of ghcr, pulled with alice's own ghcr login, is not served under any other name
    secret = upstream.push_image("acme/ghcrsecret", "1", [(300_000, next(_seeds))], registry=GHCR_HOST)
    upstream.set_private("acme/ghcrsecret", ["pusher", "alice"], registry=GHCR_HOST)
    own = skopeo_copy(f"{GHCR_HOST}/acme/ghcrsecret:1", tmp_path / "own", proxy=hub.url, cert_dir=certs,
                      creds=upstream.login("alice", GHCR_HOST))
    assert own.returncode == 0, own.stderr
    private_layer = secret.layer_digests[0]
    for host, path in ((GITLAB_HOST, f"/v2/team/anything/blobs/{private_layer}"),
                       ("registry-1.docker.io", f"/v2/library/anything/blobs/{private_layer}"),
                       (GHCR_HOST, f"/v2/team/shared/blobs/{private_layer}")):
        status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", host, path)
        assert status in (401, 404) and len(body) < 1000, (host, status)

    hub.stop()
    from hubcache.store import Store

    store = Store(hub.store)
    try:
        assert store.blob_info(layer).size == len((tmp_path / "hub" / layer.split(":")[1]).read_bytes())
        assert store.size() < 2 * 2 * MiB  # one copy of the shared 2 MiB layer
        assert sorted(r for r in store.repositories(private_layer)) == ["C:ghcr.io/acme/ghcrsecret"]
    finally:
        store.close()


@pytest.mark.parametrize("registry", [MCR_HOST, GITLAB_HOST])
def test_concurrent_cold_pulls_of_another_registry_fetch_each_object_once(upstream, start_hubcache, certs, tmp_path,
                                                                         registry):
    """Single flight is by digest whatever the registry: 8 pulls at once, one fetch of each object."""
    img = upstream.push_image("team/together", "1", [(4 * MiB, next(_seeds)), (4 * MiB, next(_seeds))], registry=registry)
    ref = f"{registry}/team/together:1"
    direct = skopeo_copy(ref, tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    hub = start_hubcache()
    mark = upstream.mark()
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    env = {"HTTPS_PROXY": hub.url, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs),
                               f"docker://{ref}", f"dir:{tmp_path / f'pull-{i}'}"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(8)]
    try:
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(rc == 0 for rc, _ in results), results
    for i in range(8):
        assert dir_files(tmp_path / f"pull-{i}") == dir_files(tmp_path / "direct")
    reqs = upstream.requests_since(mark)
    manifest_gets = [r for r in reqs if r.method == "GET" and "/manifests/" in r.path and r.status == 200]
    assert len(manifest_gets) == 1, manifest_gets
    for d in (img.config_digest, *img.layer_digests):
        bytes_gets = [r for r in reqs if r.method == "GET" and d.split(":")[1] in r.path and r.status == 200]
        assert len(bytes_gets) == 1, (d, bytes_gets)
