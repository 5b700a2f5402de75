"""Docker Hub's pull budget per account, read from its responses.

Pure. Every manifest response carries `ratelimit-limit: 100;w=21600`, `ratelimit-remaining:
76;w=21600` and `docker-ratelimit-source` (no such headers: an unlimited account). A manifest GET
is a counted pull; HEADs and blobs are free. A 429 means the account is spent until its window ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ANONYMOUS = "anonymous"
DEFAULT_WINDOW = 21600
_VALUE_RE = re.compile(r"\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?")


def parse_ratelimit(value: str) -> tuple[int, int] | None:
    """'100;w=21600' -> (100, 21600)."""
    m = _VALUE_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or DEFAULT_WINDOW)


@dataclass
class AccountBudget:
    limit: int | None = None  # None: not known yet
    remaining: float = math.inf  # inf: unknown or unlimited
    window: int = DEFAULT_WINDOW
    source: str = ""
    exhausted_until: float = 0.0
    spent: int = 0  # counted pulls hubcache made as this account


class Budgets:
    def __init__(self) -> None:
        self.accounts: dict[str, AccountBudget] = {}

    def _get(self, account: str) -> AccountBudget:
        return self.accounts.setdefault(account, AccountBudget())

    def observe(self, account: str, headers: Mapping[str, str], now: float) -> None:
        """Headers of a manifest response that upstream answered for `account`."""
        b = self._get(account)
        limit = parse_ratelimit(headers.get("ratelimit-limit", ""))
        remaining = parse_ratelimit(headers.get("ratelimit-remaining", ""))
        if limit and remaining:
            b.limit, b.window = limit
            b.remaining = remaining[0]
            b.source = headers.get("docker-ratelimit-source", b.source)
        elif not limit and not remaining:
            b.limit, b.remaining = None, math.inf  # unlimited account: Hub sends no headers

    def spend(self, account: str) -> None:
        b = self._get(account)
        b.spent += 1
        b.remaining = max(b.remaining - 1, 0)

    def exhausted(self, account: str, now: float) -> None:
        """A 429: nothing left until the window ends."""
        b = self._get(account)
        b.remaining = 0
        b.exhausted_until = now + b.window

    def left(self, account: str, now: float) -> float:
        b = self._get(account)
        if b.exhausted_until > now:
            return 0
        if b.exhausted_until and b.exhausted_until <= now:  # the window is over: unknown again
            b.exhausted_until, b.remaining = 0.0, math.inf
        return b.remaining

    def choose(self, accounts: Iterable[str], now: float) -> str:
        """The account with the most budget left (unknown counts as plenty); the first on a tie."""
        best, best_left = "", -1.0
        for account in accounts:
            left = self.left(account, now)
            if left > best_left:
                best, best_left = account, left
        return best

    def all_below(self, accounts: Iterable[str], reserve: int, now: float) -> bool:
        return all(self.left(a, now) < reserve for a in accounts)
