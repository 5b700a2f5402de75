import hashlib
import http.client
import os

import pytest

from hubcache.serve.blobserver import PATH_PREFIX, BlobServer, parse_range
from hubcache.store import Store


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=90-1000", (90, 100)),
        ("bytes=100-", "invalid"),
        ("bytes=5-2", "invalid"),
        ("bytes=-0", "invalid"),
        ("bytes=-", "invalid"),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=99999999999999999999999-", "invalid"),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


def test_serves_blob_and_ranges(tmp_path):
    s = Store(tmp_path / "s")
    data = os.urandom(700_000)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    w = s.begin_blob(d, len(data), "r")
    w.write(data)
    w.commit()
    srv = BlobServer(s)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port)
        conn.request("GET", srv.path(d))
        r = conn.getresponse()
        assert (r.status, r.getheader("Docker-Content-Digest"), r.read()) == (200, d, data)
        conn.request("GET", srv.path(d), headers={"Range": "bytes=300000-"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (206, data[300000:])
        conn.request("GET", srv.path("sha256:" + "0" * 64))
        r = conn.getresponse()
        assert r.status == 404 and b"BLOB_UNKNOWN" in r.read()
        for unsigned in (PATH_PREFIX + d, PATH_PREFIX + "../../etc/passwd", srv.path(d).replace("exp=", "exp=9")):
            conn.request("GET", unsigned)  # not a URL hubcache made (or one altered): nothing from the store
            r = conn.getresponse()
            assert r.status == 403 and b"DENIED" in r.read()
    finally:
        srv.stop()
        s.close()


def _store_with_a_blob(tmp_path, size: int) -> tuple[Store, bytes, str]:
    """A store at tmp_path/s holding one blob of `size` random bytes: (store, bytes, digest)."""
    s = Store(tmp_path / "s")
    data = os.urandom(size)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    w = s.begin_blob(d, len(data), "r")
    w.write(data)
    w.commit()
    return s, data, d


def test_tls_listener_serves_signed_urls_with_a_certificate_of_the_proxy_ca(tmp_path):
    import ssl

    from mitmproxy.certs import CertStore

    from hubcache.serve.blobserver import DIRECT_HOST, tls_context

    s, data, d = _store_with_a_blob(tmp_path, 3 << 20)
    server_ctx = tls_context(CertStore.from_store(tmp_path / "ca", "mitmproxy", 2048))
    srv = BlobServer(s, tls=server_ctx)
    try:
        client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "mitmproxy-ca-cert.pem"))
        raw = __import__("socket").create_connection(("127.0.0.1", srv.tls_port))
        conn = http.client.HTTPSConnection(DIRECT_HOST, context=client_ctx)
        conn.sock = client_ctx.wrap_socket(raw, server_hostname=DIRECT_HOST)  # verified as DIRECT_HOST
        conn.request("GET", srv.path(d))
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, data)
    finally:
        srv.stop()
        s.close()


def test_a_tunnel_taken_from_mitmproxy_is_answered_and_served_on_the_clients_own_socket(tmp_path):
    """BlobServer.serve_tunnel (hooks/direct.py hands it a client's socket right after its CONNECT):
    the client reads mitmproxy's CONNECT answer, then does TLS verified as DIRECT_HOST and gets the
    blob and a range on one kept-alive connection; done() comes only once the client closed."""
    import socket
    import ssl
    import threading

    from mitmproxy.certs import CertStore

    from hubcache.serve.blobserver import DIRECT_HOST, tls_context

    s, data, d = _store_with_a_blob(tmp_path, 3 << 20)
    srv = BlobServer(s, tls=tls_context(CertStore.from_store(tmp_path / "ca", "mitmproxy", 2048)))
    done = threading.Event()
    ours, theirs = socket.socketpair()
    try:
        assert srv.serve_tunnel(ours, ("10.0.0.7", 40000), done.set)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += theirs.recv(1)
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "mitmproxy-ca-cert.pem"))
        conn = http.client.HTTPSConnection(DIRECT_HOST, context=client_ctx)
        conn.sock = client_ctx.wrap_socket(theirs, server_hostname=DIRECT_HOST)
        conn.request("GET", srv.path(d))
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, data)
        conn.request("GET", srv.path(d), headers={"Range": "bytes=5-9"})
        r = conn.getresponse()
        assert (r.status, r.read()) == (206, data[5:10])
        assert not done.wait(0.2)  # kept alive: the connection is still the blob server's
        conn.close()
        assert done.wait(10)
    finally:
        theirs.close()
        srv.stop()
        s.close()


def test_no_tunnel_is_taken_without_a_tls_listener(tmp_path):
    import socket

    s = Store(tmp_path / "s")
    srv = BlobServer(s)
    ours, theirs = socket.socketpair()
    try:
        assert not srv.serve_tunnel(ours, ("10.0.0.7", 40000), lambda: None)
    finally:
        ours.close()
        theirs.close()
        srv.stop()
        s.close()
