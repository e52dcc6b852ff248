"""Inline SVG charts, rendered on the server: bars of spend per day, stacked bars of documents per status per run.

Plain SVG with a <title> per bar (the browser shows it on hover); every label is escaped. No script.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape

COLORS = {"succeeded": "#2e7d32", "failed": "#c62828", "rejected": "#9e9e9e", "spend": "#1565c0"}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 220, 56, 42, 14


def _ticks(top: float, count: int = 4) -> list[float]:
    return [top * i / count for i in range(count + 1)]


def _frame(title: str, top: float, label) -> list[str]:
    plot_h = HEIGHT - BOTTOM - TOP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" style="max-width:{WIDTH}px" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in _ticks(top):
        y = TOP + plot_h - (tick / top * plot_h if top else 0)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#555">'
            f"{escape(label(tick))}</text>"
        )
    return parts


def _empty(title: str, message: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} 60" '
        f'width="100%" style="max-width:{WIDTH}px" class="chart"><title>{escape(title)}</title>'
        f'<text x="10" y="34" font-size="13" fill="#777">{escape(message)}</text></svg>'
    )


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def spend_chart(days: Sequence[tuple[dt.date, float]], title: str = "Spend per day (estimated, USD)") -> str:
    """One bar per day with a priced run."""
    if not days:
        return _empty(title, "No priced runs yet.")
    top = max(cost for _, cost in days) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / len(days)
    bar = max(2.0, min(48.0, step * 0.7))
    parts = _frame(title, top, _usd)
    every = max(1, len(days) // 10)
    for i, (day, cost) in enumerate(days):
        h = cost / top * plot_h
        x = LEFT + i * step + (step - bar) / 2
        parts.append(
            f'<rect class="bar spend" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="{COLORS["spend"]}" data-day="{day.isoformat()}" data-cost="{cost:.6f}">'
            f"<title>{day.isoformat()}: {escape(_usd(cost))}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" text-anchor="middle" '
                f'fill="#333">{day.strftime("%m-%d")}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def status_chart(
    runs: Sequence[tuple[str, Mapping[str, int]]], title: str = "Documents per status, per run (oldest first)"
) -> str:
    """One stacked bar per run: succeeded, failed, rejected. ``runs``: (label, counts), oldest first."""
    if not runs:
        return _empty(title, "No finished runs yet.")
    top = float(max(sum(counts.get(s, 0) for s in ("succeeded", "failed", "rejected")) for _, counts in runs) or 1)
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / len(runs)
    bar = max(2.0, min(48.0, step * 0.7))
    parts = _frame(title, top, lambda v: f"{v:,.0f}" if v == int(v) else f"{v:,.1f}")
    every = max(1, len(runs) // 8)
    for i, (label, counts) in enumerate(runs):
        x = LEFT + i * step + (step - bar) / 2
        y: float = TOP + plot_h
        for status in ("succeeded", "failed", "rejected"):
            n = counts.get(status, 0)
            if not n:
                continue
            h = n / top * plot_h
            y -= h
            parts.append(
                f'<rect class="bar {status}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[status]}" data-status="{status}" data-count="{n}">'
                f"<title>{escape(label)}: {n:,} {status}</title></rect>"
            )
        if i % every == 0:
            short = label if len(label) <= 14 else label[:13] + "…"
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="10" text-anchor="middle" '
                f'fill="#333">{escape(short)}</text>'
            )
    legend_x = LEFT
    for status in ("succeeded", "failed", "rejected"):
        parts.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 14}" width="10" height="10" fill="{COLORS[status]}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 5}" font-size="11" fill="#333">{status}</text>'
        )
        legend_x += 90
    parts.append("</svg>")
    return "".join(parts)


def progress_bar(succeeded: int, failed: int, total: int, width: int = 220) -> str:
    """A job's rows done: succeeded and failed, out of the total."""
    title = f"{succeeded + failed:,} of {total:,} rows done ({succeeded:,} succeeded, {failed:,} failed)"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="14" class="progress"><title>{escape(title)}</title>'
        f'<rect width="{width}" height="14" fill="#eeeeee" rx="3"/>'
    ]
    x = 0.0
    for n, color in ((succeeded, COLORS["succeeded"]), (failed, COLORS["failed"])):
        if total and n:
            w = n / total * width
            parts.append(f'<rect x="{x:.1f}" width="{w:.1f}" height="14" fill="{color}"/>')
            x += w
    parts.append("</svg>")
    return "".join(parts)
