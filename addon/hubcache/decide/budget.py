"""Docker Hub's pull budget per account, read from its responses.

Pure. Manifest GETs and HEADs carry the limit and what is left in one of two header families:
`ratelimit-limit: 100;w=21600` / `ratelimit-remaining: 76;w=21600` (documented) or
`x-ratelimit-limit: 100;w=3600` / `x-ratelimit-remaining: 0;w=3600` (2026 captures); the window is
`w=`, never assumed. `docker-ratelimit-source` names who is counted; a source with no limit headers
is a paid, unlimited account. A manifest GET is a counted pull; HEADs and blobs are free.

Two kinds of 429: one whose body is the OCI error TOOMANYREQUESTS is the pull limit of one
account (spent until its window ends); a bare one is Docker Hub's abuse limit on every request
from this address, which says nothing about any account (the host backs off: decide/health).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ANONYMOUS = "anonymous"
# A spent account whose window Hub never named is tried again after this: the shortest window seen
# (3600 in 2026; 21600 documented). Asking too early costs one 429, not a pull.
UNKNOWN_WINDOW = 3600
FAMILIES = ("ratelimit-", "x-ratelimit-")  # documented first
_VALUE_RE = re.compile(r"\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?")


def parse_ratelimit(value: str) -> tuple[int, int | None] | None:
    """'100;w=21600' -> (100, 21600); '100' -> (100, None): no window named."""
    m = _VALUE_RE.match(value or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def read_limits(headers: Mapping[str, str]) -> tuple[int | None, int, int | None] | None:
    """(limit, remaining, window) from the first header family that has a remaining count, or
    None when neither has. `headers` keys are lower case."""
    for prefix in FAMILIES:
        remaining = parse_ratelimit(headers.get(prefix + "remaining", ""))
        if remaining is None:
            continue
        limit = parse_ratelimit(headers.get(prefix + "limit", ""))
        window = remaining[1] or (limit[1] if limit else None)
        return (limit[0] if limit else None), remaining[0], window
    return None


def pull_limited(status: int | None, body: bytes | None) -> bool:
    """A 429 whose body is the OCI error TOOMANYREQUESTS: one account's pull limit. A 429 with no
    such body (bare, or a body not read: a HEAD, a streamed response) is the abuse limit."""
    if status != 429 or not body:
        return False
    try:
        errors = json.loads(body).get("errors")
        return any(isinstance(e, dict) and e.get("code") == "TOOMANYREQUESTS" for e in errors)
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass
class AccountBudget:
    limit: int | None = None  # None: not known (yet), or unlimited
    remaining: float = math.inf  # inf: unknown or unlimited
    window: int | None = None  # seconds, as Hub's w= names it; None: not named yet
    source: str = ""
    unlimited: bool = False  # Hub names a source and sends no limit: a paid plan
    exhausted_until: float = 0.0
    spent: int = 0  # counted pulls hubcache made as this account


class Budgets:
    def __init__(self) -> None:
        self.accounts: dict[str, AccountBudget] = {}

    def _get(self, account: str) -> AccountBudget:
        return self.accounts.setdefault(account, AccountBudget())

    def observe(self, account: str, headers: Mapping[str, str], now: float) -> bool:
        """Headers (lower-case keys) of a manifest response that upstream answered for `account`;
        True when they told what is left (counted after this request's own pull, as Hub counts).
        An answer with neither limit headers nor a source (a 404 from elsewhere) tells nothing."""
        b = self._get(account)
        source = headers.get("docker-ratelimit-source", "")
        read = read_limits(headers)
        if read is not None:
            b.limit, b.remaining, window = read
            b.window = window or b.window
            b.unlimited = False
            b.source = source or b.source
            if b.remaining > 0:  # Hub says pulls are left: not spent (any more)
                b.exhausted_until = 0.0
        elif source:
            b.limit, b.remaining, b.unlimited, b.source = None, math.inf, True, source
        return read is not None

    def spend(self, account: str, told: bool = False) -> None:
        """A counted pull as `account`; `told`: its answer said what is left, this pull counted."""
        b = self._get(account)
        b.spent += 1
        if not told:
            b.remaining = max(b.remaining - 1, 0)

    def exhausted(self, account: str, now: float) -> None:
        """A TOOMANYREQUESTS 429: nothing left until the window ends."""
        b = self._get(account)
        b.remaining = 0
        b.exhausted_until = now + (b.window or UNKNOWN_WINDOW)

    def left(self, account: str, now: float) -> float:
        b = self._get(account)
        if b.exhausted_until > now:
            return 0
        if b.exhausted_until and b.exhausted_until <= now:  # the window is over: unknown again
            b.exhausted_until, b.remaining = 0.0, math.inf
        return b.remaining

    def shown(self, account: str, now: float) -> float | None:
        """What the budget gauge shows: pulls left, inf for an unlimited account, None unknown."""
        left = self.left(account, now)
        if math.isinf(left) and not self._get(account).unlimited:
            return None
        return left

    def window(self, account: str) -> int:
        return self._get(account).window or UNKNOWN_WINDOW

    def choose(self, accounts: Iterable[str], now: float) -> str:
        """The account for a counted pull: an unlimited one (a paid plan) first, then the one with
        the most budget left (not seen yet counts as plenty); the first on a tie."""
        best, best_key = "", (False, -1.0)
        for account in accounts:
            left = self.left(account, now)
            key = (self._get(account).unlimited and left > 0, left)
            if key > best_key:
                best, best_key = account, key
        return best

    def all_below(self, accounts: Iterable[str], reserve: int, now: float) -> bool:
        """Every account has fewer than `reserve` pulls left, or is spent (a TOOMANYREQUESTS 429
        in its window: asking again would only get another)."""
        return all(self.left(a, now) < reserve or self._get(a).exhausted_until > now for a in accounts)
