"""`hubcache export` and `import` carry a cache to a host without internet (issue 14): exported
beside a running proxy, read by skopeo and containerd by full reference, imported into an empty
store beside an --offline hubcache that then serves the images byte-identical to a direct pull,
asking upstream nothing; a tampered archive is refused."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.clients import _policy_file, client_env, dir_files, pull_ok

pytestmark = pytest.mark.e2e
HUBCACHE = Path(sys.executable).parent / "hubcache"
MiB = 1 << 20
_seeds = itertools.count(14500)


def hubcache(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), *map(str, args)], capture_output=True, text=True, timeout=300)


def from_archive(archive: Path, ref: str, dest: Path) -> Path:
    """`skopeo copy oci-archive:FILE:REF dir:DEST`: the image as skopeo reads it from the archive."""
    res = subprocess.run(["skopeo", "--policy", str(_policy_file(dest)), "copy", "--quiet",
                          f"oci-archive:{archive}:{ref}", f"dir:{dest}"],
                         capture_output=True, text=True, timeout=300, env=client_env(None))
    assert res.returncode == 0, res.stderr
    return dest


@pytest.fixture
def carried(upstream, start_hubcache, certs, tmp_path):
    """Two images pulled through a running hubcache (a Docker schema 2 image, and a two-platform
    OCI index of which only linux/amd64 was pulled), their direct pulls, and the archive exported
    beside it."""
    upstream.push_image("library/carry", "1", [(2 * MiB, next(_seeds)), (300_000, next(_seeds))], fmt="v2s2")
    upstream.push_index("library/carrymulti", "2", {"amd64": [(MiB, next(_seeds))], "arm64": [(MiB, next(_seeds))]})
    refs = ["docker.io/library/carry:1", "docker.io/library/carrymulti:2"]
    hub = start_hubcache()
    direct = {}
    for n, ref in enumerate(refs):
        pull_ok(ref, tmp_path / f"through{n}", hub, certs)
        direct[ref] = dir_files(pull_ok(ref, tmp_path / f"direct{n}", None, certs))
    archive = tmp_path / "carry.tar"
    res = hubcache("export", "--store", hub.store, "-o", archive, "carry:1", "docker.io/library/carrymulti:2")
    assert res.returncode == 0, res.stderr
    assert "docker.io/library/carrymulti:2: linux/arm64/v8 left out" in res.stdout
    pull_ok(refs[0], tmp_path / "still", hub, certs)  # the proxy served on meanwhile
    return archive, direct, hub


def test_an_exported_archive_is_read_by_skopeo_and_imported_beside_an_offline_hubcache_serves_it(
        carried, upstream, start_hubcache, certs, tmp_path):
    archive, direct, carrier = carried
    # skopeo finds an image by reference only when index.json calls it an OCI manifest or index
    # (containers/image skips Docker media types there, in every version): carry:1 is a Docker
    # schema 2 image, which ctr and hubcache read (below), skopeo only from an archive of it alone
    ref = "docker.io/library/carrymulti:2"
    assert dir_files(from_archive(archive, ref, tmp_path / "skopeo")) == direct[ref]
    alone = tmp_path / "alone.tar"
    assert hubcache("export", "--store", carrier.store, "-o", alone, "carry:1").returncode == 0
    res = subprocess.run(["skopeo", "--policy", str(_policy_file(tmp_path / "alone")), "copy", "--quiet",
                          f"oci-archive:{alone}", f"dir:{tmp_path / 'alone'}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert dir_files(tmp_path / "alone") == direct["docker.io/library/carry:1"]
    # the host without internet: an --offline hubcache on an empty store, the archive imported beside it
    offline = start_hubcache("hubcache_tag_ttl=0", name="offline", args=["--offline"])
    res = hubcache("import", "--store", offline.store, archive)
    assert res.returncode == 0, res.stderr
    assert "imported 2 images (docker.io/library/carry:1, docker.io/library/carrymulti:2)" in res.stdout
    assert "beside the running hubcache" in res.stdout
    mark = upstream.mark()
    for n, (ref, files) in enumerate(direct.items()):
        assert dir_files(pull_ok(ref, tmp_path / f"offline{n}", offline, certs)) == files
    assert upstream.requests_since(mark) == []
    history = hubcache("history", "--store", offline.store, "carry:1")
    assert history.returncode == 0 and "docker.io/library/carry:1" in history.stdout
    # and by a cold start of it, as the host's service would
    offline.stop()
    offline.start()
    assert dir_files(pull_ok("docker.io/library/carry:1", tmp_path / "cold", offline, certs)) == direct[
        "docker.io/library/carry:1"]


def test_containerd_imports_the_archive_by_its_full_names(carried, tmp_path, confdir):
    from harness.engines import Containerd, missing_engine

    if why := missing_engine("containerd"):
        pytest.skip(why)
    archive, direct, _ = carried
    with Containerd(tmp_path / "containerd", proxy="http://127.0.0.1:9", ca_cert=confdir / "mitmproxy-ca-cert.pem") as ctrd:
        ctrd.ctr("images", "import", "--snapshotter", "native", str(archive))
        for ref in direct:
            image = ctrd.describe(ref)  # named as the archive names it
            manifest = json.loads(direct[ref]["manifest.json"])
            assert image.config_digest == manifest["config"]["digest"]


def test_an_archive_with_one_flipped_byte_is_refused_naming_the_blob(carried, tmp_path):
    archive, direct, _ = carried
    bad = tmp_path / "bad.tar"
    shutil.copyfile(archive, bad)
    files = direct["docker.io/library/carry:1"]
    layer = max(files, key=lambda name: len(files[name]))  # the 2 MiB layer, named by its hex digest
    with tarfile.open(bad) as tar:
        offset = tar.getmember(f"blobs/sha256/{layer}").offset_data
    with open(bad, "r+b") as f:
        f.seek(offset + MiB)
        byte = f.read(1)
        f.seek(offset + MiB)
        f.write(bytes([byte[0] ^ 0x01]))
    res = hubcache("import", "--store", tmp_path / "fresh", bad)
    assert res.returncode == 1
    assert f"blobs/sha256/{layer} does not match its digest" in res.stderr and "nothing was imported" in res.stderr
    assert not (tmp_path / "fresh").exists()
