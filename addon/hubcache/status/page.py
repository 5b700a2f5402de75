"""The status page: one self-contained HTML document (inline style and SVG, no script, nothing
fetched from elsewhere: runner networks are often closed). Every name on it (images, hosts,
clients, notes) comes from requests or upstream answers and is escaped."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from html import escape

from hubcache.model import ImageCounter
from hubcache.status import svg
from hubcache.status.snapshot import Snapshot, intervals

TOP_IMAGES = 10
REFRESH_SECONDS = 30
STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.tiles{display:flex;flex-wrap:wrap;gap:1em}.tile{border:1px solid #ddd;border-radius:4px;padding:.6em 1em;min-width:10em}
.tile b{display:block;font-size:1.6em}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}
td.n,th.n{text-align:right}.bad{color:#c0392b}.ok{color:#1e8449}.muted{color:#777}.legend span{margin-right:1.2em}
.warn{background:#fdecea;border:1px solid #c0392b;padding:.5em 1em}"""


def size(n: float) -> str:
    """Bytes for people: 0 B, 512 B, 1.5 MiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def percent(r: float | None) -> str:
    return "–" if r is None else f"{r * 100:.1f} %"


def clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def hhmm(t: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(t))


def ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def count(n: float) -> str:
    return f"{n:,.0f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: frozenset[int] = frozenset(), empty: str = "none") -> str:
    """An HTML table; `rows` hold HTML already escaped; columns in `numeric` right-aligned."""
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if body else f'<p class="muted">{escape(empty)}</p>'


def tiles(s: Snapshot) -> str:
    t = s.totals
    store = "not open" if s.store_bytes is None else size(s.store_bytes)
    cap = f"of its cap, {size(s.store_cap)}" if s.store_cap else "no cap"
    items = [("Hit ratio", percent(s.hit_ratio), f"{count(t.hits)} from the store, {count(t.misses)} from upstream"),
             ("Pulls saved", count(s.saved), "manifest GETs answered from the store"),
             ("Bytes from the store", size(t.store_bytes), f"{size(t.upstream_bytes)} from upstream"),
             ("Store", store, cap)]
    return '<div class="tiles">' + "".join(
        f'<div class="tile" id="{escape(name.lower().replace(" ", "-"))}">{escape(name)}<b>{escape(value)}</b>'
        f'<span class="muted">{escape(note)}</span></div>' for name, value, note in items) + "</div>"


def charts(s: Snapshot) -> str:
    steps = intervals(s.samples)
    if not steps:
        return '<p class="muted">The charts start once hubcache has run a minute.</p>'
    ratio = svg.line_chart("hit ratio over time", [("hit ratio", "#1e8449", [(i.end, i.ratio) for i in steps])],
                           hhmm, lambda y: f"{y * 100:.0f} %", y_max=1.0)
    served = svg.line_chart("bytes sent, from the store and from upstream",
                            [("from the store", "#2b7bb9", [(i.end, i.store_bytes) for i in steps]),
                             ("from upstream", "#e67e22", [(i.end, i.upstream_bytes) for i in steps])], hhmm, size)
    legend = ('<p class="legend"><span style="color:#2b7bb9">■ from the store</span>'
              '<span style="color:#e67e22">■ from upstream</span></p>')
    return (f"<h2>Hit ratio over time</h2>{ratio}<p class=muted>share of registry requests answered from the store, "
            f"per interval</p><h2>Bytes served: store against upstream</h2>{served}{legend}")


def budget(s: Snapshot) -> str:
    def left(v: float | None) -> str:
        return "not known yet" if v is None or v < 0 else "unlimited" if math.isinf(v) else count(v)

    rows = [(escape(a.name), count(a.spent), escape(left(a.left))) for a in s.accounts]
    return ("<h2>Docker Hub pull budget</h2>" + f"<p>Pulls saved: <b>{count(s.saved)}</b> (answered from the store, "
            "counted by no registry)</p>" + _table(["account", "pulls spent", "pulls left"], rows, frozenset({1, 2}),
                                                  "no pulls counted yet"))


def upstream(s: Snapshot) -> str:
    rows = []
    for u in s.upstream:
        state = (f'<span class="bad">backing off: {escape(u.reason)} ({u.seconds_left:.0f} s left)</span>' if u.reason
                 else '<span class="ok">answers</span>')
        rows.append((escape(u.host), state, escape(ago(u.last_ok, s.now))))
    banner = ('<p class="warn">hubcache is offline (hubcache_offline): upstream is never asked.</p>' if s.offline else "")
    return "<h2>Upstream health</h2>" + banner + _table(["host", "state", "last good answer"], rows,
                                                         empty="no upstream asked yet")


def _image_rows(images: Iterable[ImageCounter], now: float) -> list[tuple[str, ...]]:
    return [(escape(i.reference), f"<code>{escape(i.digest[:19])}</code>", count(i.pulls), size(i.bytes), escape(ago(i.last, now)))
            for i in images]


def images(s: Snapshot) -> str:
    if s.images is None:
        return "<h2>Top images</h2><p class=muted>This store keeps no per-image counters.</p>"
    headers = ["image", "digest", "pulls", "bytes served", "last pulled"]
    by_pulls = sorted(s.images, key=lambda i: (-i.pulls, -i.bytes, i.reference))[:TOP_IMAGES]
    by_size = sorted(s.images, key=lambda i: (-i.bytes, -i.pulls, i.reference))[:TOP_IMAGES]
    return ("<h2>Top images by pulls</h2>" + _table(headers, _image_rows(by_pulls, s.now), frozenset({2, 3}), "no image pulled yet")
            + "<h2>Top images by size</h2>" + _table(headers, _image_rows(by_size, s.now), frozenset({2, 3}), "no image pulled yet"))


def store(s: Snapshot) -> str:
    if s.store_bytes is None:
        return "<h2>Store</h2><p class=bad>The store is not open.</p>"
    share = f" ({percent(s.store_bytes / s.store_cap)} of its cap, {size(s.store_cap)})" if s.store_cap else " (no cap: hubcache_max_size)"
    entries = ", ".join(f"{count(n)} {escape(k)}" for k, n in sorted(s.entries.items()))
    return (f"<h2>Store size against its cap</h2><p>{size(s.store_bytes)} in use{share}"
            f"{'; ' + entries if entries else ''}</p>" + (svg.bar("store size against its cap", s.store_bytes, s.store_cap) if s.store_cap else ""))


def recent(s: Snapshot) -> str:
    rows = [(escape(hhmm(r.at)), f'<span class="{"muted" if r.outcome == "miss" else "bad"}">{escape(r.outcome)}</span>',
             escape(f"{r.method} {r.what}"), "-" if r.status is None else str(r.status), escape(r.client), escape(r.note))
            for r in s.recent]
    return "<h2>Recent misses and errors</h2>" + _table(["time", "outcome", "request", "status", "client", "note"], rows,
                                                        empty="none since hubcache started")


def render(s: Snapshot) -> str:
    body = "".join(part(s) for part in (tiles, charts, budget, upstream, images, store, recent))
    version = f" {escape(s.version)}" if s.version else ""
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><link rel="icon" href="data:,">'
            f"<title>hubcache status</title><style>{STYLE}</style></head><body>"
            f"<h1>hubcache status</h1><p class=muted>hubcache{version}, up since {escape(clock(s.started))}; "
            f'page of {escape(clock(s.now))}, <a href="metrics">Prometheus metrics</a></p>{body}</body></html>')
