"""Which registry requests are image pulls, and which pull the rest of a client's requests belong
to: the counters the store keeps (per image reference and digest, per client) are made of these.

A pull starts with a manifest request by tag (docker and containerd HEAD the tag, skopeo GETs
it), or by digest when the client has no pull of that repository under way (`image@sha256:…`).
A GET of the tag right after the same client's HEAD of it is the same pull. Everything else the
client then asks of that repository (the index's platform manifest, config, layers) adds its
bytes to that pull until the client has been quiet on it for `idle` seconds. Only answers a
client got (200, 206) count.

No clock of its own: the caller passes `now` (seconds) and serialises calls.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hubcache.model import is_digest

IDLE_SECONDS = 300.0  # a pull's later requests (layers) are counted with it until it is quiet this long
HEAD_THEN_GET = 30.0  # a GET of a tag this soon after the same client's HEAD of it is the same pull
MAX_OPEN = 10_000  # pulls under way remembered (clients x repositories); the oldest are forgotten


@dataclass(frozen=True)
class Served:
    """One answered registry request, as the counters see it."""

    client: str  # proxy login, else address ("" none)
    repository: str  # the store's name of the repository
    image: str  # the repository as `docker pull` names it: docker.io/library/postgres
    manifest: bool  # a manifest request (else a blob)
    method: str
    reference: str  # tag or digest
    digest: str  # the digest a manifest answer carried (Docker-Content-Digest); "" unknown
    status: int
    size: int  # body bytes sent to the client
    from_store: bool  # answered without asking upstream


@dataclass(frozen=True)
class Count:
    """What one request adds: to the image (`reference` "" when it belongs to no pull), the
    client, and the totals."""

    reference: str
    digest: str
    client: str
    pull: bool  # a pull starts here
    hit: bool  # that pull's manifest came from the store: a pull saved upstream
    bytes: int
    store_bytes: int  # of `bytes`, sent from the store


@dataclass
class _Open:
    reference: str
    digest: str
    last: float
    head: bool  # begun by a HEAD of the tag (a GET of it may follow)


class Pulls:
    def __init__(self, idle: float = IDLE_SECONDS, limit: int = MAX_OPEN) -> None:
        self.idle = idle
        self.limit = limit
        self._open: OrderedDict[tuple[str, str], _Open] = OrderedDict()  # (client, repository), least recent first

    def count(self, r: Served, now: float) -> Count | None:
        """What `r` adds to the counters, or None when it adds nothing."""
        if r.status not in (200, 206) or not r.repository:
            return None
        size = r.size if r.method == "GET" else 0
        key = (r.client, r.repository)
        current = self._open.get(key)
        if current is not None and now - current.last > self.idle:
            current = None
        by_tag = r.manifest and not is_digest(r.reference)
        if by_tag:
            reference = f"{r.image}:{r.reference}"
            if (current is not None and current.head and r.method == "GET" and current.reference == reference
                    and current.digest == r.digest and now - current.last <= HEAD_THEN_GET):
                current.head, current.last = False, now
                return self._bytes(current, r, size)
            return self._start(key, _Open(reference, r.digest, now, r.method == "HEAD"), r, size)
        if current is not None:
            current.last = now
            self._open.move_to_end(key)
            return self._bytes(current, r, size)
        if r.manifest and r.method == "GET":
            return self._start(key, _Open(f"{r.image}@{r.reference}", r.reference, now, False), r, size)
        if not size:
            return None
        return Count("", "", r.client, False, False, size, size if r.from_store else 0)

    def _start(self, key: tuple[str, str], pull: _Open, r: Served, size: int) -> Count:
        self._open[key] = pull
        self._open.move_to_end(key)
        while len(self._open) > self.limit:
            self._open.popitem(last=False)
        return Count(pull.reference, pull.digest, r.client, True, r.from_store, size, size if r.from_store else 0)

    @staticmethod
    def _bytes(pull: _Open, r: Served, size: int) -> Count | None:
        if not size:
            return None
        return Count(pull.reference, pull.digest, r.client, False, False, size, size if r.from_store else 0)
