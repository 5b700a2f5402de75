"""Which client connections hubcache takes: at most `total` open at once, at most `per_address`
from one address (hubcache_client_max, hubcache_client_max_per_address; 0: no cap), and how often a
refusal is worth a log line.

An address is counted as decide/clients names it (an IPv4 client of a dual-stack listener as IPv4),
so `::ffff:10.0.0.7` and `10.0.0.7` share one count. A whole fleet behind one NAT gateway is one
address: the per-address cap is sized for that, the total cap for the host's descriptors.

No clock of its own: the caller passes `now` (monotonic seconds) and serialises calls.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hubcache.decide.clients import address_name

REFUSAL_LOG_SECONDS = 60.0  # one log line per address this often, however many connections were refused


@dataclass(frozen=True)
class Refused:
    """A connection not taken: `why` for the log line, `cap` the option that refused it."""

    why: str
    cap: str


class Admission:
    def __init__(self, total: int, per_address: int) -> None:
        self.total = max(total, 0)
        self.per_address = max(per_address, 0)
        self._open: Counter[str] = Counter()  # address -> connections taken and not yet released
        self._count = 0

    @property
    def open(self) -> int:
        return self._count

    def from_address(self, address: str) -> int:
        return self._open[address_name(address)]

    def admit(self, address: str) -> Refused | None:
        """Take a connection from `address` (counted until `release`), or say why not."""
        name = address_name(address)
        if self.total and self._count >= self.total:
            return Refused(f"{self._count} client connections are open, the most hubcache takes", "hubcache_client_max")
        if self.per_address and self._open[name] >= self.per_address:
            return Refused(f"{self._open[name]} connections are open from {name}, the most from one address",
                           "hubcache_client_max_per_address")
        self._open[name] += 1
        self._count += 1
        return None

    def release(self, address: str) -> None:
        """A connection `admit` took has closed."""
        name = address_name(address)
        if self._open[name] <= 0:
            return
        self._open[name] -= 1
        self._count -= 1
        if not self._open[name]:
            del self._open[name]


class RefusalLog:
    """One log line per address and `every` seconds: the first refusal is logged at once, the
    ones after it are counted and reported with the next line due."""

    def __init__(self, every: float = REFUSAL_LOG_SECONDS, most: int = 10_000) -> None:
        self.every = every
        self.most = most  # addresses remembered (a scan from many addresses must not grow this without end)
        self._last: dict[str, tuple[float, int]] = {}  # address -> (when its last line was, refused since)

    def note(self, address: str, now: float) -> int | None:
        """A refusal from `address`: how many this line reports (itself and the ones not logged
        since the last line), or None when no line is due."""
        name = address_name(address)
        last = self._last.get(name)
        if last is not None and now - last[0] < self.every:
            self._last[name] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.most:
            self._forget(now)
        self._last[name] = (now, 0)
        return 1 + (last[1] if last else 0)

    def _forget(self, now: float) -> None:
        for name in [n for n, (when, _) in self._last.items() if now - when >= self.every]:
            del self._last[name]
        if len(self._last) >= self.most:  # all recent: the oldest line's address goes
            del self._last[min(self._last, key=lambda n: self._last[n][0])]
