"""Server-side SVG charts for the drift dashboard: pure functions returning markup, no JavaScript, no CDN.

Every number is formatted by this module and every label goes through ``html.escape``, so the result can be marked
safe in a template.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Point", "histogram", "line_chart", "sparkline"]

WIDTH, HEIGHT = 640, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 12, 14, 30
IN_COLOUR, FLAG_COLOUR, THRESHOLD_COLOUR, CAL_COLOUR = "#417690", "#ba2121", "#e0a000", "#9aa5ad"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    flagged: bool = False
    label: str = ""


def _f(value: float) -> str:
    return f"{value:.1f}"


def _frame(title: str, body: str, *, chart_id: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (
        f'<svg class="drift-chart" id="{html.escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>{body}</svg>'
    )


def _axes(x_label: str, y_ticks: Sequence[tuple[float, str]], y_of: object) -> str:
    plot_bottom = HEIGHT - MARGIN_BOTTOM
    parts = [
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{plot_bottom}" stroke="#666"/>',
        f'<line x1="{MARGIN_LEFT}" y1="{plot_bottom}" x2="{WIDTH - MARGIN_RIGHT}" y2="{plot_bottom}" stroke="#666"/>',
        f'<text x="{(MARGIN_LEFT + WIDTH - MARGIN_RIGHT) / 2:.0f}" y="{HEIGHT - 6}" font-size="11" '
        f'text-anchor="middle" fill="#444">{html.escape(x_label)}</text>',
    ]
    for value, label in y_ticks:
        y = y_of(value)  # type: ignore[operator]
        parts.append(
            f'<text x="{MARGIN_LEFT - 4}" y="{_f(y + 3)}" font-size="10" text-anchor="end" fill="#444">'
            f"{html.escape(label)}</text>"
            f'<line x1="{MARGIN_LEFT}" y1="{_f(y)}" x2="{WIDTH - MARGIN_RIGHT}" y2="{_f(y)}" stroke="#eee"/>'
        )
    return "".join(parts)


def line_chart(
    points: Sequence[Point], *, threshold: float | None, title: str, x_label: str, chart_id: str, connect: bool = True
) -> str:
    """Drift scores (y in [0, 1]) against ``x``, flagged points red, the threshold as a dashed line."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    xs = [p.x for p in points]
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = hi - lo or 1.0

    def x_of(x: float) -> float:
        return MARGIN_LEFT + (x - lo) / span * plot_w if len(points) > 1 else MARGIN_LEFT + plot_w / 2

    def y_of(y: float) -> float:
        return MARGIN_TOP + (1.0 - min(1.0, max(0.0, y))) * plot_h

    parts = [_axes(x_label, [(0.0, "0"), (0.5, "0.5"), (1.0, "1")], y_of)]
    if threshold is not None:
        y = y_of(threshold)
        parts.append(
            f'<line class="threshold" x1="{MARGIN_LEFT}" y1="{_f(y)}" x2="{WIDTH - MARGIN_RIGHT}" y2="{_f(y)}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - MARGIN_RIGHT}" y="{_f(y - 4)}" font-size="10" text-anchor="end" '
            f'fill="{THRESHOLD_COLOUR}">threshold {threshold:.3f}</text>'
        )
    if connect and len(points) > 1:
        coords = " ".join(f"{_f(x_of(p.x))},{_f(y_of(p.y))}" for p in points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{IN_COLOUR}" stroke-width="1" opacity="0.6"/>')
    for p in points:
        colour = FLAG_COLOUR if p.flagged else IN_COLOUR
        css = "point flagged" if p.flagged else "point"
        tip = f"<title>{html.escape(p.label)}</title>" if p.label else ""
        parts.append(
            f'<circle class="{css}" cx="{_f(x_of(p.x))}" cy="{_f(y_of(p.y))}" r="3.5" fill="{colour}">{tip}</circle>'
        )
    if not points:
        parts.append(
            f'<text x="{WIDTH / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle" fill="#999">no scored replies</text>'
        )
    return _frame(title, "".join(parts), chart_id=chart_id)


def histogram(
    scores: Sequence[float], calibration: Sequence[float], *, threshold: float | None, title: str, chart_id: str,
    bins: int = 20,
) -> str:  # fmt: skip
    """Share of replies per score bin (bars) against the calibration set's scores (outline), threshold marked."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def shares(values: Sequence[float]) -> list[float]:
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, max(0, int(v * bins)))] += 1
        total = len(values) or 1
        return [c / total for c in counts]

    ours, cal = shares(scores), shares(calibration)
    top = max([*ours, *cal, 0.01])

    def y_of(share: float) -> float:
        return MARGIN_TOP + (1.0 - share / top) * plot_h

    bar_w = plot_w / bins
    parts = [_axes("drift score", [(0.0, "0%"), (top, f"{top * 100:.0f}%")], y_of)]
    for i, share in enumerate(ours):
        if share:
            y = y_of(share)
            flagged = threshold is not None and (i + 1) / bins > threshold
            parts.append(
                f'<rect class="bar" x="{_f(MARGIN_LEFT + i * bar_w + 1)}" y="{_f(y)}" width="{_f(bar_w - 2)}" '
                f'height="{_f(HEIGHT - MARGIN_BOTTOM - y)}" fill="{FLAG_COLOUR if flagged else IN_COLOUR}" '
                f'opacity="0.8"><title>{share * 100:.1f}% of replies in [{i / bins:.2f}, {(i + 1) / bins:.2f})'
                "</title></rect>"
            )
    outline = []
    for i, share in enumerate(cal):
        x0, x1, y = MARGIN_LEFT + i * bar_w, MARGIN_LEFT + (i + 1) * bar_w, y_of(share)
        outline.append(f"{_f(x0)},{_f(y)} {_f(x1)},{_f(y)}")
    parts.append(
        f'<polyline class="calibration" points="{" ".join(outline)}" fill="none" stroke="{CAL_COLOUR}" '
        'stroke-width="2"/>'
    )
    for value, label in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        x = MARGIN_LEFT + value * plot_w
        parts.append(
            f'<text x="{_f(x)}" y="{HEIGHT - MARGIN_BOTTOM + 12}" font-size="10" text-anchor="middle" fill="#444">'
            f"{label}</text>"
        )
    if threshold is not None:
        x = MARGIN_LEFT + threshold * plot_w
        parts.append(
            f'<line class="threshold" x1="{_f(x)}" y1="{MARGIN_TOP}" x2="{_f(x)}" y2="{HEIGHT - MARGIN_BOTTOM}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
    legend_y = MARGIN_TOP + 10
    parts.append(
        f'<rect x="{MARGIN_LEFT + 8}" y="{legend_y - 8}" width="10" height="8" fill="{IN_COLOUR}"/>'
        f'<text x="{MARGIN_LEFT + 22}" y="{legend_y}" font-size="10" fill="#444">replies ({len(scores)})</text>'
        f'<line x1="{MARGIN_LEFT + 110}" y1="{legend_y - 4}" x2="{MARGIN_LEFT + 124}" y2="{legend_y - 4}" '
        f'stroke="{CAL_COLOUR}" stroke-width="2"/>'
        f'<text x="{MARGIN_LEFT + 128}" y="{legend_y}" font-size="10" fill="#444">calibration set '
        f"({len(calibration)})</text>"
    )
    return _frame(title, "".join(parts), chart_id=chart_id)


def sparkline(
    scores: Sequence[float | None], flagged: Sequence[bool], *, threshold: float | None, chart_id: str
) -> str:
    """A small per-turn drift line (one point per scored reply), flagged turns red, threshold dashed."""
    width, height, pad = 240, 40, 4
    n = len(scores)

    def x_of(i: int) -> float:
        return pad + (i / (n - 1) * (width - 2 * pad) if n > 1 else (width - 2 * pad) / 2)

    def y_of(v: float) -> float:
        return pad + (1.0 - min(1.0, max(0.0, v))) * (height - 2 * pad)

    parts = []
    if threshold is not None:
        y = y_of(threshold)
        parts.append(
            f'<line class="threshold" x1="0" y1="{_f(y)}" x2="{width}" y2="{_f(y)}" stroke="{THRESHOLD_COLOUR}" '
            'stroke-dasharray="3 2"/>'
        )
    known = [(i, s) for i, s in enumerate(scores) if s is not None]
    if len(known) > 1:
        coords = " ".join(f"{_f(x_of(i))},{_f(y_of(s))}" for i, s in known)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{IN_COLOUR}" stroke-width="1.5"/>')
    for i, s in known:
        colour = FLAG_COLOUR if flagged[i] else IN_COLOUR
        parts.append(
            f'<circle class="{"point flagged" if flagged[i] else "point"}" cx="{_f(x_of(i))}" cy="{_f(y_of(s))}" '
            f'r="2.5" fill="{colour}"><title>turn {i + 1}: {s:.3f}</title></circle>'
        )
    return _frame("drift per turn", "".join(parts), chart_id=chart_id, width=width, height=height)
