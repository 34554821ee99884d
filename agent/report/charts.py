"""Charts as plain shapes (rectangles, lines, text), drawn as inline SVG or as PDF vector graphics.

One layout serves both formats: the HTML writes the shapes as SVG
elements, the PDF draws the same shapes with its own line and rectangle
operators, so the two always agree and neither embeds an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from agent.report.model import SEVERITIES, Tally

COLORS = {"critical": "#b71c1c", "high": "#e65100", "medium": "#f9a825", "low": "#1565c0", "info": "#78909c"}
AXIS = "#555555"
MAX_COLUMNS = 62


@dataclass(frozen=True, slots=True)
class Rect:
    """A filled rectangle; (x, y) is its top-left corner."""

    x: float
    y: float
    w: float
    h: float
    fill: str


@dataclass(frozen=True, slots=True)
class Line:
    """A straight line."""

    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str


@dataclass(frozen=True, slots=True)
class Label:
    """Text whose baseline starts (anchor start), centres (middle) or ends (end) at (x, y)."""

    x: float
    y: float
    text: str
    size: float
    anchor: str = "start"


Shape = Rect | Line | Label


@dataclass(frozen=True, slots=True)
class Chart:
    """A drawing of ``width`` × ``height`` units and a text alternative for screen readers."""

    width: float
    height: float
    shapes: tuple[Shape, ...]
    alt: str


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def bar_chart(rows: Sequence[tuple[str, int, str]], width: float = 640, bar_h: float = 16,
              label_w: float = 220) -> Chart:
    """Horizontal bars: (label, value, colour) per row, value written after each bar."""
    shapes: list[Shape] = []
    top = max((v for _, v, _ in rows), default=0) or 1
    room = width - label_w - 60
    y = 4.0
    for label, value, color in rows:
        shapes.append(Label(label_w - 6, y + bar_h * 0.75, _short(label, 24), 11, "end"))
        w = room * value / top
        if value:
            shapes.append(Rect(label_w, y, max(w, 1.0), bar_h, color))
        shapes.append(Label(label_w + w + 4, y + bar_h * 0.75, str(value), 11))
        y += bar_h + 6
    shapes.append(Line(label_w, 0, label_w, y, AXIS))
    alt = "; ".join(f"{label}: {value}" for label, value, _ in rows)
    return Chart(width, y + 2, tuple(shapes), alt)


def _columns(days: Sequence[tuple[str, Tally]]) -> list[tuple[str, tuple[int, ...]]]:
    cols = [(d, t.by_severity) for d, t in days]
    if len(cols) <= MAX_COLUMNS:
        return cols
    # Long periods: consecutive days folded into one column each.
    per = -(-len(cols) // MAX_COLUMNS)
    out = []
    for i in range(0, len(cols), per):
        chunk = cols[i: i + per]
        sums = tuple(sum(c[1][k] for c in chunk) for k in range(len(SEVERITIES)))
        out.append((f"{chunk[0][0]}…{chunk[-1][0][5:]}", sums))
    return out


def trend_chart(days: Sequence[tuple[str, Tally]], names: Sequence[str] = SEVERITIES, width: float = 640,
                height: float = 220) -> Chart:
    """Findings per day as columns stacked by severity, with a legend of ``names`` (one per severity)."""
    cols = _columns(days)
    left, bottom, top_pad = 44.0, 36.0, 22.0
    plot_h = height - bottom - top_pad
    plot_w = width - left - 8
    peak = max((sum(c) for _, c in cols), default=0) or 1
    shapes: list[Shape] = [Line(left, top_pad, left, top_pad + plot_h, AXIS),
                           Line(left, top_pad + plot_h, left + plot_w, top_pad + plot_h, AXIS),
                           Label(left - 4, top_pad + 4, str(peak), 10, "end"),
                           Label(left - 4, top_pad + plot_h, "0", 10, "end")]
    x_legend = left
    for sev, name in zip(SEVERITIES, names, strict=True):
        shapes.append(Rect(x_legend, 4, 10, 10, COLORS[sev]))
        shapes.append(Label(x_legend + 13, 13, name, 10))
        x_legend += 80
    n = max(len(cols), 1)
    slot = plot_w / n
    bar = max(slot * 0.7, 1.0)
    for i, (day, counts) in enumerate(cols):
        x = left + i * slot + (slot - bar) / 2
        y = top_pad + plot_h
        for sev, c in zip(SEVERITIES, counts, strict=True):
            if c:
                h = plot_h * c / peak
                y -= h
                shapes.append(Rect(x, y, bar, h, COLORS[sev]))
        if i in (0, n - 1) or (n > 2 and i == n // 2):
            shapes.append(Label(x + bar / 2, top_pad + plot_h + 14, day, 10, "middle"))
    alt = "; ".join(f"{d}: {sum(c)}" for d, c in cols)
    return Chart(width, height, tuple(shapes), alt)


def to_svg(chart: Chart) -> str:
    """The chart as one inline ``<svg>`` element (no external references)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {chart.width:.0f} {chart.height:.0f}" '
           f'width="100%" role="img" aria-label="{escape(chart.alt[:500])}">']
    for s in chart.shapes:
        if isinstance(s, Rect):
            out.append(f'<rect x="{s.x:.1f}" y="{s.y:.1f}" width="{s.w:.1f}" height="{s.h:.1f}" fill="{s.fill}"/>')
        elif isinstance(s, Line):
            out.append(f'<line x1="{s.x1:.1f}" y1="{s.y1:.1f}" x2="{s.x2:.1f}" y2="{s.y2:.1f}" '
                       f'stroke="{s.stroke}" stroke-width="1"/>')
        else:
            out.append(f'<text x="{s.x:.1f}" y="{s.y:.1f}" font-size="{s.size:.0f}" '
                       f'text-anchor="{s.anchor}">{escape(s.text)}</text>')
    out.append("</svg>")
    return "".join(out)
