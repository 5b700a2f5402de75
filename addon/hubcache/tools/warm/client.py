"""HTTPS through the proxy, as a registry client sends it: one kept-alive CONNECT tunnel per host,
redirects followed (a large blob's 307 to hubcache's own blob listener, or a registry's to its
storage host), bodies streamed.

Trust: a registry's own host is verified against hubcache's CA alone, so a registry hubcache does
not intercept (it would tunnel it, and cache nothing) fails with a message that says so instead
of pulling past the cache; a host a redirect leads to is verified against the system's CAs and
hubcache's. An `Authorization` header never follows a redirect to another host.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from hubcache import __version__
from hubcache.tools.doctor.proxyenv import ProxyURL

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
CHUNK = 1 << 20
USER_AGENT = f"hubcache-warm/{__version__}"


class NotIntercepted(Exception):
    """The registry's certificate is not signed by hubcache's CA: the proxy does not cache it."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # empty when streamed to a sink
    url: str  # after redirects


class Client:
    """One worker's connections (not shared between threads)."""

    def __init__(self, proxy: ProxyURL, cafile: str, timeout: float = 300) -> None:
        self.proxy = proxy
        self.timeout = timeout
        self.own = ssl.create_default_context(cafile=cafile)  # registries: hubcache's CA only
        self.wide = ssl.create_default_context()  # redirect targets: the system's CAs and hubcache's
        self.wide.load_verify_locations(cafile=cafile)
        self.conns: dict[tuple[str, int, bool], http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def _conn(self, scheme: str, host: str, port: int, own: bool) -> http.client.HTTPConnection:
        key = (host, port, own)
        if key not in self.conns:
            auth = {"Proxy-Authorization": self.proxy.auth_header} if self.proxy.auth_header else {}
            if scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self.proxy.host, self.proxy.port, timeout=self.timeout, context=self.own if own else self.wide)
                conn.set_tunnel(host, port, headers=auth)
            else:  # plain http goes to the proxy in absolute form
                conn = http.client.HTTPConnection(self.proxy.host, self.proxy.port, timeout=self.timeout)
            self.conns[key] = conn
        return self.conns[key]

    def _send(self, method: str, url: str, headers: dict[str, str], own: bool) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        host, scheme = parts.hostname or "", parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "") if scheme == "https" else url
        send = {"Host": parts.netloc, "User-Agent": USER_AGENT, **headers}
        if scheme == "http" and self.proxy.auth_header:
            send["Proxy-Authorization"] = self.proxy.auth_header
        for attempt in (1, 2):  # a kept-alive connection the other end closed meanwhile: once more, anew
            conn = self._conn(scheme, host, port, own)
            try:
                conn.request(method, target, headers=send)
                return conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                self._drop(host, port, own)
                if own:
                    raise NotIntercepted(f"the certificate the proxy shows for {parts.netloc} is not signed by hubcache's CA "
                                         f"({e.verify_message}): hubcache does not cache this registry "
                                         f"(add it with --set hubcache_registries=+{parts.netloc}), or --cacert is not its CA") from e
                raise
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                self._drop(host, port, own)
                if attempt == 2:
                    raise
            except BaseException:
                self._drop(host, port, own)
                raise
        raise AssertionError("unreachable")

    def _drop(self, host: str, port: int, own: bool) -> None:
        conn = self.conns.pop((host, port, own), None)
        if conn is not None:
            conn.close()

    def get(self, url: str, headers: dict[str, str], sink: Callable[[bytes], None] | None = None,
            method: str = "GET", limit: int = 4 << 20, registry: bool = True) -> Answer:
        """The answer to `url` after redirects; the body to `sink` chunk by chunk when given (and
        the status is 200), else read whole (up to `limit` bytes). `registry`: `url` is on the
        registry's own host (verified against hubcache's CA alone); False for a token realm."""
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            same = urlsplit(url).netloc == origin
            with self._response(method, url, headers if same else _without_auth(headers), registry and same) as resp:
                answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"", url)
                if resp.status in REDIRECTS and "location" in answer.headers:
                    resp.read()
                    url = urljoin(url, answer.headers["location"])
                    continue
                if sink is not None and resp.status == 200:
                    while chunk := resp.read(CHUNK):
                        sink(chunk)
                else:
                    answer.body = resp.read(limit)
                return answer
        raise OSError(f"more than {MAX_REDIRECTS} redirects from {origin}")

    @contextmanager
    def _response(self, method: str, url: str, headers: dict[str, str], own: bool) -> Iterator[http.client.HTTPResponse]:
        resp = self._send(method, url, headers, own)
        parts = urlsplit(url)
        try:
            yield resp
        except BaseException:
            self._drop(parts.hostname or "", parts.port or 443, own)
            raise
        if resp.will_close or not resp.isclosed():
            self._drop(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), own)


def _without_auth(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}
