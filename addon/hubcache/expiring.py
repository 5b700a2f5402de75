"""One small cache type for every "remember this for a while" table of the proxy.

The rule: an entry lives until its time is up, and the cache never holds more than `max_entries`
(the oldest insertion goes first). Tables that only grow (a client token confirmed per
repository, a CDN URL per redirect) would otherwise cost memory for as long as the proxy runs.
Time comes from `clock`, so that tests need no sleep. Thread-safe: a download's own thread
marks a blob the store had no room for.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

PRUNE_PER_PUT = 2  # expired entries at the old end dropped on each put: pruning costs O(1)


class ExpiringCache[K: Hashable, V]:
    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("an ExpiringCache needs max_entries >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Remember `value` for `ttl` seconds (the cache's own ttl when None)."""
        now = self._clock()
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (now + (self.ttl if ttl is None else ttl), value)
            for _ in range(PRUNE_PER_PUT):
                oldest = next(iter(self._entries.items()), None)
                if oldest is None or oldest[1][0] > now:
                    break
                del self._entries[oldest[0]]
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: K) -> V | None:
        """The value, or None when there is none or its time is up (then it is dropped)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def pop(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
