"""The route of every connection hubcache opens to an upstream host: direct, or a CONNECT tunnel
through the corporate egress proxy (mitmproxy's upstream mode, `Settings.egress`).

Through the proxy: a TCP connection to the proxy, `CONNECT host:443` with `Proxy-Authorization:
Basic` when it has a login, and, once it answers 2xx, TLS to the upstream host inside the tunnel
(the registry's certificate is checked with mitmproxy's upstream TLS options as on a direct
connection). The login goes to the proxy only: it is in the CONNECT head and nowhere else. A
proxy that refuses (407, 403, 502, ...) is an `EgressRefused` whose message says what to fix.
Both an asyncio form (client.py, the probe) and a blocking one (fetch.py's threads).
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from hubcache.settings import Egress

MAX_HEAD = 16 * 1024  # of the proxy's answer to CONNECT


class EgressError(OSError):
    """The egress proxy could not be reached, or did not open the tunnel."""


class EgressRefused(EgressError):
    """The egress proxy answered CONNECT with a status other than 2xx."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


FIXES = {
    407: "it wants a login: set upstream_auth or hubcache_upstream_auth_file to the proxy's user:password",
    403: "its policy forbids this host: ask the proxy's operator to allow CONNECT to it on port 443",
}
FIX_OTHER = "the proxy cannot reach it: check the proxy's own route and DNS to this host"


def connect_head(host: str, port: int, egress: Egress) -> bytes:
    """The CONNECT request for host:port, with the proxy's login when it has one."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", "User-Agent: hubcache"]
    if auth := egress.authorization():
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_answer(head: bytes, host: str, port: int, egress: Egress) -> None:
    """Raise EgressRefused unless the proxy's answer head (up to the blank line) is a 2xx."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise EgressError(f"egress proxy {egress} answered CONNECT {host}:{port} with no HTTP status "
                          f"({status_line[:60]!r}): is mode=upstream:{egress} an HTTP proxy?")
    status = int(parts[1])
    if 200 <= status < 300:
        return
    reason = parts[2].strip() if len(parts) > 2 else ""
    raise EgressRefused(f"egress proxy {egress} refused CONNECT {host}:{port}: {status} {reason}".rstrip()
                        + f" ({FIXES.get(status, FIX_OTHER)})", status)


def _unreachable(egress: Egress, e: BaseException) -> EgressError:
    return EgressError(f"cannot connect to egress proxy {egress}: {e or 'timed out'} "
                       "(check mode=upstream:URL and this host's route to the proxy)")


# -- asyncio --------------------------------------------------------------------------------


async def _tunnel(host: str, port: int, egress: Egress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        reader, writer = await asyncio.open_connection(egress.host, egress.port, limit=MAX_HEAD)
    except OSError as e:
        raise _unreachable(egress, e) from e
    try:
        writer.write(connect_head(host, port, egress))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise EgressError(f"egress proxy {egress} closed the connection on CONNECT {host}:{port}") from e
        except asyncio.LimitOverrunError as e:
            raise EgressError(f"egress proxy {egress} answered CONNECT {host}:{port} with an oversized head") from e
        check_answer(head, host, port, egress)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def open_tls(host: str, port: int, context: ssl.SSLContext,
                   egress: Egress | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS stream to host:port: direct, or inside a CONNECT tunnel through `egress`."""
    if egress is None:
        return await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    reader, writer = await _tunnel(host, port, egress)
    try:
        await writer.start_tls(context, server_hostname=host)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def probe(host: str, port: int, egress: Egress | None) -> None:
    """Open the route to host:port (a TCP connection, or a tunnel the proxy accepted) and close
    it. Raises OSError (EgressError for the proxy's part)."""
    if egress is None:
        _, writer = await asyncio.open_connection(host, port)
    else:
        _, writer = await _tunnel(host, port, egress)
    writer.close()


# -- blocking -------------------------------------------------------------------------------


def open_socket(host: str, port: int, egress: Egress | None, connect_timeout: float, timeout: float) -> socket.socket:
    """A TCP socket to host:port, or to `egress` with an open tunnel to host:port; TLS is the
    caller's. Raises OSError (EgressError for the proxy's part); `timeout` is set on it."""
    if egress is None:
        raw = socket.create_connection((host, port), timeout=connect_timeout)
        raw.settimeout(timeout)
        return raw
    try:
        raw = socket.create_connection((egress.host, egress.port), timeout=connect_timeout)
    except OSError as e:
        raise _unreachable(egress, e) from e
    try:
        raw.settimeout(timeout)
        raw.sendall(connect_head(host, port, egress))
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_HEAD:
                raise EgressError(f"egress proxy {egress} answered CONNECT {host}:{port} with an oversized head")
            # One byte at a time past the head would be slow; the head is small and the proxy
            # sends nothing after it until the TLS handshake starts, so whole reads are safe.
            data = raw.recv(4096)
            if not data:
                raise EgressError(f"egress proxy {egress} closed the connection on CONNECT {host}:{port}")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        check_answer(head + b"\r\n\r\n", host, port, egress)
        if rest:
            raise EgressError(f"egress proxy {egress} sent data before the TLS handshake to {host}:{port}")
    except BaseException:
        raw.close()
        raise
    return raw
