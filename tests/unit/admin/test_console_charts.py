"""The console's pictures and the budget series they draw: what the eye sees is also said in text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.admin.console.charts import gauge, hourly_bars, number, when
from services.admin.health import api_budget

pytestmark = pytest.mark.unit


def test_the_gauge_turns_to_a_warning_under_ten_percent_left() -> None:
    ok = gauge(4_000, 5_000, "API calls")
    assert 'class="gauge gauge-ok"' in ok
    assert 'aria-label="API calls: 4,000 of 5,000 used, 20% left"' in ok
    low = gauge(4_600, 5_000, "API calls")
    assert 'class="gauge gauge-low"' in low
    assert "8% left (low)" in low
    # Over the cap is drawn full, never past the track.
    assert 'width="200.0"' in gauge(9_000, 5_000, "API calls").split("gauge-fill")[1]


def test_hourly_bars_scale_to_the_peak_and_draw_the_budget_line() -> None:
    svg = hourly_bars([0] * 22 + [50, 100], "API calls per hour", line=25.0)
    assert svg.count('class="bar"') == 24
    assert 'height="60.0"' in svg  # the peak fills the chart
    assert 'height="30.0"' in svg
    assert 'class="budget-line"' in svg
    assert 'y1="45.0"' in svg  # 25 of a 100 peak
    assert "150 calls in the last 24 hours, most in one hour 100" in svg
    assert "100 calls this hour" in svg
    records = hourly_bars([3, 0], "To Salesforce", unit="records")
    assert "To Salesforce: 3 records in the last 2 hours" in records
    assert "budget-line" not in records


def test_text_cannot_break_out_of_the_markup() -> None:
    assert "<script>" not in gauge(1, 2, "<script>alert(1)</script>")


def test_formatting() -> None:
    assert when(None) == "—"
    assert when("2026-12-07T10:00:00+01:00") == "2026-12-07 09:00:00 UTC"
    assert (number(1234), number(12.5), number(None)) == ("1,234", "12.5", "—")


def test_the_budget_counts_each_of_the_last_24_hours() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    ledger = {
        (now - timedelta(minutes=10)).isoformat(): 5,
        (now - timedelta(hours=1, minutes=10)).isoformat(): 7,
        (now - timedelta(hours=23, minutes=50)).isoformat(): 3,
        (now - timedelta(hours=25)).isoformat(): 1_000,  # older than a day: not counted
    }
    budget = api_budget(json.dumps({"ledger": ledger}), 100, now)
    assert len(budget.hourly) == 24
    assert (budget.hourly[-1], budget.hourly[-2], budget.hourly[0]) == (5, 7, 3)
    assert budget.duplex_calls == 15 == sum(budget.hourly)
