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


def duration(seconds: float | None) -> str:
    """A lag as people say it: tenths of a second while they matter, then seconds, minutes, hours."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ago(value: str | datetime | None, now: datetime | None = None) -> Markup:
    """An API time as how long ago it was, the exact time kept in the element for whoever needs it."""
    if value is None or value == "":
        return Markup("—")
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    elapsed = max(0.0, ((now or datetime.now(UTC)) - at).total_seconds())
    if elapsed < 60:
        said = f"{elapsed:.0f} s ago"
    elif elapsed < 3600:
        said = f"{elapsed // 60:.0f} min ago"
    elif elapsed < 86400:
        said = f"{elapsed // 3600:.0f} h ago"
    else:
        said = f"{elapsed // 86400:.0f} d ago"
    exact = when(at)
    return Markup(f'<time datetime="{escape(at.isoformat())}" title="{escape(exact)}">{escape(said)}</time>')


def lag_bars(lags: Sequence[float | None], label: str) -> Markup:
    """Bars of the last hours' largest lag, oldest first; an hour that logged none has no bar (and
    says so), which is not the same as a lag of nothing."""
    known = [lag for lag in lags if lag is not None]
    peak = max([*known, 0.001])
    width, height, gap = 12, 60, 2
    bars = []
    for i, lag in enumerate(lags):
        hours_ago = len(lags) - 1 - i
        when_said = f"{hours_ago} h ago" if hours_ago else "this hour"
        if lag is None:
            bars.append(
                f'<rect class="bar-none" x="{i * (width + gap)}" y="{height - 1}" width="{width}" height="1">'
                f"<title>{escape(f'no lag logged, {when_said}')}</title></rect>"
            )
            continue
        h = round(lag / peak * height, 1)
        bars.append(
            f'<rect class="bar lag" x="{i * (width + gap)}" y="{height - h}" width="{width}" height="{h}">'
            f"<title>{escape(f'largest lag {duration(lag)}, {when_said}')}</title></rect>"
        )
    total_width = len(lags) * (width + gap)
    if known:
        text = (
            f"{label}: largest lag {duration(max(known))} in the last {len(lags)} hours,"
            f" latest hour with a lag {duration(known[-1])}; {len(lags) - len(known)} hours without one"
        )
    else:
        text = f"{label}: no lag logged in the last {len(lags)} hours"
    return Markup(
        f'<svg class="bars" viewBox="0 0 {total_width} {height}" width="{total_width}" height="{height}"'
        f' role="img" aria-label="{escape(text)}"><title>{escape(text)}</title>{"".join(bars)}</svg>'
    )
