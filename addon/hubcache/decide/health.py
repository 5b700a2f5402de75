"""Which upstream hosts failed recently.

Asked before every upstream request hubcache would make, so a dead upstream costs one timeout and
then nothing until the back-off ends: clients get stale tags or a clear error at once instead of
each waiting for the same timeout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Failure:
    until: float
    reason: str


class Health:
    def __init__(self, backoff: float) -> None:
        self.backoff = backoff
        self._failures: dict[str, _Failure] = {}
        self._last_ok: dict[str, float] = {}

    def down(self, host: str, now: float) -> str | None:
        """Why `host` is not to be asked now, or None."""
        f = self._failures.get(host)
        if f is None or now >= f.until:  # an ended back-off stays on record until the host answers:
            return None  # then succeeded() says it recovered
        return f"{f.reason} (not retried for {f.until - now:.0f} s)"

    def failed(self, host: str, reason: str, now: float) -> bool:
        """Start (or extend) the back-off of `host`; True when it was not backing off before."""
        was = self._failures.get(host)
        self._failures[host] = _Failure(now + self.backoff, reason)
        self._last_ok.pop(host, None)
        return was is None or now >= was.until

    def succeeded(self, host: str, now: float) -> bool:
        """`host` answered; True when it had been failing (it has recovered)."""
        self._last_ok[host] = now
        return self._failures.pop(host, None) is not None

    def recently_ok(self, host: str, now: float, within: float) -> bool:
        return now - self._last_ok.get(host, float("-inf")) < within

    def states(self, now: float) -> list[tuple[str, str, float, float | None]]:
        """Every host on record, by name: (host, why it is backing off or "" when it is not,
        seconds of back-off left, when it last answered well or None)."""
        failures, last_ok = dict(self._failures), dict(self._last_ok)  # copies: read from another thread
        out = []
        for host in sorted(failures.keys() | last_ok.keys()):
            f = failures.get(host)
            backing_off = f is not None and now < f.until
            out.append((host, f.reason if f and backing_off else "", f.until - now if f and backing_off else 0.0, last_ok.get(host)))
        return out
