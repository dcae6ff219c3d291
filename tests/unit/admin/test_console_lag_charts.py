"""The console's lag: how long it reads, how long ago a sync was, and the hourly lag chart, where an
hour that logged no lag is not drawn as a lag of nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.admin.console.charts import ago, duration, lag_bars

pytestmark = pytest.mark.unit


def test_a_lag_reads_in_the_unit_that_matters() -> None:
    assert [duration(s) for s in (None, 0.25, 1.2, 42.4, 185, 7_200)] == [
        "—",
        "0.2 s",
        "1.2 s",
        "42 s",
        "3 min",
        "2.0 h",
    ]


def test_how_long_ago_keeps_the_exact_time() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    said = ago((now - timedelta(minutes=3, seconds=50)).isoformat(), now)
    assert ">3 min ago</time>" in said
    assert 'title="2026-12-07 11:56:10 UTC"' in said
    assert [ago(now - d, now).split(">")[1].split("<")[0] for d in (timedelta(seconds=5), timedelta(hours=5))] == [
        "5 s ago",
        "5 h ago",
    ]
    assert ago(None) == "—"


def test_lag_bars_scale_to_the_largest_lag_and_say_which_hours_logged_none() -> None:
    svg = lag_bars([None, 2.0, None, 0.5], "Lag to Salesforce")
    assert svg.count('class="bar lag"') == 2
    assert svg.count('class="bar-none"') == 2
    assert 'height="60.0"' in svg  # the largest fills the chart
    assert 'height="15.0"' in svg
    assert "Lag to Salesforce: largest lag 2.0 s in the last 4 hours, latest hour with a lag 0.5 s;" in svg
    assert "no lag logged, 3 h ago" in svg
    assert "largest lag 0.5 s, this hour" in svg
    assert "no lag logged in the last 2 hours" in lag_bars([None, None], "Lag to the app")
    assert "<script>" not in lag_bars([1.0], "<script>")
