"""fetch.get against real HTTPS servers on loopback: a registry that answers a blob GET with 307,
as Docker Hub does to its CDN. The pool account's token must reach the registry and never a
CDN, which is another host: the rule is per host name, so the "CDN" here is `localhost` and the
registry `127.0.0.1`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import socketserver
import ssl
import threading

import pytest

from harness import httpsd
from harness.certs import make_pki
from harness.proxy import free_port
from hubcache.settings import Egress
from hubcache.upstream import client, fetch
from hubcache.upstream.client import TLSSettings, UpstreamError
from hubcache.upstream.pacing import Pacer

BODY = os.urandom(3 * 1024 * 1024 + 17)  # several reads, and not a whole number of them
TOKEN = "Bearer pool-account-token"
BLOB = "/v2/library/alpine/blobs/sha256:" + hashlib.sha256(BODY).hexdigest()
GUARDED = "/v2/mirror/images/alpine/blobs/sha256:" + hashlib.sha256(BODY).hexdigest()  # wants ANON
ANON = "Bearer anonymous-token-of-the-mirrors-realm"
CHALLENGE = 'Bearer realm="https://localhost/token",service="mirror"'


class Handler(httpsd.LoggedHandler):
    """`BLOB` answers 307 to the server's `redirect_to`; `/data` is the blob itself."""

    def do_GET(self):
        # Taken before answering: once the client has the answer, the test may look.
        self.server.seen.append((self.path, dict(self.headers)))
        if self.path == BLOB:
            self.send_bytes(307, b"", "text/plain", {"Location": self.server.redirect_to})
        elif self.path == "/data":
            self.send_bytes(200, BODY, "application/octet-stream")
        elif self.path == "/short":  # says more than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:-1000])
            self.close_connection = True
        elif self.path == "/chunked":  # framed by h11, not by a length
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BODY), 1 << 20):
                piece = BODY[i : i + (1 << 20)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == GUARDED and self.headers.get("Authorization") == ANON:
            self.send_bytes(200, BODY, "application/octet-stream")
        elif self.path == GUARDED:  # as an Artifact Registry host answers registry.k8s.io's redirect
            self.send_bytes(401, b'{"errors":[]}', "application/json", {"Www-Authenticate": CHALLENGE})
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


# -- through an egress proxy (mitmproxy's upstream mode) ---------------------------------------

LOGIN = "runner:corp-pw"


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal corporate proxy: CONNECT only; `status` other than 200 refuses; `login` wanted."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, login: str | None = None, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.login, self.status, self.heads = login, status, []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def egress(self, login: str | None = None) -> Egress:
        return Egress("127.0.0.1", self.server_address[1], login)


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        self.server.heads.append(head.decode())
        target = head.split(b" ")[1].decode()
        wanted = self.server.login and f"Proxy-Authorization: {Egress('x', 1, self.server.login).authorization()}"
        if wanted and wanted not in head.decode():
            self.request.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            return
        if self.server.status != 200:
            self.request.sendall(f"HTTP/1.1 {self.server.status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True).start()
        _pipe(self.request, upstream)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_every_hop_goes_through_the_egress_proxy_with_its_login_sent_only_to_it(servers):
    tls, registry, cdn = servers
    registry.redirect_to = f"https://localhost:{_port(cdn)}/data"
    proxy = ConnectProxy(login=LOGIN)
    try:
        resp = fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [("Authorization", TOKEN)], tls, timeout=10,
                         egress=proxy.egress(LOGIN))
        body = b"".join(resp.iter_body())
        resp.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert body == BODY
    targets = [h.split(" ")[1] for h in proxy.heads]
    assert targets == [f"127.0.0.1:{_port(registry)}", f"localhost:{_port(cdn)}"]  # the redirect's host too
    assert all("Proxy-Authorization: Basic " in h for h in proxy.heads)
    for _, headers in registry.seen + cdn.seen:  # inside the tunnels: never the proxy's login
        assert "proxy-authorization" not in {k.lower() for k in headers}


def test_hubcaches_own_requests_go_through_the_egress_proxy(servers):
    tls, registry, _ = servers
    proxy = ConnectProxy()
    try:
        resp = asyncio.run(client.request("GET", f"https://127.0.0.1:{_port(registry)}/data", [], tls, 10,
                                          proxy.egress()))
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert resp.status == 200 and resp.body == BODY
    assert [h.split(" ")[1] for h in proxy.heads] == [f"127.0.0.1:{_port(registry)}"]
    assert "Proxy-Authorization" not in proxy.heads[0]  # no login configured: none sent


@pytest.mark.parametrize("status, fix", [
    (407, "set upstream_auth or hubcache_upstream_auth_file"),
    (403, "ask the proxy's operator to allow CONNECT"),
    (502, "check the proxy's own route and DNS"),
])
def test_a_refusing_egress_proxy_is_one_error_with_the_fix_and_never_the_login(servers, status, fix):
    tls, registry, _ = servers
    proxy = ConnectProxy(login=LOGIN if status == 407 else None, status=200 if status == 407 else status)
    url = f"https://127.0.0.1:{_port(registry)}{BLOB}"
    wrong = proxy.egress()  # without a login (the 407 case); then with a wrong one
    try:
        with pytest.raises(UpstreamError) as blocking:
            fetch.get(url, [], tls, timeout=10, egress=wrong)
        with pytest.raises(UpstreamError) as evented:
            asyncio.run(client.request("GET", url, [], tls, 10, Egress(wrong.host, wrong.port, "runner:not-it")))
    finally:
        proxy.shutdown()
        proxy.server_close()
    for e in (blocking.value, evented.value):
        assert f"refused CONNECT 127.0.0.1:{_port(registry)}: {status}" in str(e) and fix in str(e)
        assert "not-it" not in str(e) and "\n" not in str(e)
    assert registry.seen == []


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


def test_a_redirect_to_a_host_that_wants_its_own_token_is_retried_once_with_what_authorize_gives(servers):
    tls, registry, cdn = servers
    target = f"https://localhost:{_port(cdn)}{GUARDED}"
    registry.redirect_to = target
    asked: list[tuple[str, str]] = []

    def authorize(challenge: str, url: str) -> str | None:
        asked.append((challenge, url))
        return ANON

    resp = fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [("Authorization", TOKEN)], tls, timeout=10,
                     authorize=authorize)
    try:
        assert resp.status == 200 and b"".join(resp.iter_body()) == BODY
    finally:
        resp.close()
    assert asked == [(CHALLENGE, target)]
    assert [h.get("Authorization") for _, h in cdn.seen] == [None, ANON]  # never the registry's token
    assert [(h.host, h.status) for h in resp.hops] == [("127.0.0.1", 307), ("localhost", 401), ("localhost", 200)]


@pytest.mark.parametrize("give", [None, "Bearer wrong", UpstreamError("realm down")])
def test_a_401_after_a_redirect_stands_when_no_token_or_a_refused_one_is_had(servers, give):
    tls, registry, cdn = servers
    registry.redirect_to = f"https://localhost:{_port(cdn)}{GUARDED}"

    def authorize(challenge: str, url: str) -> str | None:
        if isinstance(give, Exception):
            raise give
        return give

    resp = fetch.get(f"https://127.0.0.1:{_port(registry)}{BLOB}", [], tls, timeout=10, authorize=authorize)
    try:
        assert resp.status == 401 and resp.header("www-authenticate") == CHALLENGE
    finally:
        resp.close()
    assert len(cdn.seen) == (2 if give == "Bearer wrong" else 1)  # retried once at most


def test_a_401_of_the_registry_itself_is_not_retried(servers):
    tls, registry, _ = servers
    asked = []
    resp = fetch.get(f"https://127.0.0.1:{_port(registry)}{GUARDED}", [], tls, timeout=10,
                     authorize=lambda c, u: asked.append(u) or ANON)
    resp.close()
    assert resp.status == 401 and asked == []  # the client's own 401, hers to answer


def _read_into(url: str, tls: TLSSettings, size: int) -> bytes:
    """The body through read_into, into a buffer of `size` bytes that moves after every read
    (as a BlobWriter's area does when it hands a batch over)."""
    resp = fetch.get(url, [], tls, timeout=10)
    out = bytearray()
    try:
        while True:
            buf = memoryview(bytearray(size))
            n = resp.read_into(lambda buf=buf: buf)
            if not n:
                return bytes(out)
            out += buf[:n]
    finally:
        resp.close()


@pytest.mark.parametrize("path", ["/data", "/chunked"])
def test_read_into_gives_the_body_whole_whatever_its_framing(servers, path):
    tls, registry, _ = servers
    assert _read_into(f"https://127.0.0.1:{_port(registry)}{path}", tls, 100_000) == BODY


def test_read_into_a_body_that_breaks_off_before_its_length_fails(servers):
    tls, registry, _ = servers
    with pytest.raises(fetch.FetchError, match="transfer broke off"):
        _read_into(f"https://127.0.0.1:{_port(registry)}/short", tls, 1 << 20)
