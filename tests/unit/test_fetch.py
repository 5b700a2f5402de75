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
from harness.proxy import free_port
from hubcache.upstream import fetch
from hubcache.upstream.client import TLSSettings
from hubcache.upstream.pacing import Pacer

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


def test_each_hop_waits_its_turn_and_the_blob_holds_its_hosts_slot_until_closed(servers):
    tls, registry, cdn = servers
    registry.redirect_to = f"https://localhost:{_port(cdn)}/data"
    pacer = Pacer()
    pacer.configure(concurrency=1, rate=0, burst=1)
    asked: list[tuple[str, int, int]] = []  # host, then what each host held when the hop asked

    def pace(host: str):
        asked.append((host, pacer.busy("127.0.0.1"), pacer.busy("localhost")))
        return pacer.hold(host)

    resp = fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [("Authorization", TOKEN)], tls, timeout=10, pace=pace)
    # the registry's slot was freed with its 307, before the CDN hop asked for one
    assert asked == [("127.0.0.1", 0, 0), ("localhost", 0, 0)]
    assert (pacer.busy("127.0.0.1"), pacer.busy("localhost")) == (0, 1)  # the body is still to come
    assert b"".join(resp.iter_body()) == BODY
    assert pacer.busy("localhost") == 1
    resp.close()
    assert pacer.busy("localhost") == 0
    resp.close()  # twice: nothing more freed
    assert pacer.busy("localhost") == 0


def test_a_hop_that_gets_no_answer_frees_its_slot(servers):
    tls, registry, _ = servers
    registry.redirect_to = f"https://localhost:{free_port()}/data"  # nobody listens there
    pacer = Pacer()
    pacer.configure(concurrency=1, rate=0, burst=1)
    with pytest.raises(fetch.FetchError):
        fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [], tls, timeout=5, pace=pacer.hold)
    assert (pacer.busy("127.0.0.1"), pacer.busy("localhost")) == (0, 0)


def test_a_host_that_went_down_while_its_hop_waited_is_not_asked(servers):
    tls, registry, _ = servers
    pacer = Pacer()
    pacer.configure(concurrency=1, rate=0, burst=1)
    down: list[str] = []

    def pace(host: str):
        release = pacer.hold(host)
        down.append(host)  # e.g. another download failed and started the back-off meanwhile
        return release

    with pytest.raises(fetch.FetchError, match="backing off"):
        fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [], tls, timeout=5, pace=pace,
                  allowed=lambda host: "backing off" if host in down else None)
    assert registry.seen == [] and pacer.busy("127.0.0.1") == 0
