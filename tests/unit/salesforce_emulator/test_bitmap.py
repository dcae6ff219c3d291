"""changedFields / nulledFields bitmaps, checked against the documented decoding algorithm."""

from __future__ import annotations

import re

import avro.schema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.salesforce_emulator import cdc, schema

pytestmark = pytest.mark.unit

ACCOUNT = cdc.change_event_schema(schema.ACCOUNT)
CONTACT = cdc.change_event_schema(schema.CONTACT)


def official_process_bitmap(schema_json: str, bitmap_fields: list[str]) -> list[str]:
    """The algorithm of Salesforce's ChangeEventHeaderUtility.process_bitmap, over the avro package.

    The hex is turned into a bit string (most significant first) and reversed, so position i is
    field i; nested elements are read only when the last element contains '-'.
    """
    parsed = avro.schema.parse(schema_json)
    assert isinstance(parsed, avro.schema.RecordSchema)

    def names(bitmap: str, record: avro.schema.RecordSchema) -> list[str]:
        bits = "".join(format(int(digit, 16), "04b") for digit in bitmap[2:])[::-1]
        return [record.fields[i].name for i, bit in enumerate(bits) if bit == "1"]

    fields: list[str] = []
    remaining = list(bitmap_fields)
    if remaining and remaining[0].startswith("0x"):
        fields += names(remaining.pop(0), parsed)
    if remaining and "-" in remaining[-1]:
        for element in remaining:
            if "-" in element:
                parent_index, child_bitmap = element.split("-")
                parent = parsed.fields[int(parent_index)]
                assert isinstance(parent.type, avro.schema.UnionSchema)
                (child,) = (s for s in parent.type.schemas if s.type != "null")
                assert isinstance(child, avro.schema.RecordSchema)
                fields += [f"{parent.name}.{n}" for n in names(child_bitmap, child)]
    return fields


def top_index(event_schema: cdc.ChangeEventSchema, name: str) -> int:
    return event_schema.top_fields.index(name)


@pytest.mark.parametrize(
    ("event_schema", "fields", "expected_names"),
    [
        pytest.param(ACCOUNT, ["Name"], ["Name"], id="one top-level field"),
        pytest.param(
            ACCOUNT, ["LastModifiedDate", "Name", "Phone"], ["LastModifiedDate", "Name", "Phone"], id="several"
        ),
        pytest.param(
            ACCOUNT,
            ["LastModifiedDate", "BillingCity", "BillingState"],
            ["LastModifiedDate", "BillingAddress.City", "BillingAddress.State"],
            id="compound children only, parent bit clear",
        ),
        pytest.param(
            ACCOUNT,
            ["ShippingLongitude", "BillingStreet", "Description"],
            ["Description", "BillingAddress.Street", "ShippingAddress.Longitude"],
            id="two compounds",
        ),
        pytest.param(
            CONTACT,
            ["LastModifiedDate", "FirstName", "Salutation"],
            ["LastModifiedDate", "Name.Salutation", "Name.FirstName"],
            id="person name compound",
        ),
        pytest.param(ACCOUNT, ["SystemModstamp", "Id", "IsDeleted"], [], id="fields change events leave out"),
        pytest.param(ACCOUNT, [], [], id="nothing"),
    ],
)
def test_encode_then_documented_decode(
    event_schema: cdc.ChangeEventSchema, fields: list[str], expected_names: list[str]
) -> None:
    bitmap = cdc.encode_bitmap(event_schema, fields)

    assert official_process_bitmap(event_schema.schema_json, bitmap) == expected_names
    assert cdc.expand_bitmap(event_schema.schema_json, bitmap) == expected_names


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # Bit 7 (Name) and bit 3 (LastModifiedDate): 0x88, one whole byte.
        (["Name", "LastModifiedDate"], ["0x88"]),
        # Bit 1 alone would be "0x2": padded to a whole byte.
        (["CreatedDate"], ["0x02"]),
        # Bits 15 and 3: 0x8008.
        (["Description", "LastModifiedDate"], ["0x8008"]),
        # Index 17 is BillingAddress; City is child 1; element 0 still leads.
        (["BillingCity"], ["0x00", "17-0x02"]),
        (["LastModifiedDate", "BillingCity", "ShippingCountry"], ["0x08", "17-0x02", "18-0x10"]),
    ],
)
def test_exact_strings(fields: list[str], expected: list[str]) -> None:
    assert top_index(ACCOUNT, "Name") == 7
    assert top_index(ACCOUNT, "BillingAddress") == 17
    assert cdc.encode_bitmap(ACCOUNT, fields) == expected


def test_hex_is_upper_case_and_whole_bytes() -> None:
    # Bits 10..13 give hex letters; every element must be upper case with an even digit count.
    fields = ["Type", "Industry", "Phone", "Website", "ParentId", "BillingLatitude", "BillingLongitude"]
    bitmap = cdc.encode_bitmap(ACCOUNT, fields)

    for element in bitmap:
        digits = element.split("0x", 1)[1]
        assert re.fullmatch(r"(?:[0-9A-F]{2})+", digits), element
    assert any(re.search(r"[A-F]", e.split("0x", 1)[1]) for e in bitmap)


def test_nulling_every_part_of_a_compound_reports_the_compound() -> None:
    all_billing = [f"Billing{part}" for part in ("Street", "City", "State", "PostalCode", "Country")]
    all_billing += ["BillingLatitude", "BillingLongitude"]

    nulled = cdc.encode_bitmap(ACCOUNT, all_billing, collapse_full_compounds=True)
    partly = cdc.encode_bitmap(ACCOUNT, all_billing[:2], collapse_full_compounds=True)

    assert nulled == [f"0x{1 << 17:06X}"]
    assert cdc.expand_bitmap(ACCOUNT.schema_json, nulled) == ["BillingAddress"]
    assert cdc.expand_bitmap(ACCOUNT.schema_json, partly) == ["BillingAddress.Street", "BillingAddress.City"]


def test_expand_accepts_parsed_json_and_skips_malformed_nesting() -> None:
    import json

    parsed = json.loads(ACCOUNT.schema_json)
    # Nested elements are read only when the last element contains '-' (the documented rule).
    assert cdc.expand_bitmap(parsed, ["0x80", "17-0x01"]) == ["Name", "BillingAddress.Street"]
    assert cdc.expand_bitmap(parsed, ["17-0x01"]) == ["BillingAddress.Street"]
    assert cdc.expand_bitmap(parsed, []) == []


ACCOUNT_FIELDS = sorted(ACCOUNT.slots)


@given(st.sets(st.sampled_from(ACCOUNT_FIELDS)))
def test_round_trip_any_field_set(fields: set[str]) -> None:
    bitmap = cdc.encode_bitmap(ACCOUNT, fields)

    decoded = cdc.expand_bitmap(ACCOUNT.schema_json, bitmap)

    expected = set()
    for name in fields:
        slot = ACCOUNT.slots[name]
        if slot.child < 0:
            expected.add(name)
        else:
            compound = ACCOUNT.compounds[slot.top]
            expected.add(f"{compound.name}.{compound.components[slot.child][0]}")
    assert set(decoded) == expected
    assert len(decoded) == len(expected)
    assert official_process_bitmap(ACCOUNT.schema_json, bitmap) == decoded
