"""Inline SVG charts for the status page: no script, no font or stylesheet from elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

Point = tuple[float, float | None]  # (x, y); y None: no value there (the line breaks)

W, H = 640, 180  # the chart's box
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 28  # margins for the axes' labels


def _segments(points: Sequence[Point]) -> list[list[tuple[float, float]]]:
    """The runs of points with a value: a line is drawn through each run, not across a gap."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


def line_chart(title: str, series: Sequence[tuple[str, str, Sequence[Point]]], x_label: Callable[[float], str],
               y_label: Callable[[float], str], y_max: float | None = None) -> str:
    """A line chart of `series` ((name, colour, points)), x and y axes labelled at their ends by
    `x_label` and `y_label`; y from 0 to `y_max` (default: the largest value). A single point of a
    run is drawn as a dot."""
    xs = [x for _, _, pts in series for x, _ in pts]
    ys = [y for _, _, pts in series for _, y in pts if y is not None]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    top = y_max if y_max is not None else max(ys, default=0.0)
    top = top if top > 0 else 1.0
    span = x1 - x0 if x1 > x0 else 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / span * pw

    def py(y: float) -> float:
        return TOP + ph - min(y, top) / top * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end" font-size="11">{escape(y_label(top))}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + ph}" text-anchor="end" font-size="11">{escape(y_label(0))}</text>',
             f'<text x="{LEFT}" y="{H - 8}" font-size="11">{escape(x_label(x0))}</text>',
             f'<text x="{W - RIGHT}" y="{H - 8}" text-anchor="end" font-size="11">{escape(x_label(x1))}</text>']
    for _name, colour, pts in series:
        for run in _segments(pts):
            if len(run) == 1:
                (x, y), = run
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{escape(colour)}"/>')
            else:
                coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                parts.append(f'<polyline points="{coords}" fill="none" stroke="{escape(colour)}" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def bar(title: str, value: float, cap: float, colour: str = "#2b7bb9") -> str:
    """A horizontal bar: `value` of `cap` (> 0), red from 90 %."""
    share = min(value / cap, 1.0)
    fill = "#c0392b" if share >= 0.9 else colour
    w = W - LEFT - RIGHT
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 28" width="{W}" height="28" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<rect x="{LEFT}" y="4" width="{w}" height="20" fill="#eee" stroke="#ccc"/>'
            f'<rect x="{LEFT}" y="4" width="{share * w:.1f}" height="20" fill="{fill}"/></svg>')
