"""What the status page shows, as plain data (hooks/status.py gathers it), and the sampled history
behind its charts: cumulative counters taken every SAMPLE_SECONDS, the differences charted."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from hubcache.model import ImageCounter

SAMPLE_SECONDS = 60.0  # one point of the charts a minute
KEPT_SAMPLES = 24 * 60  # a day of them


@dataclass(frozen=True)
class Sample:
    """The cumulative counters at `at` (wall time): registry requests answered from the store
    (hit, revalidated, stale) and fetched upstream (miss), and the body bytes sent from each."""

    at: float
    hits: float = 0.0
    misses: float = 0.0
    store_bytes: float = 0.0
    upstream_bytes: float = 0.0


@dataclass(frozen=True)
class Interval:
    """What happened between two samples: the hit ratio (None: no request), bytes from each source."""

    end: float
    ratio: float | None
    store_bytes: float
    upstream_bytes: float


@dataclass(frozen=True)
class Account:
    name: str
    spent: float  # counted pulls hubcache spent as it since start
    left: float | None  # pulls left in Hub's window; math.inf unlimited; None not known


@dataclass(frozen=True)
class Upstream:
    host: str  # a host, or "registry" for all of a registry's host aliases
    reason: str  # why it is backing off; "" when it answers
    seconds_left: float  # of the back-off; 0 when it answers
    last_ok: float | None  # wall time of its last good answer


@dataclass(frozen=True)
class Recent:
    """One recent miss or error, as its log line names it."""

    at: float
    outcome: str
    method: str
    what: str  # kind repository reference
    status: int | None
    client: str
    note: str


@dataclass(frozen=True)
class Snapshot:
    now: float
    started: float
    samples: tuple[Sample, ...]  # oldest first; the last one is now
    saved: float  # manifest GETs answered from the store: pulls no registry counted
    accounts: tuple[Account, ...]
    upstream: tuple[Upstream, ...]
    offline: bool
    images: tuple[ImageCounter, ...] | None  # None: the store keeps no per-image counters
    store_bytes: int | None  # None: the store is not open
    store_cap: int  # 0: no cap
    recent: tuple[Recent, ...]  # newest first
    version: str = ""
    entries: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> Sample:
        return self.samples[-1] if self.samples else Sample(self.now)

    @property
    def hit_ratio(self) -> float | None:
        return ratio(self.totals.hits, self.totals.misses)


def ratio(hits: float, misses: float) -> float | None:
    """hits / (hits + misses); None when there were none."""
    total = hits + misses
    return hits / total if total > 0 else None


def intervals(samples: tuple[Sample, ...] | list[Sample]) -> list[Interval]:
    """The differences between consecutive samples. A counter that went down (a restart of the
    counters) starts afresh from zero."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        if b.hits < a.hits or b.misses < a.misses or b.store_bytes < a.store_bytes or b.upstream_bytes < a.upstream_bytes:
            a = Sample(a.at)
        out.append(Interval(b.at, ratio(b.hits - a.hits, b.misses - a.misses),
                            b.store_bytes - a.store_bytes, b.upstream_bytes - a.upstream_bytes))
    return out


class History:
    """The samples kept for the charts: at most one per `every` seconds, at most `kept` of them."""

    def __init__(self, every: float = SAMPLE_SECONDS, kept: int = KEPT_SAMPLES) -> None:
        self.every = every
        self._samples: deque[Sample] = deque(maxlen=kept)
        self._lock = threading.Lock()  # added to on the event loop, read on the metrics server's thread

    def add(self, sample: Sample) -> bool:
        """Keep `sample` if `every` seconds passed since the last one kept (or none is); True when kept."""
        with self._lock:
            if self._samples and sample.at - self._samples[-1].at < self.every:
                return False
            self._samples.append(sample)
            return True

    def with_now(self, now: Sample) -> tuple[Sample, ...]:
        """The kept samples and `now` after them (the charts end at the moment the page is asked)."""
        with self._lock:
            kept = tuple(self._samples)
        return kept + (now,) if not kept or now.at > kept[-1].at else kept
