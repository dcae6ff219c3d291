"""Change event payloads: what each change type carries, decoded with fastavro and the avro package."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from services.salesforce_emulator import cdc, schema
from services.salesforce_emulator.changes import ChangeType, CommittedTransaction, RecordChange
from services.salesforce_emulator.validation import format_datetime

pytestmark = pytest.mark.unit

ORG = "00D5g000004ABCDEAQ"
OBJECTS = {o.name: o for o in schema.STANDARD_OBJECTS}
ACCOUNT_ID = "0015g00000ABCDEAAA"


def transaction(*changes: RecordChange) -> CommittedTransaction:
    return CommittedTransaction(
        org_id=ORG,
        transaction_key="000046c7-a642-11e2-c29b-229c6786473e",
        commit_timestamp_ms=1_696_444_513_000,
        commit_number=11_657_372_702_432,
        commit_user="00558000000yFyDAAU",
        change_origin="com/salesforce/api/rest/62.0;client=SalesforceListener",
        changes=changes,
    )


def decode(event: cdc.EncodedEvent) -> dict[str, Any]:
    """Decode with both libraries from the schema JSON GetSchema would serve; they must agree."""
    by_avro = avro.io.DatumReader(avro.schema.parse(event.schema.schema_json)).read(
        avro.io.BinaryDecoder(io.BytesIO(event.payload))
    )
    by_fastavro = fastavro.schemaless_reader(
        io.BytesIO(event.payload), fastavro.parse_schema(json.loads(event.schema.schema_json)), None
    )
    assert by_avro == by_fastavro
    assert isinstance(by_avro, dict)
    return by_avro


def only_event(*changes: RecordChange, objects: dict[str, schema.ObjectDef] = OBJECTS) -> dict[str, Any]:
    (event,) = cdc.change_events(transaction(*changes), objects)
    return decode(event)


def test_create_carries_populated_fields_and_empty_changed_fields() -> None:
    decoded = only_event(
        RecordChange(
            "Account",
            "CREATE",
            (ACCOUNT_ID,),
            {
                "Name": "Acme",
                "NumberOfEmployees": 12,
                "AnnualRevenue": 1500,
                "CreatedDate": "2024-05-01T12:00:00.000+0000",
                "BillingCity": "Paris",
                "BillingLatitude": 48.85,
                "Id": ACCOUNT_ID,
                "SystemModstamp": "2024-05-01T12:00:00.000+0000",
            },
        )
    )

    header = decoded["ChangeEventHeader"]
    assert header == {
        "entityName": "Account",
        "recordIds": [ACCOUNT_ID],
        "changeType": "CREATE",
        "changeOrigin": "com/salesforce/api/rest/62.0;client=SalesforceListener",
        "transactionKey": "000046c7-a642-11e2-c29b-229c6786473e",
        "sequenceNumber": 1,
        "commitTimestamp": 1_696_444_513_000,
        "commitNumber": 11_657_372_702_432,
        "commitUser": "00558000000yFyDAAU",
        "nulledFields": [],
        "diffFields": [],
        "changedFields": [],
    }
    assert decoded["Name"] == "Acme"
    assert decoded["NumberOfEmployees"] == 12
    assert decoded["AnnualRevenue"] == 1500.0
    assert decoded["CreatedDate"] == 1_714_564_800_000
    assert decoded["BillingAddress"] == {
        "Street": None,
        "City": "Paris",
        "State": None,
        "PostalCode": None,
        "Country": None,
        "Latitude": 48.85,
        "Longitude": None,
    }
    assert decoded["ShippingAddress"] is None
    assert decoded["Phone"] is None


def test_update_carries_only_changed_values_and_their_bitmaps() -> None:
    decoded = only_event(
        RecordChange(
            "Account",
            "UPDATE",
            (ACCOUNT_ID,),
            {"BillingCity": "Lyon", "BillingState": None, "Phone": None, "LastModifiedDate": "2024-05-02T08:30:00Z"},
            changed_fields=("BillingCity", "LastModifiedDate"),
            nulled_fields=("BillingState", "Phone"),
        )
    )

    header = decoded["ChangeEventHeader"]
    schema_json = cdc.change_event_schema(schema.ACCOUNT).schema_json
    assert cdc.expand_bitmap(schema_json, header["changedFields"]) == [
        "LastModifiedDate",
        "Phone",
        "BillingAddress.City",
        "BillingAddress.State",
    ]
    assert cdc.expand_bitmap(schema_json, header["nulledFields"]) == ["Phone", "BillingAddress.State"]
    assert header["diffFields"] == []
    assert decoded["LastModifiedDate"] == 1_714_638_600_000
    assert decoded["BillingAddress"]["City"] == "Lyon"
    assert decoded["BillingAddress"]["State"] is None
    unchanged = {
        k: v for k, v in decoded.items() if k not in {"ChangeEventHeader", "LastModifiedDate", "BillingAddress"}
    }
    assert set(unchanged.values()) == {None}


def test_update_always_lists_last_modified_date() -> None:
    decoded = only_event(RecordChange("Account", "UPDATE", (ACCOUNT_ID,), {"Name": "New"}, changed_fields=("Name",)))

    names = cdc.expand_bitmap(
        cdc.change_event_schema(schema.ACCOUNT).schema_json, decoded["ChangeEventHeader"]["changedFields"]
    )
    assert names == ["LastModifiedDate", "Name"]


@pytest.mark.parametrize("change_type", ["DELETE", "UNDELETE"])
def test_delete_and_undelete(change_type: ChangeType) -> None:
    values = {"Name": "Acme"}

    decoded = only_event(RecordChange("Account", change_type, (ACCOUNT_ID,), values))

    assert decoded["ChangeEventHeader"]["changeType"] == change_type
    assert decoded["ChangeEventHeader"]["changedFields"] == []
    # DELETE carries only the header; UNDELETE every populated field, like CREATE.
    assert decoded["Name"] == (None if change_type == "DELETE" else "Acme")


def test_contact_name_and_dates() -> None:
    decoded = only_event(
        RecordChange(
            "Contact",
            "CREATE",
            ("0035g00000ABCDEAAA",),
            {"FirstName": "Ann", "LastName": "Lee", "Name": "Ann Lee", "Birthdate": "1990-02-03"},
        )
    )

    assert decoded["Name"] == {"Salutation": None, "FirstName": "Ann", "LastName": "Lee"}
    assert decoded["Birthdate"] == 7338  # days from 1970-01-01


def test_sequence_numbers_follow_positions_and_skip_objects_without_cdc() -> None:
    objects = {**OBJECTS, "Case": replace(schema.CASE, cdc_enabled=False)}
    changes = (
        RecordChange("Account", "CREATE", ("0015g0000000001AAA",), {"Name": "A"}),
        RecordChange("Case", "CREATE", ("5005g0000000001AAA",), {"Subject": "S"}),
        RecordChange("Unknown__c", "CREATE", ("a015g0000000001AAA",), {}),
        RecordChange("Contact", "CREATE", ("0035g0000000001AAA",), {"LastName": "L"}),
    )

    events = cdc.change_events(transaction(*changes), objects)

    headers = [decode(e)["ChangeEventHeader"] for e in events]
    assert [(h["entityName"], h["sequenceNumber"]) for h in headers] == [("Account", 1), ("Contact", 4)]
    assert {h["transactionKey"] for h in headers} == {"000046c7-a642-11e2-c29b-229c6786473e"}
    assert events[0].channels == ("/data/ChangeEvents", "/data/AccountChangeEvent")
    assert events[1].channels == ("/data/ChangeEvents", "/data/ContactChangeEvent")
    assert len({e.event_id for e in events}) == 2


def test_merged_change_keeps_all_record_ids() -> None:
    ids = ("0015g0000000001AAA", "0015g0000000002AAA")
    decoded = only_event(RecordChange("Account", "UPDATE", ids, {"Type": "Partner"}, changed_fields=("Type",)))
    assert decoded["ChangeEventHeader"]["recordIds"] == list(ids)


@pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"])
def test_gap_events_are_header_only(change_type: ChangeType) -> None:
    (event,) = cdc.change_events(
        transaction(
            RecordChange("Account", "CREATE", ("0015g0000000009AAA",), {"Name": "first"}),
            RecordChange("Account", change_type, (ACCOUNT_ID,), {"Name": "ignored"}, changed_fields=("Name",)),
        ),
        OBJECTS,
    )[1:]

    decoded = decode(event)

    header = decoded["ChangeEventHeader"]
    assert header["changeType"] == change_type
    assert header["sequenceNumber"] == 1
    assert header["recordIds"] == ([] if change_type == "GAP_OVERFLOW" else [ACCOUNT_ID])
    assert header["changedFields"] == header["nulledFields"] == []
    assert all(v is None for k, v in decoded.items() if k != "ChangeEventHeader")


TEXT = st.text(max_size=40)
ACCOUNT_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "Name": TEXT,
        "Description": TEXT,
        "NumberOfEmployees": st.integers(-(2**31), 2**31 - 1),
        "AnnualRevenue": st.floats(allow_nan=False, allow_infinity=False),
        "BillingStreet": TEXT,
        "BillingLatitude": st.floats(allow_nan=False, allow_infinity=False),
        "ShippingCountry": TEXT,
        "CreatedDate": st.integers(0, 2**45),
    },
)


@given(ACCOUNT_VALUES, st.integers(0, 2**62))
def test_hand_written_encoder_matches_fastavro(values: dict[str, Any], commit_number: int) -> None:
    change = RecordChange("Account", "CREATE", (ACCOUNT_ID,), values)
    event_schema = cdc.change_event_schema(schema.ACCOUNT)
    tx = replace(transaction(change), commit_number=commit_number)

    payload = cdc.encode_change(event_schema, tx, change, 1)

    decoded = event_schema.decode(payload)
    assert event_schema.encode(decoded) == payload
    for name, value in values.items():
        slot = event_schema.slots[name]
        if slot.child < 0:
            assert decoded[name] == value
        else:
            compound = event_schema.compounds[slot.top]
            assert decoded[compound.name][compound.components[slot.child][0]] == value
    assert decoded["ChangeEventHeader"]["commitNumber"] == commit_number


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999)))
@example(datetime(2515, 1, 1, 0, 0, 0, 51_000))  # seconds as a float times 1000 made it ...050
def test_a_datetime_is_carried_to_the_exact_millisecond_in_every_year(moment: datetime) -> None:
    ms = (moment.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)

    assert cdc.to_avro_value("datetime", format_datetime(ms)) == ms
