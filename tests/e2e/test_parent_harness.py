"""The parent registry of the fleet tests (harness.parent, issue 13) behaves as distribution 2.8 in
proxy mode does in front of Docker Hub: it pulls through on a miss as its own account (counted in
the fake Hub's book) and serves what it has stored afterwards without asking Hub again."""

from __future__ import annotations

import itertools

import pytest

from harness.clients import dir_files, skopeo_copy
from harness.parent import Parent

pytestmark = pytest.mark.e2e
_seeds = itertools.count(99000)


def test_the_parent_pulls_through_as_its_own_account_and_then_serves_from_its_storage(upstream, certs, tmp_path):
    img = upstream.push_image("library/viaparent", "1", [(500_000, next(_seeds))])
    upstream.add_account("parentbot", "parent-pw")
    direct = skopeo_copy("docker.io/library/viaparent:1", tmp_path / "direct", proxy=None, cert_dir=certs)
    assert direct.returncode == 0, direct.stderr
    with Parent(tmp_path / "parent", upstream, ("parentbot", "parent-pw")) as parent:
        ref = f"127.0.0.1:{parent.port}/library/viaparent:1"
        before = upstream.pulls_by_account().get("parentbot", 0)
        first = skopeo_copy(ref, tmp_path / "first", proxy=None, cert_dir=certs, extra_args=["--src-tls-verify=false"])
        assert first.returncode == 0, first.stderr
        assert dir_files(tmp_path / "first") == dir_files(tmp_path / "direct")
        assert upstream.pulls_by_account().get("parentbot", 0) == before + 1  # its own account's pull
        assert parent.blob_file(img.layer_digests[0]).is_file()  # stored in its storage
        mark = upstream.mark()
        by_digest = skopeo_copy(f"127.0.0.1:{parent.port}/library/viaparent@{img.manifest_digest}", tmp_path / "again",
                                proxy=None, cert_dir=certs, extra_args=["--src-tls-verify=false"])
        assert by_digest.returncode == 0, by_digest.stderr
        assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")
        assert not [r for r in upstream.requests_since(mark) if "/blobs/" in r.path]  # blobs from its storage
