"""Bitmap expansion by Salesforce's documented algorithm, including compound fields."""

from __future__ import annotations

import pytest

from services.cdc_ingest.bitmap import BitmapError, bits, expand
from tests.unit.cdc_ingest.schemas import account_schema

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0x", []),
        ("0x00", []),
        ("0x01", [0]),
        ("0x650004E0", [5, 6, 7, 10, 24, 26, 29, 30]),  # the documented example
        ("0x650004e0", [5, 6, 7, 10, 24, 26, 29, 30]),  # lower case is read too
        ("0x2", [1]),  # odd length
        ("0X0A", [1, 3]),
    ],
)
def test_bits_are_counted_from_the_least_significant_end(text: str, expected: list[int]) -> None:
    assert bits(text) == expected


@pytest.mark.parametrize(
    ("bitmaps", "expected"),
    [
        ([], []),
        (["0x02"], ["Name"]),
        (["0x8A"], ["Name", "Phone", "LastModifiedDate"]),
        # Only children changed: the compound's own bit stays clear.
        (["0x80", "2-0x02"], ["LastModifiedDate", "BillingAddress.City"]),
        (
            ["0x80", "2-0x06", "8-0x01"],
            ["LastModifiedDate", "BillingAddress.City", "BillingAddress.State", "ShippingAddress.Street"],
        ),
        # A compound defined once and referenced by name (ShippingAddress: "Address") still expands.
        (["0x00", "8-0x10"], ["ShippingAddress.Country"]),
        # The whole compound (all parts nulled) is its top-level bit.
        (["0x04"], ["BillingAddress"]),
        (["0x0E00"], ["Founded__c", "Industries__c", "IsActive__c"]),
    ],
)
def test_expand_names_top_level_and_compound_fields(bitmaps: list[str], expected: list[str]) -> None:
    assert expand(account_schema(), bitmaps) == expected


@pytest.mark.parametrize(
    ("bitmaps", "problem"),
    [
        (["0x1000"], "beyond the schema"),  # bit 12: the schema has 12 fields (0..11)
        (["0x00", "3-0x01"], "not a compound"),  # Phone is a scalar
        (["0x00", "2-0x20"], "beyond BillingAddress"),  # Address has 5 parts
        (["0x00", "99-0x01"], "not a compound"),
        (["0xZZ"], "not hexadecimal"),
        (["abc"], "neither"),
        (["0x00", "0x01"], "top-level bitmap"),
    ],
)
def test_bitmaps_that_do_not_fit_the_schema_are_refused(bitmaps: list[str], problem: str) -> None:
    with pytest.raises(BitmapError, match=problem):
        expand(account_schema(), bitmaps)
