"""Network probes through the proxy: a CONNECT tunnel, TLS over it, one HTTPS request over that.

Plain sockets and http.client, so each step (the CONNECT, the TLS handshake, the request) fails
on its own and the check can name which one.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from urllib.parse import urlsplit

from hubcache.tools.doctor.proxyenv import ProxyURL

TIMEOUT = 10.0


class TunnelError(OSError):
    def __init__(self, status: int, reason: str):
        super().__init__(f"the proxy answered CONNECT with {status} {reason}")
        self.status = status


def tunnel(proxy: ProxyURL, host: str, port: int = 443, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to host:port through the proxy (HTTP CONNECT)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    try:
        req = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if proxy.auth_header:
            req += f"Proxy-Authorization: {proxy.auth_header}\r\n"
        sock.sendall((req + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("the proxy closed the connection without answering CONNECT")
            head += chunk
            if len(head) > 65536:
                raise OSError("the proxy's answer to CONNECT is not HTTP")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OSError(f"the proxy's answer to CONNECT is not HTTP: {status_line[:80]!r}")
        if parts[1] != "200":
            raise TunnelError(int(parts[1]), parts[2] if len(parts) > 2 else "")
        return sock
    except BaseException:
        sock.close()
        raise


def tls(proxy: ProxyURL, host: str, context: ssl.SSLContext, port: int = 443) -> ssl.SSLSocket:
    sock = tunnel(proxy, host, port)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def https_request(proxy: ProxyURL, context: ssl.SSLContext, method: str, url: str,
                  headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request through the proxy; headers of the answer with lower-case names."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn = http.client.HTTPConnection(host, parts.port or 443, timeout=TIMEOUT)
    conn.sock = tls(proxy, host, context, parts.port or 443)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.putrequest(method, path or "/", skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read(1 << 20)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()
