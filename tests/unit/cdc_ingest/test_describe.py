"""What cdc-ingest keeps of describe for mapping (crm_object_fields), and which objects merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.cdc_ingest.describe import is_mergeable
from services.cdc_ingest.schema_schedule import wait_before_refresh
from services.common.schema import SUMMARY_KEYS, field_summary

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("field", "summary"),
    [
        (
            {
                "name": "Name",
                "type": "string",
                "length": 255,
                "createable": True,
                "updateable": True,
                "calculated": False,
                "nillable": False,
                "label": "Account Name",
                "byteLength": 765,
            },
            {
                "type": "string",
                "length": 255,
                "createable": True,
                "updateable": True,
                "calculated": False,
                "nillable": False,
            },
        ),
        (
            # A formula: calculated, never written by anyone.
            {
                "name": "Is_Key_Account__c",
                "type": "boolean",
                "length": 0,
                "createable": False,
                "updateable": False,
                "calculated": True,
                "nillable": True,
            },
            {
                "type": "boolean",
                "length": 0,
                "createable": False,
                "updateable": False,
                "calculated": True,
                "nillable": True,
            },
        ),
        (
            # Keys describe leaves out (or sends as null) stay out: mapping's reader is permissive then.
            {"name": "Id", "type": "id", "length": None, "updateable": False},
            {"type": "id", "updateable": False},
        ),
    ],
)
def test_field_summary_keeps_the_keys_mapping_reads(field: dict[str, Any], summary: dict[str, Any]) -> None:
    result = field_summary([field])
    assert result == {field["name"]: summary}
    assert [key for key in SUMMARY_KEYS if key in summary] == list(result[field["name"]])


@pytest.mark.parametrize(
    ("describe", "mergeable"),
    [
        ({"mergeable": True, "fields": []}, True),
        ({"mergeable": False, "fields": [{"name": "Name"}]}, False),
        ({"fields": [{"name": "Id"}, {"name": "MasterRecordId"}]}, True),
        ({"mergeable": False, "fields": [{"name": "MasterRecordId"}]}, True),
        ({}, False),
    ],
)
def test_mergeable_by_flag_or_by_the_field_a_merge_writes(describe: dict[str, Any], mergeable: bool) -> None:
    assert is_mergeable(describe) is mergeable


def test_a_schema_refresh_is_due_a_period_after_the_last_or_after_the_worker_started() -> None:
    every = timedelta(hours=24)
    start = datetime(2026, 12, 7, 8, tzinfo=UTC)
    # The worker's start described everything: the first refresh comes a period later.
    assert wait_before_refresh(None, start, every, start) == every
    assert wait_before_refresh(start - timedelta(hours=20), start, every, start) == timedelta(hours=4)
    assert wait_before_refresh(start - timedelta(hours=30), start, every, start) == timedelta(0)
