"""The request-rate cap of hubcache's egress address: a token bucket, as arithmetic.

Docker Hub answers a bare 429 when one address sends more than its abuse limit ("thousands per
minute", every request counted, for every account), and every runner behind that address then
fails. The bucket holds `burst` tokens and refills at `rate` per second; each upstream request
takes one. A request that finds the bucket empty is not refused: `reserve` books the next token
and says how long to wait for it, so waiters go in the order they asked, and the requests sent in
any interval of T seconds never number more than burst + rate * T.

No clock of its own and no locking: the caller passes `now` (monotonic seconds) and serialises
calls (upstream/pacing.py holds a lock). A booked token is never given back when its waiter gives
up: handing it to a later waiter would let two requests go in one token's time.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        """`rate` tokens per second (0: no cap), at most `burst` (>= 1) saved up; starts full."""
        self.rate = rate
        self.burst = max(burst, 1)
        self._level = float(self.burst)  # tokens at self._at; negative: booked ahead
        self._at = now

    @property
    def capped(self) -> bool:
        return self.rate > 0

    def reserve(self, now: float) -> float:
        """Take a token: seconds the request must wait before it goes (0: at once)."""
        if not self.capped:
            return 0.0
        now = max(now, self._at)  # a clock read before the last call's: no refill, never a refund
        self._level = min(float(self.burst), self._level + (now - self._at) * self.rate) - 1
        self._at = now
        return 0.0 if self._level >= 0 else -self._level / self.rate

    def level(self, now: float) -> float:
        """Tokens available at `now` (negative: that many booked ahead)."""
        if not self.capped:
            return float(self.burst)
        return min(float(self.burst), self._level + (max(now, self._at) - self._at) * self.rate)
