"""fetch.get against real HTTPS servers on loopback: a registry that answers a blob GET with 307,
as Docker Hub does to its CDN. The pool account's token must reach the registry and never a
CDN, which is another host: the rule is per host name, so the "CDN" here is `localhost` and the
registry `127.0.0.1`."""

from __future__ import annotations

import hashlib
import os
import ssl
import threading

import pytest

from harness import httpsd
from harness.certs import make_pki
from hubcache.upstream import fetch
from hubcache.upstream.client import TLSSettings

BODY = os.urandom(3 * 1024 * 1024 + 17)  # several reads, and not a whole number of them
TOKEN = "Bearer pool-account-token"
BLOB = "/v2/library/alpine/blobs/sha256:" + hashlib.sha256(BODY).hexdigest()


class Handler(httpsd.LoggedHandler):
    """`BLOB` answers 307 to the server's `redirect_to`; `/data` is the blob itself."""

    def do_GET(self):
        # Taken before answering: once the client has the answer, the test may look.
        self.server.seen.append((self.path, dict(self.headers)))
        if self.path == BLOB:
            self.send_bytes(307, b"", "text/plain", {"Location": self.server.redirect_to})
        elif self.path == "/data":
            self.send_bytes(200, BODY, "application/octet-stream")
        else:
            self.send_bytes(404, b"", "text/plain")


@pytest.fixture
def servers(tmp_path):
    """(tls, registry, cdn): two HTTPS servers, on 127.0.0.1 and localhost, trusted through `tls`."""
    pki = make_pki(tmp_path / "pki", ["localhost"], ["127.0.0.1"])
    context = _server_context(pki)
    started = []
    for name in ("registry", "cdn"):
        log = httpsd.RequestLog(str(tmp_path / f"{name}.jsonl"))
        server = httpsd.TLSServer(("127.0.0.1", 0), Handler, context, log, name)
        server.seen = []
        server.redirect_to = ""
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
    yield TLSSettings(ca_file=str(pki.ca_cert)), *started
    for server in started:
        server.shutdown()
        server.server_close()


def _server_context(pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx


def _port(server) -> int:
    return server.server_address[1]


def _get(url: str, tls: TLSSettings) -> tuple[fetch.Response, bytes]:
    resp = fetch.get(url, [("Authorization", TOKEN), ("Accept", "application/octet-stream")], tls, timeout=10)
    try:
        return resp, b"".join(resp.iter_body())
    finally:
        resp.close()


def test_a_redirect_to_another_host_reaches_it_without_the_authorization_header(servers):
    tls, registry, cdn = servers
    registry.redirect_to = f"https://localhost:{_port(cdn)}/data"

    resp, body = _get(f"https://127.0.0.1:{_port(registry)}{BLOB}", tls)

    assert resp.status == 200
    assert body == BODY
    assert [(h.host, h.status) for h in resp.hops] == [("127.0.0.1", 307), ("localhost", 200)]
    [(path, registry_headers)] = registry.seen
    assert path == BLOB and registry_headers["Authorization"] == TOKEN
    [(path, cdn_headers)] = cdn.seen
    assert path == "/data"
    assert "authorization" not in {k.lower() for k in cdn_headers}
    assert cdn_headers["Accept"] == "application/octet-stream"  # only the token is held back


def test_a_redirect_on_the_same_host_keeps_the_authorization_header(servers):
    tls, registry, _ = servers
    registry.redirect_to = "/data"  # relative: the same host and port

    resp, body = _get(f"https://127.0.0.1:{_port(registry)}{BLOB}", tls)

    assert resp.status == 200
    assert body == BODY
    assert [(h.host, h.status) for h in resp.hops] == [("127.0.0.1", 307), ("127.0.0.1", 200)]
    assert [(path, headers["Authorization"]) for path, headers in registry.seen] == [(BLOB, TOKEN), ("/data", TOKEN)]
