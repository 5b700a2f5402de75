"""Loopback servers inside the proxy process that serve blobs from the store.

mitmproxy's `Response.make` needs the whole body in memory; instead the addon points a blob's
flow at the plain listener and mitmproxy streams the answer like any upstream response (memory
stays flat). Larger blobs go faster by the TLS listener: the client is redirected to DIRECT_HOST,
which mitmproxy does not intercept but only tunnels (the addon's server_connect hook sends that
tunnel here), so TLS towards the client is done by OpenSSL on this server's threads instead of
twice in Python on mitmproxy's event loop. Its certificate is made by mitmproxy's CA.

Each connection gets a thread; reads are short LMDB read transactions, one per chunk. Blobs still
being downloaded (flights.py) are served by following their bytes into the store. Every URL is
signed by the addon and expires: nobody else on the host can read the store through these ports.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from hubcache import logs
from hubcache.model import BlobInfo, is_digest, oci_error_body
from hubcache.settings import DIRECT_HOST
from hubcache.store import CHUNK_SIZE, Store, StoreError

log = logging.getLogger(__name__)

PATH_PREFIX = "/_hubcache/blobs/"  # + digest; "?pending=<blob id hex>" for one still downloading
SEND_BUFFER = 4 * 1024 * 1024
URL_TTL = 600  # seconds a signed blob URL is good for
TLS_TIMEOUT = 60  # seconds a TLS client may take for its handshake or between reads
IDLE_LIMIT = 300  # seconds without progress after which a follower gives up on a download
WAIT_SLICE = 0.05  # a follower re-checks the store at least this often
CONNECT_REPLY = b"HTTP/1.1 200 Connection established\r\n\r\n"  # as mitmproxy answers a CONNECT
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def tls_context(certstore: Any) -> ssl.SSLContext:
    """The TLS listener's context: a certificate for DIRECT_HOST made by mitmproxy's CertStore
    (the CA clients already trust for the registry hosts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    entry = certstore.get_cert(DIRECT_HOST, [x509.DNSName(DIRECT_HOST)])
    key = entry.privatekey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_alpn_protocols(["http/1.1"])
    with tempfile.TemporaryDirectory() as d:  # ssl loads keys from files only: a private dir, gone at once
        pem = os.path.join(d, "direct.pem")
        with open(os.open(pem, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(entry.cert.to_pem() + key)
        context.load_cert_chain(pem)
    return context


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """A single 'bytes=' range as [start, end); None for the whole body; 'invalid' when unsatisfiable.

    Multi-range requests are answered with the whole body, which RFC 9110 allows.
    """
    if not header:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if not m:
        return None
    first, last = m.groups()
    if not first and not last:
        return "invalid"
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "invalid"
        return (max(size - n, 0), size)
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        return "invalid"
    return (start, end)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._buf: memoryview | None = None  # the connection's read buffer (see _send)
        self._sent = 0  # body bytes of the current request sent so far
        # Room for several chunks in the kernel (not in RSS): fewer wake-ups per blob.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _error(self, status: int, code: str, message: str, send_body: bool, extra: dict[str, str] | None = None) -> None:
        body = oci_error_body(code, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        digest = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else ""
        if not self.server.signed(digest, query):
            self._error(403, "DENIED", "this blob URL is not hubcache's, or it expired", send_body)
            return
        params = parse_qs(query)
        pending = params.get("pending", [""])[0]
        client = params.get("client", [""])[0] or str(self.client_address[0])  # the addon names it in the URL
        try:
            blob_id = bytes.fromhex(pending)
        except ValueError:
            blob_id = b""
        if not is_digest(digest):
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry", send_body)
            return
        store = self.server.store
        info = store.blob_info(digest)
        size = info.size if info else -1
        if info is None and blob_id:
            size, blob_id = self._await_size(digest, blob_id)
            if size < 0 and (info := store.blob_info(digest)) is not None:
                size = info.size
        if size < 0:  # evicted between the decision and this request, or its download failed
            self._error(404 if not blob_id else 502, "BLOB_UNKNOWN",
                        "blob unknown to registry" if not blob_id else "hubcache's download of this blob failed", send_body)
            return
        rng = parse_range(self.headers.get("Range"), size)
        if rng == "invalid":
            self._error(416, "RANGE_INVALID", "requested range not satisfiable", send_body, {"Content-Range": f"bytes */{size}"})
            return
        start, end = rng if isinstance(rng, tuple) else (0, size)
        self.send_response(206 if isinstance(rng, tuple) else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Etag", f'"{digest}"')
        self.send_header("Content-Length", str(end - start))
        if isinstance(rng, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not send_body:
            return
        self._sent = 0  # a kept-alive connection serves several requests
        try:
            if info is not None:
                self._send(info, start, end)
            else:
                self._follow(digest, blob_id, size, start, end)
        except StoreError as e:  # a failed download was told as a warning already: the cut client is info
            logs.event(log, logging.INFO if isinstance(e, DownloadFailed) else logging.WARNING, "serve_stopped",
                       f"serving {digest} to {client} stopped after {self._sent} of {end - start} bytes: {e}",
                       digest=digest, client=client, bytes=self._sent, of=end - start, reason=str(e))
            self.close_connection = True
        except OSError as e:  # the client went away (a cancelled job): expected, not a fault
            why = e.strerror or type(e).__name__
            logs.event(log, logging.INFO, "client_gone",
                       f"client {client} went away after {self._sent} of {end - start} bytes of {digest} ({why})",
                       digest=digest, client=client, bytes=self._sent, of=end - start, reason=why)
            self.close_connection = True

    def _await_size(self, digest: str, blob_id: bytes) -> tuple[int, bytes]:
        """The size of a blob being downloaded (-1 when its download failed), and the write it is
        followed in: another one when the first was dropped and the download goes on from another
        source (a parent's bytes did not match). Upstream did not always say the size up front (no
        Content-Length): then only the end of the download tells."""
        store, idle_since = self.server.store, time.monotonic()
        while True:
            state, _, size = store.progress(digest, blob_id)
            if state == "gone":
                if (successor := self._successor(digest, blob_id)) is None:
                    return -1, blob_id
                blob_id = successor
                continue
            if size >= 0:
                return size, blob_id
            if time.monotonic() - idle_since > IDLE_LIMIT:
                return -1, blob_id
            self.server.wait(digest, WAIT_SLICE)

    def _successor(self, digest: str, blob_id: bytes) -> bytes | None:
        """The write that a download of `digest` goes on in after the write `blob_id` was dropped
        (the download tries its next source), once it has begun; None when no download goes on."""
        deadline = time.monotonic() + IDLE_LIMIT
        while time.monotonic() < deadline:
            under_way, current = self.server.writing(digest)
            if not under_way:
                return None
            if current and current != blob_id:
                return current
            self.server.wait(digest, WAIT_SLICE)
        return None

    def _follow(self, digest: str, blob_id: bytes, size: int, start: int, end: int) -> None:
        """Send [start, end) of a blob still being downloaded, as its bytes reach the store. The
        last byte waits for the store to publish the blob, i.e. for its digest to match."""
        store = self.server.store
        pos, idle_since = start, time.monotonic()
        while pos < end:
            state, written, _ = store.progress(digest, blob_id)
            if state == "published":
                self._send(BlobInfo(digest, size, blob_id, CHUNK_SIZE), pos, end)
                return
            if state == "gone":
                info = store.blob_info(digest)  # another download may have published the same bytes
                if info is None and pos == start and (successor := self._successor(digest, blob_id)):
                    blob_id = successor  # nothing sent yet: follow the download from its next source
                    continue
                if info is None:
                    raise DownloadFailed("its download failed")
                self._send(info, pos, end)
                return
            avail = min(written, size - 1, end)
            if avail > pos:
                self._send(BlobInfo(digest, size, blob_id, CHUNK_SIZE), pos, avail)
                pos, idle_since = avail, time.monotonic()
                continue
            if time.monotonic() - idle_since > IDLE_LIMIT:
                raise StoreError(f"no progress for {IDLE_LIMIT} s")
            self.server.wait(digest, WAIT_SLICE)

    def _send(self, info: BlobInfo, start: int, end: int) -> None:
        """Send [start, end): the store reads each chunk into this connection's one buffer (no
        allocation per chunk), and the socket (or OpenSSL) sends it after the read transaction
        ended, so a slow client holds nothing up."""
        if self._buf is None or len(self._buf) < info.chunk_size:
            self._buf = memoryview(bytearray(max(info.chunk_size, CHUNK_SIZE)))
        sock = self.connection
        for piece in self.server.store.send_blob(info, self._buf, start, end):
            sock.sendall(piece)
            self._sent += len(piece)

    def log_message(self, format: str, *args: object) -> None:
        pass


class DownloadFailed(StoreError):
    """The download a follower streamed from ended without publishing the blob."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that fails outside a transfer: a client that went away is one line, not
        socketserver's traceback on stderr; anything else is a bug, logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            why = exc.strerror or type(exc).__name__
            logs.event(log, logging.INFO, "client_gone", f"blob client {client_address[0]} went away: {why}",
                       client=client_address[0], reason=why)
        else:
            log.exception("blob server: the connection from %s failed", client_address[0])
    store: Store
    wait: Callable[[str, float], None]  # (digest, timeout): until a download makes progress
    writing: Callable[[str], tuple[bool, bytes]]  # digest -> (a download is under way, the blob id it writes now)
    signed: Callable[[str, str], bool]  # (digest, query): a URL the addon made, not expired


class _TLSServer(_Server):
    def __init__(self, address: tuple[str, int], handler: type[_Handler], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:  # on the connection's own thread
        self._serve_tls(request, client_address, None)

    def serve_taken(self, sock: socket.socket, client_address: Any, done: Callable[[], None]) -> None:
        """A client's tunnel taken from mitmproxy (BlobServer.serve_tunnel), on its own thread."""
        try:
            self._serve_tls(sock, client_address, CONNECT_REPLY)
        except Exception:
            self.handle_error(sock, client_address)
        finally:
            sock.close()  # a no-op once TLS took the descriptor over (and closed it)
            done()

    def _serve_tls(self, request: socket.socket, client_address: Any, reply: bytes | None) -> None:
        """`reply`: the answer to the client's CONNECT, when this socket is the client's own;
        None on the listener, where a CONNECT head from mitmproxy's upstream mode may come first."""
        try:
            request.settimeout(TLS_TIMEOUT)
            if reply is None:
                _accept_connect(request)
            else:
                request.sendall(reply)
            conn = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.debug("TLS handshake with a blob client failed: %s", e)
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]  # typeshed wants BaseServer's Self
        finally:
            conn.close()


def _accept_connect(sock: socket.socket) -> None:
    """In mitmproxy's upstream mode the tunnel to this listener is opened like one through the
    egress proxy: a CONNECT head comes first. Answer it as a proxy would; then TLS as usual."""
    if sock.recv(8, socket.MSG_PEEK) != b"CONNECT ":
        return
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)  # byte by byte: nothing past the head may be taken from the TLS handshake
        if not byte or len(head) > 8192:
            raise OSError("incomplete CONNECT head")
        head += byte
    sock.sendall(CONNECT_REPLY)


class BlobServer:
    """The plain listener (`port`, for flows mitmproxy forwards) and, given a TLS context, the
    TLS listener (`tls_port`, for clients redirected to DIRECT_HOST)."""

    def __init__(self, store: Store, wait: Callable[[str, float], None] | None = None,
                 tls: ssl.SSLContext | None = None,
                 writing: Callable[[str], tuple[bool, bytes]] = lambda digest: (False, b""),
                 secret: bytes | None = None) -> None:
        """`secret`: the key blob URLs are signed with, when several worker processes must take
        each other's (a redirected client may reach any of them); else a random one."""
        self._secret = secret or os.urandom(32)
        self._servers: list[_Server] = [_Server(("127.0.0.1", 0), _Handler)]
        self._tls = _TLSServer(("127.0.0.1", 0), _Handler, tls) if tls is not None else None
        if self._tls is not None:
            self._servers.append(self._tls)
        for server in self._servers:
            server.store = store
            server.wait = wait or (lambda digest, timeout: time.sleep(min(timeout, 0.02)))
            server.signed = self._valid
            server.writing = writing
            threading.Thread(target=server.serve_forever, name="hubcache-blobserver", daemon=True).start()
        self.port = self._servers[0].server_address[1]
        self.tls_port = self._tls.server_address[1] if self._tls is not None else 0

    def serve_tunnel(self, sock: socket.socket, client_address: tuple[str, int], done: Callable[[], None]) -> bool:
        """Serve a client's CONNECT to DIRECT_HOST on the client's own socket (hooks/direct.py takes
        it from mitmproxy): answer the CONNECT, then TLS and the blob requests as the TLS listener
        does, on a thread of its own; `done()` once the connection is finished with (the socket
        closed). False, and nothing done, without a TLS listener."""
        if self._tls is None:
            return False
        threading.Thread(target=self._tls.serve_taken, args=(sock, client_address, done), name="hubcache-blobtunnel",
                         daemon=True).start()
        return True

    def path(self, digest: str, pending: bytes = b"", client: str = "") -> str:
        """A signed path for `digest` (`pending`: the blob id of its download under way; `client`:
        who it is for, named in the log line of a cancelled transfer)."""
        query = f"exp={int(time.time()) + URL_TTL}" + (f"&pending={pending.hex()}" if pending else "")
        query += f"&{urlencode({'client': client})}" if client else ""
        return f"{PATH_PREFIX}{digest}?{query}&sig={self._sign(digest, query)}"

    def _sign(self, digest: str, query: str) -> str:
        return hmac.new(self._secret, f"{digest}?{query}".encode(), hashlib.sha256).hexdigest()[:32]

    def _valid(self, digest: str, query: str) -> bool:
        signed, _, sig = query.rpartition("&sig=")
        if not hmac.compare_digest(sig, self._sign(digest, signed)):
            return False
        exp = parse_qs(signed).get("exp", ["0"])[0]
        return exp.isdigit() and int(exp) >= time.time()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
