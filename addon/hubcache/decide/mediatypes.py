"""Accept negotiation for manifests.

Clients differ (see the notes): skopeo and dockerd send one Accept line per media type, containerd
one comma-joined line with */*. Everything is parsed; a cached representation is served only when
the client accepts its media type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hubcache.model import INDEX_TYPES


@dataclass(frozen=True)
class Accept:
    """Parsed Accept header lines: media range -> quality. Empty means 'anything'."""

    ranges: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Accept:
        ranges: list[tuple[str, float]] = []
        for line in lines:
            for item in line.split(","):
                parts = [p.strip() for p in item.split(";")]
                media = parts[0].lower()
                if not media:
                    continue
                q = 1.0
                for param in parts[1:]:
                    key, _, value = param.partition("=")
                    if key.strip().lower() == "q":
                        try:
                            q = min(max(float(value), 0.0), 1.0)
                        except ValueError:
                            q = 0.0
                ranges.append((media, q))
        return cls(tuple(ranges))

    def quality(self, media_type: str) -> float:
        """The q-value the client gives media_type (0 = not acceptable); most specific range wins."""
        if not self.ranges:
            return 1.0
        media_type = media_type.lower()
        major = media_type.split("/", 1)[0]
        best: tuple[int, float] | None = None
        for media, q in self.ranges:
            if media == media_type:
                rank = 3
            elif media == f"{major}/*":
                rank = 2
            elif media == "*/*":
                rank = 1
            else:
                continue
            if best is None or rank > best[0] or (rank == best[0] and q > best[1]):
                best = (rank, q)
        return best[1] if best else 0.0

    def accepts(self, media_type: str) -> bool:
        return self.quality(media_type) > 0.0


def choose(media_types: Iterable[str], accept: Accept) -> str | None:
    """The cached media type to serve: highest q, then an index/list (what a registry returns to a
    client that accepts both), else None when the client accepts none of them."""
    best: tuple[float, bool, str] | None = None
    for media_type in media_types:
        q = accept.quality(media_type)
        if q <= 0.0:
            continue
        key = (q, media_type in INDEX_TYPES, media_type)
        if best is None or key > best:
            best = key
    return best[2] if best else None
