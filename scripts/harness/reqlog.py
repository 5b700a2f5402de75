"""Reading the upstream's request logs back (hubenv.Upstream.requests()).

Every service of the fake upstream writes one JSON line per request it answered (httpsd.RequestLog,
or stamplog.py for distribution's access log): host, method, path, status, t (completion time),
bytes, and whatever else the service logs (account, answered_by, request_headers, ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Req:
    """One request the upstream answered. Only the first four fields take part in ==."""

    host: str
    method: str
    path: str  # with the query string for the token server
    status: int
    t: float = field(default=0.0, compare=False)  # completion time (time.time())
    bytes: int = field(default=0, compare=False)  # body bytes sent
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # e.g. token "account"


def settle(paths: list[Path], quiet: float, limit: float = 3.0) -> None:
    """Wait until none of `paths` has grown for `quiet` seconds (at most `limit`): a line is written
    when a response is finished, which can be a few ms after the client already has it."""
    sizes = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = [p.stat().st_size if p.exists() else 0 for p in paths]
        if now == sizes:
            return
        sizes = now
        time.sleep(quiet)


def lines(path: Path) -> list[dict]:
    """The whole lines of one log (a line still being written is left out)."""
    out = []
    for line in (path.read_text().splitlines() if path.exists() else ()):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read(logs: Path, names: list[str]) -> list[Req]:
    """Every request in logs/NAME.jsonl for each name, ordered by completion time. hubfront.py's
    forwarded requests are left out: the registry's own line (registry.jsonl) stands for each."""
    reqs = []
    for name in names:
        for r in lines(logs / f"{name}.jsonl"):
            if name == "hubfront" and r.get("answered_by") != "hubfront":
                continue
            extra = {k: v for k, v in r.items() if k not in ("host", "method", "path", "status", "t", "bytes")}
            reqs.append(Req(r["host"], r["method"], r["path"], r["status"], r["t"], r.get("bytes", 0), extra))
    reqs.sort(key=lambda r: r.t)
    return reqs
