"""Large blobs by hubcache's own TLS listener: the client is redirected to blobs.hubcache.invalid,
which the proxy only tunnels (to that listener). What a client sees: a 307 with a signed URL, the
exact bytes when it follows it through the proxy, a refusal for a URL hubcache did not sign, and
with hubcache_direct_min=off the bytes at once."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import re
import ssl
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from harness.clients import https_connection, proxied_request, pull_ok
from harness.proxy import free_port

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


def connections(metrics_port: int) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    m = re.search(r"^hubcache_client_connections (\S+)$", page, re.M)
    return float(m[1]) if m else -1.0


def eventually(predicate, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_redirected_download_is_a_client_connection_until_the_client_is_done(upstream, start_hubcache, certs, tmp_path):
    """The tunnel to blobs.hubcache.invalid is served on the client's own connection: it stays the
    proxy's client connection, counted in hubcache_client_connections (and under its caps), while
    the client reads slowly, and is given back when the client is done or goes away halfway (one
    client_gone line)."""
    img = upstream.push_image("library/directconn", "1", [(32 * MiB, next(_seeds))])
    digest = img.layer_digests[0]
    metrics_port = free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{metrics_port}")
    pull_ok("docker.io/library/directconn:1", tmp_path / "cold", hub, certs)
    status, headers, _ = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/library/directconn/blobs/{digest}")
    assert status == 307
    target = urlsplit(headers["location"])
    path = target.path + "?" + target.query
    assert eventually(lambda: connections(metrics_port) == 0)
    tls = ssl.create_default_context(cafile=str(hub.ca_cert))

    conn = https_connection(DIRECT, tls, hub.port)
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 200
    body = r.read(1 * MiB)
    time.sleep(1)  # the blob server waits on this client now: the connection is still the proxy's
    assert connections(metrics_port) == 1
    body += r.read()
    assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    conn.close()
    assert eventually(lambda: connections(metrics_port) == 0)

    conn = https_connection(DIRECT, tls, hub.port)
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 200 and len(r.read(1 * MiB)) == MiB
    assert connections(metrics_port) == 1
    conn.sock.close()  # gone halfway
    conn.close()
    assert eventually(lambda: connections(metrics_port) == 0)
    assert eventually(lambda: re.search(rf"went away after \d+ of {img.layer_sizes[0]} bytes of {digest}", hub.log()) is not None)


def test_a_stop_while_a_client_reads_a_redirected_blob_slowly_is_prompt_and_clean(upstream, start_hubcache, certs, tmp_path):
    """hubcache stops (SIGTERM) within seconds, exit status 0, while a redirected client is in the
    middle of a blob; the client sees its connection end, not a hang."""
    img = upstream.push_image("library/directstop", "1", [(32 * MiB, next(_seeds))])
    hub = start_hubcache()
    pull_ok("docker.io/library/directstop:1", tmp_path / "cold", hub, certs)
    status, headers, _ = proxied_request(hub.port, hub.ca_cert, "GET", REG,
                                         f"/v2/library/directstop/blobs/{img.layer_digests[0]}")
    assert status == 307
    target = urlsplit(headers["location"])
    conn = https_connection(DIRECT, ssl.create_default_context(cafile=str(hub.ca_cert)), hub.port)
    conn.request("GET", target.path + "?" + target.query)
    r = conn.getresponse()
    assert r.status == 200 and len(r.read(1 * MiB)) == MiB
    began = time.monotonic()
    assert hub.stop() == 0
    assert time.monotonic() - began < 8
    conn.sock.settimeout(10)  # a connection left hanging fails the test
    got, ending = MiB, "end"
    try:
        while chunk := r.read(1 * MiB):  # what was in flight, then the end
            got += len(chunk)
    except TimeoutError:
        ending = "hang"
    except (OSError, http.client.HTTPException):
        ending = "cut"
    conn.close()
    assert ending != "hang" and got < img.layer_sizes[0], (ending, got)
