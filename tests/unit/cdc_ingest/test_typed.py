"""One field value, three wire forms (Avro, REST JSON, Bulk CSV), one typed value."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from services.cdc_ingest.event_schema import flat_name
from services.cdc_ingest.typed import typed, typed_from_csv
from services.common.values import Reference, Value

pytestmark = pytest.mark.unit

NOON = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sf_type", "avro", "rest", "csv", "expected"),
    [
        ("datetime", 1_714_564_800_123, "2024-05-01T12:00:00.123+0000", "2024-05-01T12:00:00.123Z", NOON),
        ("date", 19_844, "2024-05-01", "2024-05-01", date(2024, 5, 1)),
        ("currency", 1234.5, 1234.5, "1234.5", Decimal("1234.5")),
        ("percent", 12.25, 12.25, "12.25", Decimal("12.25")),
        ("double", 0.1, 0.1, "0.1", 0.1),
        ("int", 42, 42, "42", 42),
        ("boolean", True, True, "true", True),
        ("boolean", False, False, "false", False),
        (
            "reference",
            "001000000000001AAA",
            "001000000000001AAA",
            "001000000000001AAA",
            Reference("001000000000001AAA"),
        ),
        ("multipicklist", "Software;Services", "Software;Services", "Software;Services", ("Software", "Services")),
        ("string", "Acme", "Acme", "Acme", "Acme"),
        ("phone", "+1 555", "+1 555", "+1 555", "+1 555"),
    ],
)
def test_every_wire_form_gives_the_same_value(
    sf_type: str, avro: object, rest: object, csv: str, expected: Value
) -> None:
    assert typed(sf_type, avro) == expected
    assert typed(sf_type, rest) == expected
    assert typed_from_csv(sf_type, csv) == expected
    assert type(typed(sf_type, avro)) is type(expected)


def test_references_stay_references() -> None:
    assert isinstance(typed("reference", "001000000000001AAA"), Reference)
    assert isinstance(typed("id", "001000000000001AAA"), Reference)


@pytest.mark.parametrize("sf_type", ["string", "datetime", "date", "int", "boolean", "currency"])
def test_nulls_are_null(sf_type: str) -> None:
    assert typed(sf_type, None) is None
    assert typed_from_csv(sf_type, "") is None


@pytest.mark.parametrize(("raw", "expected"), [("x", "x"), (3, 3), (1.5, 1.5), (True, True)])
def test_fields_describe_does_not_know_keep_their_wire_type(raw: object, expected: Value) -> None:
    assert typed(None, raw) == expected


@pytest.mark.parametrize(
    ("compound", "child", "api_name"),
    [
        ("BillingAddress", "City", "BillingCity"),
        ("ShippingAddress", "PostalCode", "ShippingPostalCode"),
        ("MailingAddress", "Street", "MailingStreet"),
        ("Address", "City", "City"),  # Lead
        ("Name", "FirstName", "FirstName"),  # Contact
        ("Location__c", "Latitude", "Location__Latitude__s"),
    ],
)
def test_compound_components_get_their_api_names(compound: str, child: str, api_name: str) -> None:
    assert flat_name(compound, child) == api_name


@pytest.mark.parametrize(
    ("sf_type", "raw", "expected"),
    [("long", 2**63 - 1, 2**63 - 1), ("int", "-9223372036854775808", -(2**63)), ("int", "1e18", 10**18)],
)
def test_ints_within_int64_are_read(sf_type: str, raw: object, expected: int) -> None:
    assert typed(sf_type, raw) == expected


@pytest.mark.parametrize("raw", [2**63, -(2**63) - 1, 10**30, "9" * 30, "1e40000000", "Infinity", 1e300])
def test_ints_beyond_int64_are_refused_at_once(raw: object) -> None:
    # Duplex's events carry ints as int64; "1e40000000" is refused without being expanded (hours).
    started = time.process_time()
    with pytest.raises(ValueError, match="int64"):
        typed("int", raw)
    assert time.process_time() - started < 0.5
