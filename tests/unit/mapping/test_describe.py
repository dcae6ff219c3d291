"""Reading cdc-ingest's describe rows (crm_object_fields.fields) into what translate checks."""

from __future__ import annotations

from typing import Any

import pytest

from services.mapping.describes import parse_describe
from services.mapping.translate import CrmFieldInfo

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"Name": {"type": "string", "length": 255, "createable": True, "updateable": True, "calculated": False}},
            {"Name": CrmFieldInfo("Name", length=255, type="string")},
        ),
        (
            {
                "Upper__c": {
                    "type": "string",
                    "length": 80,
                    "createable": False,
                    "updateable": False,
                    "calculated": True,
                }
            },
            {
                "Upper__c": CrmFieldInfo(
                    "Upper__c", updateable=False, createable=False, calculated=True, length=80, type="string"
                )
            },
        ),
        # Flags and lengths a describe leaves out never make a field read-only or reject a value.
        ({"Phone": {"type": "phone"}}, {"Phone": CrmFieldInfo("Phone", type="phone")}),
        ({"Phone": {"type": "phone", "length": None}}, {"Phone": CrmFieldInfo("Phone", type="phone")}),
        # The jsonb column comes as text from a connection without a jsonb codec.
        (
            '{"Id": {"type": "id", "length": 18, "createable": false, "updateable": false}}',
            {"Id": CrmFieldInfo("Id", updateable=False, createable=False, length=18, type="id")},
        ),
        # Numbers: precision and scale for double, currency and percent; digits for int.
        (
            {
                "Amount": {"type": "currency", "precision": 16, "scale": 2, "digits": 0, "length": 0},
                "NumberOfEmployees": {"type": "int", "precision": 0, "scale": 0, "digits": 8},
            },
            {
                "Amount": CrmFieldInfo("Amount", type="currency", precision=16, scale=2),
                "NumberOfEmployees": CrmFieldInfo("NumberOfEmployees", type="int", digits=8),
            },
        ),
        # Left out (a summary written before they were kept), they never reject a value.
        ({"Amount": {"type": "currency", "precision": None}}, {"Amount": CrmFieldInfo("Amount", type="currency")}),
        ({"Odd": "not an object"}, {}),
        ({}, {}),
    ],
)
def test_describe_rows_become_field_infos(fields: Any, expected: dict[str, CrmFieldInfo]) -> None:
    assert parse_describe(fields) == expected


@pytest.mark.parametrize(
    ("info", "read_only"),
    [
        (CrmFieldInfo("A"), False),
        (CrmFieldInfo("A", calculated=True), True),
        (CrmFieldInfo("A", updateable=False, createable=False), True),
        # Set on create only: still writable when Duplex creates the record.
        (CrmFieldInfo("A", updateable=False), False),
    ],
)
def test_read_only_fields(info: CrmFieldInfo, read_only: bool) -> None:
    assert info.read_only is read_only
