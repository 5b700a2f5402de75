"""hubcache's own upstream requests with small bodies: tokens, manifests, HEAD revalidation.

They use the same TLS settings as mitmproxy's upstream connections (`ssl_insecure`,
`ssl_verify_upstream_trusted_ca`, `ssl_verify_upstream_trusted_confdir`; certifi's bundle when
neither is set, as mitmproxy does) and the same name resolution (asyncio's open_connection, i.e.
the system resolver, like mitmproxy's server connections); in mitmproxy's upstream mode through
the same corporate proxy (egress.py). Bodies are small and bounded.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import h11

from hubcache.model import MAX_MANIFEST_BYTES
from hubcache.settings import Egress, TLSSettings
from hubcache.upstream import egress as route

MAX_BODY = MAX_MANIFEST_BYTES  # the largest answer hubcache reads whole: a manifest
USER_AGENT = "hubcache"


class UpstreamError(Exception):
    """The upstream could not be reached or answered something unusable."""


class BodyTooLarge(UpstreamError):
    """The upstream answered with a body over MAX_BODY bytes."""


class TransferError(UpstreamError):
    """The upstream answered (`status`), but its body broke off or stalled: a fault of this one
    transfer, not a sign that the host is down."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@functools.lru_cache(maxsize=8)
def ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=None if (tls.ca_file or tls.ca_path) else certifi.where())
    if tls.ca_file or tls.ca_path:
        ctx.load_verify_locations(cafile=tls.ca_file, capath=tls.ca_path)
    if tls.also_ca:
        ctx.load_verify_locations(cafile=tls.also_ca)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def request(
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    tls: TLSSettings,
    timeout: float,
    egress: Egress | None = None,
    allow_http: bool = False,
) -> UpstreamResponse:
    """One request; through a CONNECT tunnel of `egress` (the corporate proxy) when given.
    `allow_http`: a plain-http URL is asked too (a parent registry in the data centre)."""
    answered: list[int] = []  # the status, once the response head is in
    try:
        return await asyncio.wait_for(_request(method, url, headers, tls, answered, egress, allow_http), timeout)
    except TimeoutError as e:
        if answered:
            raise TransferError(f"{method} {redact(url)}: body stalled (not complete within {timeout:g} s)", answered[0]) from e
        raise UpstreamError(f"{method} {redact(url)}: no answer within {timeout:g} s") from e
    except (OSError, ssl.SSLError, h11.ProtocolError) as e:
        if answered:
            raise TransferError(f"{method} {redact(url)}: body broke off: {e}", answered[0]) from e
        raise UpstreamError(f"{method} {redact(url)}: {e}") from e


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """h11's response headers as lower-case names; repeated headers joined with ", "."""
    out: dict[str, str] = {}
    for name, value in raw:
        key, val = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = f"{out[key]}, {val}" if key in out else val
    return out


# Headers of an upstream answer that describe the connection or the encoding of its body, not
# the answer: never relayed to a client in an answer made here (it gets its own framing).
NOT_RELAYED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                         "te", "trailer", "upgrade", "proxy-authenticate", "set-cookie"})


def relayable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in NOT_RELAYED}


def request_head(conn: h11.Connection, method: str, url: str, headers: list[tuple[str, str]]) -> bytes:
    """The bytes of a whole HTTP/1.1 request without a body (hubcache sends no body upstream):
    its own User-Agent, one request per connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if port == 443 else f"{host}:{port}"
    # an empty value is no header (an Authorization for a registry that asks for none)
    all_headers = [("Host", host_header), ("User-Agent", USER_AGENT), ("Connection", "close"), *((k, v) for k, v in headers if v)]
    return conn.send(h11.Request(method=method, target=target, headers=all_headers)) + conn.send(h11.EndOfMessage())


def redact(url: str) -> str:
    """Host and path only: queries may carry account names."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def _request(method: str, url: str, headers: list[tuple[str, str]], tls: TLSSettings,
                   answered: list[int], egress: Egress | None, allow_http: bool = False) -> UpstreamResponse:
    parts = urlsplit(url)
    plain = allow_http and parts.scheme == "http"
    if (parts.scheme != "https" and not plain) or not parts.hostname:
        raise UpstreamError(f"refusing a non-HTTPS upstream URL: {redact(url)}")
    host = parts.hostname
    if plain:
        reader, writer = await asyncio.open_connection(host, parts.port or 80)
    else:
        reader, writer = await route.open_tls(host, parts.port or 443, ssl_context(tls), egress)
    try:
        conn = h11.Connection(h11.CLIENT)
        writer.write(request_head(conn, method, url, headers))
        await writer.drain()
        status = 0
        resp_headers: dict[str, str] = {}
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answered.append(status)
                resp_headers = header_dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise BodyTooLarge(f"{method} {redact(url)}: body over {MAX_BODY} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return UpstreamResponse(status, resp_headers, bytes(body))
    finally:
        writer.close()
