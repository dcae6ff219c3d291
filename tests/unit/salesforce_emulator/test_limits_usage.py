"""API usage: a rolling 24-hour window by minute, allocations per edition, the limit fault."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from pydantic import SecretStr

from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.limits import (
    DAILY_API_REQUESTS,
    DAILY_BULK_V2_QUERY_JOBS,
    RollingCounter,
    UsageMeter,
    daily_api_allocation,
)
from services.salesforce_emulator.orgs import Edition, Org, OrgRegistry, OrgRepository, OrgSpec, UserSpec

pytestmark = pytest.mark.unit

DAY = 24 * 60 * 60


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def org_with(edition: Edition = "developer", licenses: int = 2) -> tuple[OrgRegistry, Org]:
    orgs = OrgRegistry(OrgRepository(sqlite3.connect(":memory:"), threading.Lock()))
    org = orgs.create(
        OrgSpec(
            alias="o",
            edition=edition,
            licenses=licenses,
            users=(UserSpec(username="u@o.example", password=SecretStr("p")),),
        )
    )
    return orgs, org


@pytest.mark.parametrize(
    ("edition", "licenses", "allocation"),
    [
        ("developer", 2, 15_000),
        ("developer", 500, 15_000),
        ("enterprise", 50, 150_000),
        ("professional", 10, 110_000),
        ("unlimited", 10, 150_000),
        ("performance", 0, 100_000),
    ],
)
def test_allocations_follow_the_documented_editions(edition: Edition, licenses: int, allocation: int) -> None:
    assert daily_api_allocation(edition, licenses) == allocation


def test_the_window_forgets_calls_older_than_24_hours_minute_by_minute() -> None:
    counter = RollingCounter()
    minute = 1_000_000
    counter.add(minute, 3)
    counter.add(minute + 10, 2)
    assert counter.total(minute + 10) == 5
    assert counter.total(minute + 1439) == 5  # still inside the 24 h window
    assert counter.total(minute + 1440) == 2  # the first minute has left it
    assert counter.total(minute + 1450) == 0


def test_admit_counts_until_the_allocation_then_refuses_without_counting() -> None:
    orgs, org = org_with()
    clock = Clock()
    meter = UsageMeter(orgs, clock)
    org.faults.api_limit = 3
    assert [meter.admit(org) for _ in range(3)] == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(SalesforceError) as refused:
        meter.admit(org)
    assert (refused.value.http_status, refused.value.error_code) == (403, "REQUEST_LIMIT_EXCEEDED")
    assert refused.value.message == "TotalRequests Limit exceeded."
    assert meter.used(org.org_id) == 3
    assert meter.header(org) == "api-usage=3/3"
    clock.now += DAY
    assert meter.admit(org) == (1, 3)


def test_usage_by_others_counts_and_the_limit_fault_can_be_cleared() -> None:
    orgs, org = org_with("enterprise", 50)
    meter = UsageMeter(orgs, Clock())
    meter.record(org.org_id, 149_999)
    assert meter.admit(org) == (150_000, 150_000)
    with pytest.raises(SalesforceError):
        meter.admit(org)
    org.faults.api_limit = 200_000
    assert meter.admit(org) == (150_001, 200_000)
    org.faults.api_limit = None
    assert meter.allocation(org) == 150_000
    meter.reset(org.org_id)
    assert meter.used(org.org_id) == 0


def test_the_limits_document_reports_max_and_remaining() -> None:
    orgs, org = org_with()
    meter = UsageMeter(orgs, Clock())
    meter.record(org.org_id, 2)
    meter.record(org.org_id, 1, DAILY_BULK_V2_QUERY_JOBS)
    doc = meter.limits(org)
    assert doc[DAILY_API_REQUESTS] == {"Max": 15_000, "Remaining": 14_998}
    assert doc[DAILY_BULK_V2_QUERY_JOBS] == {"Max": 10_000, "Remaining": 9_999}
    for key in ("DailyBulkApiRequests", "DailyDurableStreamingApiEvents", "DailyBulkV2QueryFileStorageMB"):
        assert doc[key]["Remaining"] == doc[key]["Max"] > 0
    org.faults.api_limit = 1
    assert meter.limits(org)[DAILY_API_REQUESTS] == {"Max": 1, "Remaining": 0}


def test_usage_is_also_counted_per_call_options_client() -> None:
    orgs, org = org_with()
    meter = UsageMeter(orgs, Clock())
    meter.admit(org, "duplex-acme")
    meter.admit(org, "duplex-acme")
    meter.admit(org)
    meter.record(org.org_id, 5)  # other integrations, through the admin API: no client
    assert meter.used(org.org_id) == 8
    assert meter.used_by_client(org.org_id) == {"duplex-acme": 2, "": 1}
    meter.reset(org.org_id)
    assert meter.used_by_client(org.org_id) == {}
