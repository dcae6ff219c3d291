"""The governor's budget arithmetic."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rate_limit_governor.budget import (
    ORG_PROBE_AFTER,
    Limits,
    OrgUsage,
    Priority,
    TenantBudget,
    acquire,
    crossed_warning,
    granted_in_window,
    is_warning,
    predicted_exhaustion,
    release,
    remaining,
    report,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def budget(**limits: object) -> TenantBudget:
    return TenantBudget(Limits(**{"daily_cap": 1000, "burst": 100, **limits}))  # type: ignore[arg-type]


def test_grants_count_against_the_daily_cap() -> None:
    grant = acquire(budget(), 10, T0)

    assert grant.granted
    assert grant.remaining == 990
    assert granted_in_window(grant.budget, T0) == 10


def test_a_burst_cannot_spend_the_day_at_once() -> None:
    b = budget()
    for _ in range(10):
        g = acquire(b, 10, T0)
        assert g.granted
        b = g.budget

    denied = acquire(b, 10, T0)

    assert not denied.granted
    assert denied.reason == "spreading calls over the day"
    # 10 calls at 1000/day take 864 s to refill.
    assert denied.not_before == T0 + timedelta(seconds=864)
    assert acquire(b, 10, T0 + timedelta(seconds=864)).granted


def test_the_cap_holds_and_frees_as_the_window_rolls() -> None:
    b = budget(daily_cap=200, burst=200)
    g = acquire(b, 200, T0)
    assert g.granted

    denied = acquire(g.budget, 1, T0 + timedelta(hours=23))
    later = acquire(g.budget, 1, T0 + timedelta(hours=24, minutes=1))

    assert (denied.granted, denied.reason) == (False, "daily cap reached")
    assert denied.not_before == T0 + timedelta(hours=24, minutes=1)
    assert later.granted


def test_backfills_leave_the_live_reserve_alone() -> None:
    b = budget(daily_cap=1000, burst=1000, live_reserve=0.2)
    b = acquire(b, 790, T0).budget

    backfill = acquire(b, 20, T0, priority=Priority.BACKFILL)
    live = acquire(b, 20, T0, priority=Priority.LIVE)

    assert not backfill.granted
    assert live.granted


def test_calls_made_by_others_reduce_what_is_granted() -> None:
    b = report(budget(daily_cap=10_000, burst=10_000, org_share=0.9), OrgUsage(used=8_900, max=10_000, observed_at=T0))

    assert remaining(b, T0) == 100
    assert acquire(b, 100, T0).granted
    denied = acquire(acquire(b, 100, T0).budget, 1, T0)
    assert (denied.granted, denied.reason) == (False, "org allocation exhausted")


def test_an_old_report_of_an_exhausted_org_lets_one_live_call_probe_for_a_new_one() -> None:
    # The org was out of calls a minute ago; since then nothing was granted, so nothing reported.
    b = report(budget(daily_cap=10_000, burst=10_000), OrgUsage(used=15_000, max=15_000, observed_at=T0))
    fresh = acquire(b, 1, T0 + timedelta(seconds=30))
    assert (fresh.granted, fresh.reason) == (False, "org allocation exhausted")
    assert fresh.not_before == T0 + ORG_PROBE_AFTER

    later = T0 + ORG_PROBE_AFTER
    assert not acquire(b, 2, later).granted  # a probe is one call
    assert not acquire(b, 1, later, priority=Priority.BACKFILL).granted  # and a live one
    probe = acquire(b, 1, later)
    assert probe.granted
    assert not acquire(probe.budget, 1, later + timedelta(seconds=59)).granted  # one a minute
    assert acquire(probe.budget, 1, later + ORG_PROBE_AFTER).granted

    # The probe's answer says the limit was lifted: calls flow again.
    lifted = report(probe.budget, OrgUsage(used=15_001, max=100_000, observed_at=later))
    assert acquire(lifted, 100, later).granted


def test_a_newer_report_replaces_the_estimate_and_older_ones_are_ignored() -> None:
    b = report(budget(burst=1000), OrgUsage(used=0, max=100_000, observed_at=T0))
    b = acquire(b, 50, T0).budget
    assert b.granted_since_report == 50

    newer = report(b, OrgUsage(used=60, max=100_000, observed_at=T0 + timedelta(seconds=1)))
    older = report(newer, OrgUsage(used=10, max=100_000, observed_at=T0))

    assert newer.granted_since_report == 0
    assert older.org == newer.org


def test_long_running_calls_are_capped_and_released() -> None:
    b = budget(max_long_running=2)
    for lease in ("a", "b"):
        b = acquire(b, 1, T0, long_running=True, lease_id=lease).budget

    full = acquire(b, 1, T0, long_running=True, lease_id="c")
    freed = acquire(release(b, "a"), 1, T0, long_running=True, lease_id="c")
    expired = acquire(b, 1, T0 + timedelta(minutes=16), long_running=True, lease_id="c")

    assert (full.granted, full.reason) == (False, "too many long-running calls")
    assert freed.granted
    assert expired.granted


def test_warning_below_ten_percent() -> None:
    b = acquire(budget(daily_cap=1000, burst=1000), 900, T0).budget
    assert not is_warning(b, T0)
    assert is_warning(acquire(b, 1, T0).budget, T0)


def test_a_warning_is_raised_once_per_crossing_even_when_a_lowered_cap_crosses_the_line() -> None:
    b, crossed = crossed_warning(acquire(budget(daily_cap=1000, burst=1000), 50, T0).budget, T0)
    assert not crossed
    # The cap is configuration, read afresh each time: lowered to 52, the tenant is below the line
    # before any decision of the new cap's, and the stored state still says it was not warned.
    lowered = replace(b, limits=replace(b.limits, daily_cap=52))
    b, crossed = crossed_warning(acquire(lowered, 1, T0).budget, T0)
    assert crossed
    assert [crossed_warning(acquire(b, 1, T0).budget, T0)[1] for _ in range(3)] == [False] * 3
    # Raised again, the tenant climbs back above the line; going below it warns again.
    b, crossed = crossed_warning(replace(b, limits=replace(b.limits, daily_cap=1000)), T0)
    assert not crossed
    assert not b.warned
    b, crossed = crossed_warning(acquire(replace(b, limits=replace(b.limits, daily_cap=53)), 1, T0).budget, T0)
    assert crossed


def test_predicted_exhaustion_follows_the_last_hours_rate() -> None:
    b = budget(daily_cap=1000, burst=1000)
    assert predicted_exhaustion(b, T0) is None
    b = acquire(b, 100, T0).budget  # 100 calls/hour, 900 left: 9 hours

    assert predicted_exhaustion(b, T0) == T0 + timedelta(hours=9)


requests = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=200),  # calls
        st.integers(min_value=0, max_value=3 * 3600),  # seconds since the previous request
        st.sampled_from(list(Priority)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(min_value=50, max_value=5000), script=requests)
def test_no_rolling_24_hours_ever_exceed_the_cap(cap: int, script: list[tuple[int, int, Priority]]) -> None:
    b = TenantBudget(Limits(daily_cap=cap))
    now = T0
    grants: list[tuple[datetime, int]] = []
    for calls, gap, priority in script:
        now += timedelta(seconds=gap)
        g = acquire(b, calls, now, priority=priority)
        b = g.budget
        if g.granted:
            grants.append((now, calls))
        else:
            assert g.not_before is not None
            assert g.not_before > now
    for moment, _ in grants:
        in_window = sum(c for t, c in grants if moment - timedelta(hours=24) < t <= moment)
        assert in_window <= cap
