"""Pictures for the console, drawn on the server as inline SVG (no script, no charting library to
ship), and the small formatting filters the templates use. Pure functions: numbers in, markup out.

Every picture carries a text alternative (``role="img"`` and ``<title>``), so a screen reader says
what the eye sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

# Under this share of the budget left, the gauge turns to a warning (as the health summary's `low`).
LOW = 0.10


def when(value: str | datetime | None) -> str:
    """An API time as the console shows it: UTC to the second, or a dash."""
    if value is None or value == "":
        return "—"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def gauge(used: int, total: int, label: str) -> Markup:
    """A horizontal gauge of ``used`` of ``total``, a warning under :data:`LOW` left."""
    share = min(1.0, used / total) if total > 0 else 1.0
    left = 1.0 - share
    state = "low" if left < LOW else "ok"
    text = f"{label}: {used:,} of {total:,} used, {left:.0%} left" + (" (low)" if state == "low" else "")
    width = round(share * 200, 1)
    return Markup(
        f'<svg class="gauge gauge-{state}" viewBox="0 0 200 16" width="200" height="16" role="img"'
        f' aria-label="{escape(text)}"><title>{escape(text)}</title>'
        '<rect class="gauge-track" x="0" y="0" width="200" height="16" rx="3"/>'
        f'<rect class="gauge-fill" x="0" y="0" width="{width}" height="16" rx="3"/></svg>'
    )


def hourly_bars(counts: Sequence[int], label: str, *, unit: str = "calls", line: float | None = None) -> Markup:
    """Bars of the last hours' counts, oldest first, with ``line`` (say, an even share of a daily
    budget) drawn across."""
    peak = max([*counts, line or 0, 1])
    width, height, gap = 12, 60, 2
    bars = []
    for i, count in enumerate(counts):
        h = round(count / peak * height, 1)
        hours_ago = len(counts) - 1 - i
        tip = f"{count:,} {unit}, {hours_ago} h ago" if hours_ago else f"{count:,} {unit} this hour"
        bars.append(
            f'<rect class="bar" x="{i * (width + gap)}" y="{height - h}" width="{width}" height="{h}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    total_width = len(counts) * (width + gap)
    drawn = ""
    if line:
        y = round(height - line / peak * height, 1)
        drawn = f'<line class="budget-line" x1="0" x2="{total_width}" y1="{y}" y2="{y}"/>'
    most = max(counts, default=0)
    text = f"{label}: {sum(counts):,} {unit} in the last {len(counts)} hours, most in one hour {most:,}"
    return Markup(
        f'<svg class="bars" viewBox="0 0 {total_width} {height}" width="{total_width}" height="{height}"'
        f' role="img" aria-label="{escape(text)}"><title>{escape(text)}</title>{"".join(bars)}{drawn}</svg>'
    )
