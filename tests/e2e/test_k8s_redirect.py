"""registry.k8s.io serves nothing itself: it answers every /v2/ request with 307 to an Artifact
Registry host that wants a Bearer token of its own realm (here: harness k8sredir.py in front of
the ghcr-like registry). hubcache follows those redirects itself, with an anonymous token of the
realm redirected to, so a pull of registry.k8s.io/NAME is cached under that name: cold pulls are
byte-identical to direct ones, warm pulls reach neither registry.k8s.io nor ghcr.io, and pulls
keep working with both stopped, from a warm hubcache and from one started while they are down."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from harness.clients import dir_files, proxied_request, skopeo_copy, warm_pull_ok
from harness.hubenv import GHCR_HOST, K8S_HOST
from harness.registries import K8S_PREFIX

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(97000)
HUBCACHE = str(Path(sys.executable).parent / "hubcache")


def test_a_redirecting_registry_is_followed_by_hubcache_and_cached_under_its_own_name(upstream, start_hubcache, certs,
                                                                                     tmp_path):
    img = upstream.push_image("pause", "3.9", [(2 * MiB, next(_seeds)), (100_000, next(_seeds))], registry=K8S_HOST)
    ref = f"{K8S_HOST}/pause:3.9"
    # What the registry redirected to serves, pulled directly (skopeo follows the redirects itself
    # but takes its token from the challenge of the redirected /v2/ for the name `pause`, which
    # the ghcr-like realm does not grant for k8s-artifacts-prod/images/pause)
    direct = skopeo_copy(f"{GHCR_HOST}/{K8S_PREFIX}pause:3.9", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    hub = start_hubcache()

    status, headers, _ = proxied_request(hub.port, hub.ca_cert, "GET", K8S_HOST, "/v2/")
    assert status == 200, (status, headers)  # hubcache brings the token itself: no login to ask for

    mark = upstream.mark()
    cold = skopeo_copy(ref, tmp_path / "cold", proxy=hub.url, cert_dir=certs)
    assert cold.returncode == 0, cold.stderr
    assert dir_files(tmp_path / "cold") == dir_files(tmp_path / "direct")
    reqs = upstream.requests_since(mark)
    assert {r.host for r in reqs} == {K8S_HOST, GHCR_HOST}, reqs
    assert [r for r in reqs if r.host == K8S_HOST and r.status != 307] == [], reqs
    for d in (img.config_digest, *img.layer_digests):  # each blob fetched once, at ghcr, with a token
        got = [r for r in reqs if r.host == GHCR_HOST and r.method == "GET" and d.split(":")[1] in r.path and r.status == 200]
        assert len(got) == 1 and got[0].path.startswith("/v2/k8s-artifacts-prod/images/pause/blobs/"), reqs
    assert f"miss        GET  manifest {K8S_HOST}/pause 3.9 200" in hub.log()

    warm_pull_ok(upstream, hub, ref, tmp_path / "warm", tmp_path / "direct", certs)
    history = subprocess.run([HUBCACHE, "history", ref, "--store", hub.store], capture_output=True, text=True)
    assert history.returncode == 0 and f"  {ref}  {img.manifest_digest}" in history.stdout, history

    with upstream.down(registry=K8S_HOST), upstream.down(registry=GHCR_HOST):
        offline = skopeo_copy(ref, tmp_path / "offline", proxy=hub.url, cert_dir=certs)
        assert offline.returncode == 0, offline.stderr
        hub.stop()
        hub.start()  # started while both are down: /v2/ answered from what the store remembers
        again = skopeo_copy(ref, tmp_path / "again", proxy=hub.url, cert_dir=certs)
        assert again.returncode == 0, again.stderr
        assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
        missing = skopeo_copy(f"{K8S_HOST}/nevercached:1", tmp_path / "missing", proxy=hub.url, cert_dir=certs)
        assert missing.returncode != 0 and f"{K8S_HOST}/nevercached:1" in missing.stderr, missing.stderr


def test_a_tag_head_on_a_redirecting_registry_is_answered_by_hubcache_and_then_offline(upstream, start_hubcache,
                                                                                       tmp_path):
    """dockerd and containerd resolve a tag with a HEAD first: hubcache follows registry.k8s.io's
    redirect for it (the client never gets the 307), records the tag, and once the manifest was
    fetched by digest answers the same HEAD with both hosts down."""
    img = upstream.push_image("kube-proxy", "v1.31", [(200_000, next(_seeds))], registry=K8S_HOST)
    hub = start_hubcache()
    accept = [("Accept", img.media_type)]
    status, headers, body = proxied_request(hub.port, hub.ca_cert, "HEAD", K8S_HOST, "/v2/kube-proxy/manifests/v1.31", accept)
    assert status == 200 and "location" not in headers, (status, headers)
    assert headers["docker-content-digest"] == img.manifest_digest and body == b""
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", K8S_HOST,
                                      f"/v2/kube-proxy/manifests/{img.manifest_digest}", accept)
    assert status == 200 and body == img.manifest_bytes
    with upstream.down(registry=K8S_HOST), upstream.down(registry=GHCR_HOST):
        status, headers, _ = proxied_request(hub.port, hub.ca_cert, "HEAD", K8S_HOST, "/v2/kube-proxy/manifests/v1.31",
                                             accept)
        assert status == 200 and headers["docker-content-digest"] == img.manifest_digest, (status, headers)
