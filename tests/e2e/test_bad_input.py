"""Bad input from clients, through a running hubcache: an OCI error with the right status, never a
crash, never anything outside what was asked; the proxy keeps serving afterwards."""

from __future__ import annotations

import json

import pytest

from harness.clients import proxied_request, skopeo_copy
from harness.hubenv import REGISTRY_HOST

pytestmark = pytest.mark.e2e

BAD = [
    ("/v2/library/../../etc/passwd/manifests/1", 400, "NAME_INVALID"),
    ("/v2/library/%2e%2e/manifests/1", 400, "NAME_INVALID"),
    ("/v2/library/x%2fy/blobs/sha256:" + "a" * 64, 400, "NAME_INVALID"),
    ("/v2/library/x/manifests/" + "t" * 300, 400, "TAG_INVALID"),
    ("/v2/library/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
    ("/v2/library/x/blobs/sha256:" + "g" * 64, 400, "DIGEST_INVALID"),
    ("/v2/library/x/manifests/sha256:abc", 400, "DIGEST_INVALID"),
    ("/v2/" + "a/" * 200 + "manifests/1", 400, "NAME_INVALID"),
]


@pytest.mark.parametrize("path,status,code", BAD, ids=[b[2] + ":" + b[0][:40] for b in BAD])
def test_malformed_requests_get_oci_errors(path, status, code, upstream, start_hubcache):
    hub = start_hubcache()
    mark = upstream.mark()
    got, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, path)
    assert got == status
    assert json.loads(body)["errors"][0]["code"] == code
    assert upstream.requests_since(mark) == []  # refused here, nothing sent on


def test_huge_headers_and_absurd_ranges_do_not_break_the_proxy(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/badinput", "1", [(100_000, 77)])
    hub = start_hubcache()
    res = skopeo_copy("docker.io/library/badinput:1", tmp_path / "a", proxy=hub.url, cert_dir=certs)
    assert res.returncode == 0, res.stderr
    layer = img.layer_digests[0]
    path = f"/v2/library/badinput/blobs/{layer}"
    for rng in ("bytes=99999999999999999999-", "bytes=500000-600000", "bytes=-0"):
        status, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, path, [("Range", rng)])
        assert status == 416 and json.loads(body)["errors"][0]["code"] == "RANGE_INVALID"
    try:
        status, _, _ = proxied_request(hub.port, hub.ca_cert, "GET", REGISTRY_HOST, path, [("X-Big", "x" * 300_000)])
        assert status >= 400  # refused by mitmproxy's header limits, or answered: never a crash
    except (ConnectionError, OSError):
        pass
    again = skopeo_copy("docker.io/library/badinput:1", tmp_path / "b", proxy=hub.url, cert_dir=certs)
    assert again.returncode == 0, again.stderr
    assert hub.proc.poll() is None
