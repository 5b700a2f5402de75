"""Following a registry's redirects: one policy for hubcache's own requests on the event loop
(DockerHub.follow) and for blob downloads on a flight's thread (fetch.get).

Pure. A redirect is followed to any https URL, at most MAX_REDIRECTS times; on a change of host
the Authorization stays behind (as Docker's own clients do: a CDN's URL carries its own
signature). A host redirected to that answers 401 may be asked once more with a token of the realm
its challenge names (registry.k8s.io sends everything to an Artifact Registry host that wants one).
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def without_auth(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "authorization"]


class Hops:
    """Where the next hop of one request goes, and with which headers."""

    def __init__(self, url: str, headers: list[tuple[str, str]], plain: bool = False) -> None:
        self.url, self.headers = url, headers
        self.plain = plain  # http targets too (a plain-http parent registry and its storage)
        self.redirects = 0
        self.moved = False  # a redirect changed the host
        self.retried = False  # this hop was asked again with a token

    def redirected(self, status: int, location: str) -> bool:
        """Whether the answer is a redirect to follow; if so the next hop is `url` with `headers`.
        Raises ValueError for one too many or one to a non-https URL."""
        if status not in REDIRECTS or not location:
            return False
        target = urljoin(self.url, location)
        self.redirects += 1
        if self.redirects > MAX_REDIRECTS:
            raise ValueError(f"more than {MAX_REDIRECTS} redirects")
        if urlsplit(target).scheme != "https" and not (self.plain and urlsplit(target).scheme == "http"):
            raise ValueError("redirected to a non-HTTPS URL")
        if (urlsplit(target).hostname or "").lower() != (urlsplit(self.url).hostname or "").lower():
            self.headers, self.moved = without_auth(self.headers), True
        self.url, self.retried = target, False
        return True

    def wants_token(self, status: int) -> bool:
        """A 401 from a host redirected to, not asked again yet: worth a token of its realm."""
        return status == 401 and self.moved and not self.retried

    def with_token(self, authorization: str) -> None:
        self.headers, self.retried = without_auth(self.headers) + [("Authorization", authorization)], True
