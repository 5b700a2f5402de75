"""A loopback HTTP server inside the proxy process that serves blob hits from the store.

mitmproxy's `Response.make` needs the whole body in memory; instead the addon points a hit's flow
at this server and mitmproxy streams the answer like any upstream response (memory stays flat).
Each connection gets a thread; reads are short LMDB read transactions, one per chunk.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .routes import is_digest
from .store import Store, StoreError

log = logging.getLogger("hubcache")

PATH_PREFIX = "/_hubcache/blobs/"
SEND_BUFFER = 4 * 1024 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


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
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Room for several chunks, so that most are sent straight from the map without a copy.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        digest = self.path[len(PATH_PREFIX) :] if self.path.startswith(PATH_PREFIX) else ""
        info = self.server.store.blob_info(digest) if is_digest(digest) else None
        if info is None:  # evicted between the decision and this request
            body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            return
        rng = parse_range(self.headers.get("Range"), info.size)
        if rng == "invalid":
            body = b'{"errors":[{"code":"RANGE_INVALID","message":"requested range not satisfiable"}]}'
            self.send_response(416)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Range", f"bytes */{info.size}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            return
        start, end = rng if isinstance(rng, tuple) else (0, info.size)
        self.send_response(206 if isinstance(rng, tuple) else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Content-Digest", info.digest)
        self.send_header("Etag", f'"{info.digest}"')
        self.send_header("Content-Length", str(end - start))
        if isinstance(rng, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{info.size}")
        self.end_headers()
        if not send_body:
            return
        sock = self.connection
        leftover: list[bytes] = []

        def write(piece: memoryview) -> None:
            # Inside a read transaction: send what the socket takes now, copy the rest out.
            try:
                sent = sock.send(piece, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(piece):
                leftover.append(bytes(piece[sent:]))

        try:
            for _ in self.server.store.send_blob(info, write, start, end):
                while leftover:  # outside the transaction: a slow client holds nothing up
                    sock.sendall(leftover.pop())
        except StoreError as e:
            log.error("hubcache: serving %s failed: %s", digest, e)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store


class BlobServer:
    def __init__(self, store: Store) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.store = store
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hubcache-blobserver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
