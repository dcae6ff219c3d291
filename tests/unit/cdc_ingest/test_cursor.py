"""The (SystemModstamp, Id) tuple cursor and its SOQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.cdc_ingest.cursor import (
    Cursor,
    RecentlyEmitted,
    after_clause,
    by_ids_query,
    merge_losers_query,
    read_after_query,
    selectable_fields,
    soql_datetime,
)
from services.cdc_ingest.filters import pushdown, wanted_fields
from services.cdc_ingest.typed import FieldInfo
from tests.fixtures.documents import tenant_config

pytestmark = pytest.mark.unit

T = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cursor", "clause"),
    [
        (None, ""),
        (Cursor(T, ""), "SystemModstamp >= 2024-05-01T12:00:00.250Z"),
        (
            Cursor(T, "001A"),
            "(SystemModstamp > 2024-05-01T12:00:00.250Z OR"
            " (SystemModstamp = 2024-05-01T12:00:00.250Z AND Id > '001A'))",
        ),
        (
            Cursor(T, "a'b"),
            "(SystemModstamp > 2024-05-01T12:00:00.250Z OR"
            " (SystemModstamp = 2024-05-01T12:00:00.250Z AND Id > 'a\\'b'))",
        ),
    ],
)
def test_after_clause(cursor: Cursor | None, clause: str) -> None:
    assert after_clause(cursor) == clause


def test_read_after_query_orders_by_the_tuple_and_limits() -> None:
    assert read_after_query("Account", ["Id", "Name"], None, 200) == (
        "SELECT Id, Name FROM Account ORDER BY SystemModstamp, Id LIMIT 200"
    )
    assert read_after_query("Account", ["Id"], Cursor(T, "001"), 5).endswith(
        "AND Id > '001')) ORDER BY SystemModstamp, Id LIMIT 5"
    )
    # A pair filter's clause narrows the read; each part keeps its own parentheses.
    assert read_after_query("Account", ["Id"], None, 5, "Type = 'A' OR Type = 'B'") == (
        "SELECT Id FROM Account WHERE Type = 'A' OR Type = 'B' ORDER BY SystemModstamp, Id LIMIT 5"
    )
    assert " WHERE ((SystemModstamp > " in read_after_query("Account", ["Id"], Cursor(T, "001"), 5, "Type = 'A'")
    assert read_after_query("Account", ["Id"], Cursor(T, "001"), 5, "Type = 'A'").endswith(
        "AND Id > '001'))) AND (Type = 'A') ORDER BY SystemModstamp, Id LIMIT 5"
    )


def test_by_ids_query() -> None:
    assert by_ids_query("Contact", ["Id"], ["003A", "003B"]) == "SELECT Id FROM Contact WHERE Id IN ('003A', '003B')"


def test_overlap_starts_earlier_with_every_id() -> None:
    assert Cursor(T, "001").minus(timedelta(minutes=5)) == Cursor(T - timedelta(minutes=5), "")


@pytest.mark.parametrize("cursor", [Cursor(T, "001A"), Cursor(T, ""), Cursor(datetime(2020, 1, 1, tzinfo=UTC), "x|y")])
def test_cursor_text_round_trips(cursor: Cursor) -> None:
    assert Cursor.decode(cursor.encode()) == cursor


def test_soql_datetimes_are_utc_with_milliseconds() -> None:
    from datetime import timezone

    assert soql_datetime(datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00.000Z"


def test_selectable_fields_leave_compounds_out_and_system_fields_in() -> None:
    fields = [FieldInfo("Name", "string"), FieldInfo("BillingAddress", "address"), FieldInfo("BillingCity", "string")]
    assert selectable_fields(fields) == ["Id", "SystemModstamp", "IsDeleted", "Name", "BillingCity"]


def test_recently_emitted_drops_repeats_inside_the_overlap_only() -> None:
    recent = RecentlyEmitted(timedelta(minutes=5))
    recent.add("001", T)
    assert not recent.is_new("001", T)
    assert recent.is_new("001", T + timedelta(seconds=1))  # changed again
    assert recent.is_new("002", T)
    recent.forget_before(Cursor(T + timedelta(minutes=6)))
    assert recent.is_new("001", T)


def test_merge_losers_query_reads_deleted_records_by_id_with_their_master() -> None:
    assert merge_losers_query("Account", ["001A", "a'b"]) == (
        "SELECT Id, MasterRecordId FROM Account WHERE Id IN ('001A', 'a\\'b') AND IsDeleted = true"
    )


def test_a_backfill_carries_every_pair_filter_of_its_object_or_none() -> None:
    config = tenant_config(
        [
            {
                "name": "customers",
                "app": {"object": "customers"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "filter": {"soql": "AnnualRevenue > 0"},
                "fields": [
                    {"app": "name", "salesforce": "Name"},
                    {
                        "app": "kind",
                        "salesforce": "Type",
                        "direction": "crm_to_app",
                        "classify": [
                            {"soql": "Type = 'Customer - Direct'", "value": "customer"},
                            {"soql": "Type = 'Partner'", "value": "partner"},
                        ],
                    },
                ],
            },
            {
                "name": "contacts",
                "app": {"object": "contacts"},
                "salesforce": {"object": "Contact", "externalIdField": "Duplex_Id__c"},
                "fields": [{"app": "last", "salesforce": "LastName"}],
            },
        ]
    )
    assert pushdown(config) == {
        "Account": "((AnnualRevenue > 0) AND ((Type = 'Customer - Direct') OR (Type = 'Partner')))"
    }
    assert wanted_fields(config) == {"Account": frozenset({"AnnualRevenue", "Type", "Name"})}
