"""Shared plumbing for the small HTTPS servers of the fake Docker Hub (token, CDN).

Each server is a script started as its own process; this module gives it a
threaded TLS server and a request log with one JSON line per request, which
`hubenv.Upstream.requests()` reads back.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RequestLog:
    """Appends one JSON object per line; a line is written whole, under a lock."""

    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **fields) -> None:
        line = json.dumps(fields, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, handler, context: ssl.SSLContext, log: RequestLog, host: str):
        self.context = context
        self.log = log
        self.default_host = host  # logged when a client sends no Host header
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a
        # slow or broken client (or a bare TCP readiness probe) never blocks
        # the accept loop.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Clients that hang up mid-body are normal in these tests; keep stderr quiet.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


class LoggedHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, and `self.send(...)`/`self.done(...)` logging."""

    protocol_version = "HTTP/1.1"
    server_version = "hubcache-test"
    sys_version = ""
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # the JSON request log replaces the stderr access log

    def setup(self):
        super().setup()
        self._t0 = time.time()

    def host(self) -> str:
        h = self.headers.get("Host") or self.server.default_host
        return h.split(":")[0]  # names only here, never IPv6 literals

    def record(self, status: int, sent: int, **extra) -> None:
        """Log the request when its response is finished (t is completion time)."""
        self.server.log.write(
            t=time.time(), t0=self._t0, host=self.host(), method=self.command,
            path=self.path, status=status, bytes=sent,
            # every request header as received: tests search these captures for leaked secrets
            request_headers=[[k, v] for k, v in self.headers.items()], **extra,
        )

    def send_bytes(self, status: int, body: bytes, content_type: str, headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(status, 0 if self.command == "HEAD" else len(body))

    def parse_request(self):
        ok = super().parse_request()
        self._t0 = time.time()  # per request, not per connection
        return ok


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--listen", required=True, help="IP:PORT")
    p.add_argument("--cert", required=True, help="PEM chain")
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True, help="JSON-lines request log")
    p.add_argument("--host", required=True, help="host name to log when Host is absent")
    return p


def serve(args, handler) -> None:
    """Run until SIGTERM/SIGINT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ip, port = args.listen.rsplit(":", 1)
    server = TLSServer((ip, int(port)), handler, ctx, RequestLog(args.log), args.host)

    def stop(signum, frame):
        # shutdown() waits for serve_forever, so it must run off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
