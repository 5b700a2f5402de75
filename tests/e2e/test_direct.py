"""Large blobs by hubcache's own TLS listener: the client is redirected to blobs.hubcache.invalid,
which the proxy only tunnels (to that listener). What a client sees: a 307 with a signed URL, the
exact bytes when it follows it through the proxy, a refusal for a URL hubcache did not sign, and
with hubcache_direct_min=off the bytes at once."""

from __future__ import annotations

import hashlib
import itertools
from urllib.parse import urlsplit

import pytest

from harness.clients import proxied_request, pull_ok

pytestmark = pytest.mark.e2e
MiB = 1 << 20
REG, DIRECT = "registry-1.docker.io", "blobs.hubcache.invalid"
_seeds = itertools.count(61000)


def test_large_blob_is_redirected_to_the_tls_listener_and_small_one_is_not(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/direct", "1", [(6 * MiB, next(_seeds)), (300_000, next(_seeds))])
    hub = start_hubcache()
    pulled = pull_ok("docker.io/library/direct:1", tmp_path / "cold", hub, certs)
    big, small = img.layer_digests
    mark = upstream.mark()

    status, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/library/direct/blobs/{big}")
    assert (status, body) == (307, b"")
    target = urlsplit(headers["location"])
    assert target.scheme == "https" and target.hostname == DIRECT
    path = target.path + "?" + target.query
    status, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", DIRECT, path)  # TLS verified as DIRECT
    assert status == 200 and headers["docker-content-digest"] == big
    assert hashlib.sha256(body).hexdigest() == big.split(":")[1] == hashlib.sha256((pulled / big.split(":")[1]).read_bytes()).hexdigest()
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", DIRECT, path, [("Range", "bytes=100-199")])
    assert (status, body) == (206, (pulled / big.split(":")[1]).read_bytes()[100:200])

    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/library/direct/blobs/{small}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == small.split(":")[1]  # below 2m: no detour
    assert upstream.requests_since(mark) == []

    forged = path.replace("sig=", "sig=0")
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", DIRECT, forged)
    assert status == 403 and b"DENIED" in body  # nothing from the store without hubcache's signature
    other = target.path.replace(big, small) + "?" + target.query  # a signature is for one digest only
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", DIRECT, other)
    assert status == 403 and b"DENIED" in body


def test_direct_off_sends_every_blob_through_mitmproxy(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/directoff", "1", [(6 * MiB, next(_seeds))])
    hub = start_hubcache("hubcache_direct_min=off")
    pull_ok("docker.io/library/directoff:1", tmp_path / "cold", hub, certs)
    status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/library/directoff/blobs/{img.layer_digests[0]}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == img.layer_digests[0].split(":")[1]
