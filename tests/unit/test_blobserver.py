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


def test_tls_listener_serves_signed_urls_with_a_certificate_of_the_proxy_ca(tmp_path):
    import ssl

    from mitmproxy.certs import CertStore

    from hubcache.serve.blobserver import DIRECT_HOST, tls_context

    s = Store(tmp_path / "s")
    data = os.urandom(3 << 20)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    w = s.begin_blob(d, len(data), "r")
    w.write(data)
    w.commit()
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
