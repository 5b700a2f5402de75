"""Pacing of hubcache's own upstream requests: at most `concurrency` at once per host, and at
most `rate` per second (with a `burst`) for the whole egress address (decide/pacing.TokenBucket).

Every request hubcache makes itself waits its turn here: tokens, HEAD revalidations and manifest
GETs on the event loop (`turn`, from DockerHub.request), and each hop of a blob download on the
download's own thread (`hold`, from fetch.get). A request first waits for a slot of its host,
first come first served, then for a token of the bucket, and then goes; the slot is held until its
answer is done with (for a blob, until the whole body is read). A waiting request never fails
because of the wait: it waits as long as its client does (a coroutine whose client went away is
cancelled and leaves the queue; a download waits until it gets its turn).

One lock guards the table; waiters are woken by whoever frees a slot, on any thread: a thread
waiter through its Event, a coroutine through its loop (call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from hubcache import logs
from hubcache.decide.pacing import TokenBucket
from hubcache.metrics import Metrics

log = logging.getLogger(__name__)

SLOW_WAIT = 5.0  # seconds of waiting that are worth a line in the log ...
SLOW_REPORT_EVERY = 60.0  # ... at most once a minute


class _Waiter:
    """A request waiting for a slot: woken by `grant` (under the lock) from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = False
        self._loop = loop
        self._event = threading.Event() if loop is None else None
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None

    def grant(self) -> None:
        self.granted = True
        if self._event is not None:
            self._event.set()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    def wait_blocking(self) -> None:
        assert self._event is not None
        self._event.wait()


@dataclass
class _Host:
    busy: int = 0
    queue: deque[_Waiter] = field(default_factory=deque)


class Pacer:
    """Concurrency per host and the egress request rate; 0 for either: no cap."""

    def __init__(self, metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self.concurrency = 0
        self._bucket = TokenBucket(0, 1, clock())
        self._slow_reported = -SLOW_REPORT_EVERY

    def configure(self, concurrency: int, rate: float, burst: int) -> None:
        """New caps; the bucket starts full again when the rate or burst changed. A raised
        concurrency lets waiters go at once."""
        with self._lock:
            self.concurrency = concurrency
            if (self._bucket.rate, self._bucket.burst) != (rate, max(burst, 1)):
                self._bucket = TokenBucket(rate, burst, self._clock())
            for host, h in self._hosts.items():
                self._grant(host, h)

    # -- a turn: a slot of the host, then a token ---------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, host: str) -> AsyncIterator[None]:
        """On the event loop: wait for `host`'s slot and the rate, hold the slot inside."""
        start = self._clock()
        waiter = self._enqueue(host, asyncio.get_running_loop())
        self._queued(host, +1)
        try:
            if waiter is not None:
                assert waiter.future is not None
                try:
                    await waiter.future
                except asyncio.CancelledError:
                    self._give_up(host, waiter)
                    raise
            try:
                await asyncio.sleep(self._reserve())
            except asyncio.CancelledError:
                self.release(host)
                raise
        finally:
            self._queued(host, -1)
        self._waited(host, start)
        try:
            yield
        finally:
            self.release(host)

    def hold(self, host: str) -> Callable[[], None]:
        """On a thread of its own (a blob download's hop): block until `host`'s slot and the rate
        allow the request; returns the call that frees the slot (idempotent)."""
        start = self._clock()
        waiter = self._enqueue(host, None)
        self._queued(host, +1)
        try:
            if waiter is not None:
                waiter.wait_blocking()
            time.sleep(self._reserve())
        finally:
            self._queued(host, -1)
        self._waited(host, start)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self.release(host)

        return release

    def release(self, host: str) -> None:
        """Free a slot of `host`: the next waiter, if any, gets it."""
        key = host.lower()
        with self._lock:
            h = self._hosts[key]
            h.busy -= 1
            self._grant(key, h)
            if not h.busy and not h.queue:
                del self._hosts[key]
        if self._metrics:
            self._metrics.upstream_active.labels(key).dec()

    def busy(self, host: str) -> int:
        with self._lock:
            h = self._hosts.get(host.lower())
            return h.busy if h else 0

    def waiting(self, host: str) -> int:
        with self._lock:
            h = self._hosts.get(host.lower())
            return len(h.queue) if h else 0

    # -- under the hood -----------------------------------------------------------------------

    def _enqueue(self, host: str, loop: asyncio.AbstractEventLoop | None) -> _Waiter | None:
        """Take a slot at once (None), or join the host's queue (the waiter to wait on)."""
        key = host.lower()
        with self._lock:
            h = self._hosts.setdefault(key, _Host())
            if not h.queue and (not self.concurrency or h.busy < self.concurrency):
                h.busy += 1
                waiter = None
            else:
                waiter = _Waiter(loop)
                h.queue.append(waiter)
        if waiter is None and self._metrics:
            self._metrics.upstream_active.labels(key).inc()
        return waiter

    def _grant(self, key: str, h: _Host) -> None:
        """Under the lock: hand free slots to the first waiters."""
        while h.queue and (not self.concurrency or h.busy < self.concurrency):
            h.queue.popleft().grant()
            h.busy += 1
            if self._metrics:
                self._metrics.upstream_active.labels(key).inc()

    def _give_up(self, host: str, waiter: _Waiter) -> None:
        """A coroutine waiter was cancelled (its client went away): leave the queue, or pass
        on the slot it was granted meanwhile."""
        with self._lock:
            h = self._hosts[host.lower()]
            if not waiter.granted:
                h.queue.remove(waiter)
                if not h.busy and not h.queue:
                    del self._hosts[host.lower()]
                return
        self.release(host)

    def _reserve(self) -> float:
        with self._lock:
            return self._bucket.reserve(self._clock())

    def _queued(self, host: str, delta: int) -> None:
        if self._metrics:
            self._metrics.upstream_queued.labels(host.lower()).inc(delta)

    def _waited(self, host: str, start: float) -> None:
        now = self._clock()
        waited = max(now - start, 0.0)
        if self._metrics:
            self._metrics.upstream_wait.labels(host.lower()).observe(waited)
        if waited >= SLOW_WAIT and now - self._slow_reported >= SLOW_REPORT_EVERY:
            self._slow_reported = now
            logs.event(log, logging.INFO, "upstream_paced",
                       f"a request to {host} waited {waited:.1f} s for its turn (hubcache_upstream_concurrency "
                       f"{self.concurrency or 'no cap'} per host, hubcache_upstream_rate {self._bucket.rate or 'no cap'}/s): "
                       "pulls are slower but Docker Hub's abuse limit is not reached; raise them only if the "
                       "egress address can take more", host=host, seconds=round(waited, 1))
