"""`hubcache warm` on a .gitlab-ci.yml that uses `default:`, `extends:` through hidden jobs,
`include: local`, `!reference`, variables in image names and both `services:` forms, against a
running `hubcache run` in front of the Docker-Hub-shaped upstream. What shows it worked is what a
runner sees afterwards: with Docker Hub stopped, every image the file names pulls through hubcache
with skopeo, byte for byte as a direct pull got it."""

from __future__ import annotations

import itertools
import subprocess
import textwrap

import pytest

from harness.clients import client_env, dir_files, pull_ok, skopeo_copy
from harness.proxy import BIN

pytestmark = pytest.mark.e2e
MiB = 1 << 20
_seeds = itertools.count(7000)
CDN = "production.cloudflare.docker.com"


def layers(*sizes: int) -> list[tuple[int, int]]:
    return [(size, next(_seeds)) for size in sizes]


def warm(hub, *args: str, cacert=None) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "hubcache"), "warm", "--proxy", hub.url, "--cacert", str(cacert or hub.ca_cert), *args]
    return subprocess.run(cmd, env=client_env(None), capture_output=True, text=True, timeout=600)


CI = """
    include:
      - local: ci/services.yml
    variables:
      PG_VERSION: "12.2"
    default:
      image: wbase:1
    .python:
      image:
        name: wpython:3.12
        entrypoint: [""]
    .tests:
      extends: .python
      services:
        - !reference [.db, services]
        - name: wcache:1.6
          alias: cache
    unit:
      extends: .tests
      script: [pytest]
    lint:
      script: [ruff check]
    publish:
      image: $CI_REGISTRY_IMAGE/publisher:latest
      script: [push]
"""
SERVICES = """
    .db:
      services:
        - wpg:${PG_VERSION}
"""


def test_warm_from_gitlab_ci_fills_the_store_so_every_image_pulls_with_hub_down(upstream, start_hubcache, certs, tmp_path):
    images = {  # reference -> what it is: one multi-platform index, the rest single images
        "docker.io/library/wbase:1": upstream.push_image("library/wbase", "1", layers(1 * MiB)),
        "docker.io/library/wpython:3.12": upstream.push_image("library/wpython", "3.12", layers(3 * MiB, 200_000)),
        "docker.io/library/wcache:1.6": upstream.push_image("library/wcache", "1.6", layers(300_000)),
    }
    index = upstream.push_index("library/wpg", "12.2", {"amd64": layers(2 * MiB, 100_000), "arm64": layers(2 * MiB)})
    repo = tmp_path / "repo"
    (repo / "ci").mkdir(parents=True)
    (repo / ".gitlab-ci.yml").write_text(textwrap.dedent(CI))
    (repo / "ci/services.yml").write_text(textwrap.dedent(SERVICES))
    refs = [*images, "docker.io/library/wpg:12.2"]
    direct = {ref: pull_ok(ref, tmp_path / "direct" / ref.replace("/", "_"), None, certs) for ref in refs}

    hub = start_hubcache()
    mark = upstream.mark()
    res = warm(hub, str(repo))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipped  $CI_REGISTRY_IMAGE/publisher:latest" in res.stdout and "unresolved $CI_REGISTRY_IMAGE" in res.stdout
    assert "warmed 4 of 4 images for linux/amd64" in res.stdout, res.stdout
    fetched = " ".join(r.path for r in upstream.requests_since(mark) if r.host == CDN)
    amd64, arm64 = index.manifests["amd64"], index.manifests["arm64"]
    assert all(d.split(":")[1] in fetched for d in amd64.layer_digests)  # the host's platform only
    assert not any(d.split(":")[1] in fetched for d in arm64.layer_digests)

    mark = upstream.mark()
    again = warm(hub, str(repo))  # a second warm-up finds everything in the store
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r for r in upstream.requests_since(mark) if r.method == "GET"] == []

    with upstream.down():
        for ref in refs:
            dest = tmp_path / "offline" / ref.replace("/", "_")
            res = skopeo_copy(ref, dest, proxy=hub.url, cert_dir=certs)
            assert res.returncode == 0, f"{ref}: {res.stderr}"
            assert dir_files(dest) == dir_files(direct[ref])


def test_warm_reports_each_failure_and_exits_non_zero_while_the_rest_is_warmed(upstream, start_hubcache, tmp_path):
    upstream.push_image("library/wgood", "1", layers(100_000))
    listing = tmp_path / "images.txt"
    listing.write_text("# what the runners pull\nwgood:1\ndocker.io/library/wmissing:1   # gone\nNot/An:Image:\n")
    hub = start_hubcache()
    res = warm(hub, str(listing), "registry.corp.example:5000/team/app:1")
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "ok       docker.io/library/wgood:1" in out
    assert f"failed   docker.io/library/wmissing:1 ({listing}:3): manifest 1: 404" in out
    assert f"failed   Not/An:Image: ({listing}:4): not an image reference" in out
    assert "registry.corp.example:5000/team/app:1 (argument): the certificate the proxy shows for registry.corp.example:5000 " \
        "is not signed by hubcache's CA" in out
    assert "hubcache_registries=+registry.corp.example:5000" in out
    assert "warmed 1 of 4 images" in out


def test_warm_usage_errors_exit_2(upstream, start_hubcache, tmp_path):
    hub = start_hubcache()
    assert warm(hub, "wgood:1", cacert=tmp_path / "nope.pem").returncode == 2
    assert warm(hub, "--platform", "linux/arm/v7/extra", "wgood:1").returncode == 2
    bad = tmp_path / ".gitlab-ci.yml"
    bad.write_text("job:\n  extends: .nowhere\n")
    res = warm(hub, str(tmp_path))
    assert res.returncode == 2 and "extends .nowhere, which is not a job" in res.stderr
