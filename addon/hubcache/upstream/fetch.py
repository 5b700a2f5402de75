"""A blocking, streaming HTTPS GET for fetch threads: hubcache's own blob downloads.

Blob misses are fetched by hubcache itself, not by the client that asked first, so that the
download survives that client and can be shared (flights.py). This runs on a thread of its own:
TLS decryption, hashing and store writes then stay off mitmproxy's event loop.

Same TLS settings as every other upstream connection (upstream.ssl_context) and the same name
resolution as mitmproxy (the system resolver through getaddrinfo). Redirects are followed to
other hosts (Docker Hub's blob 307 to its CDN) without the Authorization header, as Docker's own
clients do; only HTTPS targets are followed. A host redirected to that answers 401 is asked once
more with what `authorize(www_authenticate, url)` gives (registry.k8s.io sends blobs to an
Artifact Registry host that wants an anonymous token of its own realm). Each hop waits its turn (`pace`, pacing.Pacer.hold)
and holds its host's slot until the answer is closed: for the blob, the whole transfer.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from hubcache.decide.redirects import Hops
from hubcache.settings import Egress, TLSSettings
from hubcache.upstream import egress as route
from hubcache.upstream.client import UpstreamError, header_dict, redact, request_head, ssl_context

READ_SIZE = 64 * 1024  # a TLS record is at most 16 KiB: a larger buffer is only allocated, not filled
MAX_ERROR_BODY = 64 * 1024  # of a non-200 answer that is relayed to clients


class FetchError(UpstreamError):
    """A fetch failed; `hops` says which hosts were asked and how they answered."""

    def __init__(self, message: str, hops: list[Hop] | None = None) -> None:
        super().__init__(message)
        self.hops = hops or []



def _patiently[T](receive: Callable[[], T], idle: Callable[[], None], tick: float, stall: float) -> T:
    """`receive()` (on a socket whose timeout is `tick`), tried again after every `tick` seconds
    without a byte, `idle()` called each time; TimeoutError once `stall` seconds passed so."""
    quiet = 0.0
    while True:
        try:
            return receive()
        except TimeoutError:
            quiet += tick
            if quiet >= stall:
                raise
            idle()

@dataclass
class Hop:
    """One request of a fetch: where it went and how it was answered (None: no answer)."""

    host: str
    status: int | None
    error: str = ""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    url: str
    hops: list[Hop] = field(default_factory=list)
    _sock: socket.socket | None = None  # TLS, or plain to a parent over http
    _conn: h11.Connection | None = None
    _release: Callable[[], None] | None = None  # frees the hop's pacing slot
    _left: int | None = None  # readinto: body bytes still to come (-1: through iter_body); None before the first
    _early: memoryview = field(default_factory=lambda: memoryview(b""))  # body bytes received, not handed out
    _stall: float = 60.0  # readinto: no byte for this long is a stall
    _body: Iterator[bytes] | None = None  # readinto of a body that h11 frames

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def iter_body(self, idle: Callable[[], None] = lambda: None, tick: float = 0.1) -> Iterator[bytes]:
        """The body as it arrives. `idle()` is called whenever no byte came for `tick` seconds
        (the caller hands on what it has meanwhile). Raises FetchError on a broken transfer, or
        when no byte came for the read timeout (a stall)."""
        assert self._sock and self._conn
        sock, stall_limit = self._sock, self._sock.gettimeout() or 60.0
        sock.settimeout(tick)
        try:
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    self._conn.receive_data(_patiently(lambda: sock.recv(READ_SIZE), idle, tick, stall_limit))
                elif isinstance(event, h11.Data):
                    yield event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        except (OSError, ssl.SSLError, h11.ProtocolError) as e:  # TimeoutError included: a stall
            raise self._fault(e) from e

    def read_into(self, space: Callable[[], memoryview], idle: Callable[[], None] = lambda: None,
                  tick: float = 0.1) -> int:
        """Receive the next bytes of the body into `space()` (a buffer, not empty, asked for
        again after each `idle()`, which may move it); how many, 0 at the body's end. `idle` and
        errors as iter_body. A body of known length (Content-Length, no Transfer-Encoding) is
        received straight into the buffer, each TLS record decrypted there, past h11: no bytes
        object and no copy per record. Any other body comes through iter_body."""
        if self._left is None:
            self._left = self._raw_length(tick)
        if self._left < 0:
            return self._readinto_parsed(space, idle, tick)
        if self._early:
            n = self._take_early(space(), self._left)
            self._left -= n
            return n
        if not self._left:
            return 0
        sock, left = self._sock, self._left
        assert sock is not None

        def receive() -> int:
            buf = space()  # asked again after each idle(), which may move it
            return sock.recv_into(buf, min(len(buf), left))

        try:  # per TLS record: a plain try, no context manager on this path
            n = _patiently(receive, idle, tick, self._stall)
        except (OSError, ssl.SSLError) as e:
            raise self._fault(e) from e
        if not n:
            raise self._broke(f"GET {redact(self.url)}: transfer broke off: {self._left} bytes short")
        self._left -= n
        return n

    def _raw_length(self, tick: float) -> int:
        """The body's length, when readinto may receive it past h11 (-1: it may not); the
        bytes h11 received after the head become the body's first."""
        assert self._sock and self._conn
        length = self.header("content-length")
        if "transfer-encoding" in self.headers or not length.isdigit():
            return -1
        self._stall = self._sock.gettimeout() or 60.0
        self._sock.settimeout(tick)
        early, _ = self._conn.trailing_data
        self._early = memoryview(early)
        return int(length)

    def _readinto_parsed(self, space: Callable[[], memoryview], idle: Callable[[], None], tick: float) -> int:
        if self._body is None:
            self._body = self.iter_body(idle, tick)
        if not self._early:
            self._early = memoryview(next(self._body, b""))
        return self._take_early(space())  # space() after idle() had its say

    def _take_early(self, buf: memoryview, limit: int | None = None) -> int:
        """Copy the body bytes received but not handed out yet into `buf` (at most `limit`)."""
        n = min(len(buf), len(self._early), len(self._early) if limit is None else limit)
        buf[:n] = self._early[:n]
        self._early = self._early[n:]
        return n

    def _fault(self, e: Exception) -> FetchError:
        """What a body's receiving that failed with `e` tells: a stall, or a broken transfer."""
        if isinstance(e, TimeoutError):
            return self._broke(f"GET {redact(self.url)}: no data for too long (stalled)")
        return self._broke(f"GET {redact(self.url)}: transfer broke off: {e or type(e).__name__}")

    def _broke(self, why: str) -> FetchError:
        # The host answered: a body that breaks off or stalls is a fault of this transfer, and
        # does not make hubcache back off the host (its hops were already reported).
        return FetchError(why)

    def read_small(self, limit: int = MAX_ERROR_BODY) -> bytes:
        """The body of a (short) non-200 answer, cut at `limit`."""
        out = bytearray()
        try:
            for data in self.iter_body():
                out += data
                if len(out) >= limit:
                    break
        except UpstreamError:
            pass
        return bytes(out[:limit])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._release is not None:
            self._release()
            self._release = None


def get(
    url: str,
    headers: list[tuple[str, str]],
    tls: TLSSettings,
    timeout: float,
    allowed: Callable[[str], str | None] = lambda host: None,
    connect_timeout: float | None = None,
    egress: Egress | None = None,
    pace: Callable[[str], Callable[[], None]] = lambda host: lambda: None,
    authorize: Callable[[str, str], str | None] = lambda challenge, url: None,
    allow_http: bool = False,
) -> Response:
    """GET `url`, following redirects; the returned response's body is not read yet.

    `allowed(host)` returns why a host may not be asked now (offline, backing off), or None.
    `timeout` bounds every read (a stalled transfer fails after it), `connect_timeout` (default:
    `timeout`) the TCP connect. With `egress` (the corporate proxy) every hop, redirects to
    other hosts too, goes through a CONNECT tunnel of its own. `pace(host)` blocks until the hop may go and returns what frees
    its slot (called when the hop's answer is closed). `authorize(www_authenticate, url)`: the
    Authorization for a 401 after a redirect to another host (blocking; None: the 401 stands).
    `allow_http`: plain http URLs are asked too, the first and those redirected to (a parent
    registry in the data centre whose root is http, and its storage).
    """
    hops: list[Hop] = []
    way = Hops(url, headers, plain=allow_http)
    while True:
        url = way.url
        parts = urlsplit(url)
        host = parts.hostname or ""
        plain = allow_http and parts.scheme == "http"
        if (parts.scheme != "https" and not plain) or not host:
            raise FetchError(f"refusing a non-HTTPS upstream URL: {redact(url)}", hops)
        if why := allowed(host):
            raise FetchError(why, hops)
        release = pace(host)
        if why := allowed(host):  # went down while this hop waited its turn
            release()
            raise FetchError(why, hops)
        try:
            resp = _request(url, way.headers, tls, timeout, connect_timeout or timeout, egress, plain)
        except UpstreamError as e:
            release()
            hops.append(Hop(host, None, str(e)))
            raise FetchError(str(e), hops) from e
        resp._release = release
        hops.append(Hop(host, resp.status))
        resp.hops = hops
        try:
            redirected = way.redirected(resp.status, resp.header("location"))
        except ValueError as e:
            resp.close()
            raise FetchError(f"GET {redact(url)}: {e}", hops) from e
        if redirected:
            resp.close()
            continue
        if way.wants_token(resp.status) and (auth := _authorized(authorize, resp.header("www-authenticate"), url)):
            resp.close()
            way.with_token(auth)
            continue
        return resp


def _authorized(authorize: Callable[[str, str], str | None], challenge: str, url: str) -> str | None:
    try:
        return authorize(challenge, url)
    except (UpstreamError, TimeoutError):  # no token could be had (the realm's failure is recorded where it was asked): the 401 stands
        return None


def _request(url: str, headers: list[tuple[str, str]], tls: TLSSettings, timeout: float, connect_timeout: float,
             egress: Egress | None, plain: bool = False) -> Response:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (80 if plain else 443)
    try:
        raw = route.open_socket(host, port, egress, connect_timeout, timeout)
    except route.EgressError as e:
        raise UpstreamError(f"GET {redact(url)}: {e}") from e
    except TimeoutError as e:
        raise UpstreamError(f"GET {redact(url)}: cannot connect to {host}:{port}: timed out") from e
    except OSError as e:
        raise UpstreamError(f"GET {redact(url)}: cannot connect to {host}:{port}: {e}") from e
    try:
        sock = raw if plain else ssl_context(tls).wrap_socket(raw, server_hostname=host)
        conn = h11.Connection(h11.CLIENT)
        sock.sendall(request_head(conn, "GET", url, headers))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(READ_SIZE))
                continue
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError(f"GET {redact(url)}: connection closed before an answer")
    except UpstreamError:
        raw.close()
        raise
    except TimeoutError as e:
        raw.close()
        raise UpstreamError(f"GET {redact(url)}: no answer within {timeout:g} s") from e
    except (OSError, ssl.SSLError, h11.ProtocolError) as e:
        raw.close()
        raise UpstreamError(f"GET {redact(url)}: {e or type(e).__name__}") from e
    return Response(event.status_code, header_dict(event.headers), url, _sock=sock, _conn=conn)
