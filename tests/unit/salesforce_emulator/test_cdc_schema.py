"""Avro change event and platform event schemas generated from object definitions."""

from __future__ import annotations

import json
import re
from typing import Any

import avro.schema
import fastavro
import pytest

from services.salesforce_emulator import cdc, schema

pytestmark = pytest.mark.unit


def fields_of(event_schema: cdc.EventSchema) -> dict[str, Any]:
    return {f["name"]: f for f in json.loads(event_schema.schema_json)["fields"]}


@pytest.mark.parametrize("obj", schema.STANDARD_OBJECTS, ids=lambda o: o.name)
def test_every_standard_schema_parses_in_both_avro_libraries(obj: schema.ObjectDef) -> None:
    event_schema = cdc.change_event_schema(obj)

    parsed = avro.schema.parse(event_schema.schema_json)
    assert isinstance(parsed, avro.schema.RecordSchema)
    fastavro.parse_schema(json.loads(event_schema.schema_json))

    assert parsed.fullname == f"com.sforce.eventbus.{obj.name}ChangeEvent"
    assert parsed.fields[0].name == "ChangeEventHeader"
    assert [f.name for f in parsed.fields] == list(event_schema.top_fields)


def test_header_shape() -> None:
    header = fields_of(cdc.change_event_schema(schema.ACCOUNT))["ChangeEventHeader"]["type"]

    types = {f["name"]: f["type"] for f in header["fields"]}
    assert header["name"] == "ChangeEventHeader"
    assert list(types) == [
        "entityName",
        "recordIds",
        "changeType",
        "changeOrigin",
        "transactionKey",
        "sequenceNumber",
        "commitTimestamp",
        "commitNumber",
        "commitUser",
        "nulledFields",
        "diffFields",
        "changedFields",
    ]
    assert types["changeType"]["type"] == "enum"
    assert types["changeType"]["name"] == "ChangeType"
    assert types["changeType"]["symbols"][:4] == ["CREATE", "UPDATE", "DELETE", "UNDELETE"]
    assert "GAP_OVERFLOW" in types["changeType"]["symbols"]
    assert (types["sequenceNumber"], types["commitTimestamp"], types["commitNumber"]) == ("int", "long", "long")
    for name in ("recordIds", "nulledFields", "diffFields", "changedFields"):
        assert types[name] == {"type": "array", "items": "string"}


def test_object_fields_are_nullable_with_null_default_and_typed() -> None:
    fields = fields_of(cdc.change_event_schema(schema.OPPORTUNITY))

    assert fields["Name"] == {"name": "Name", "type": ["null", "string"], "default": None}
    assert fields["CloseDate"]["type"] == ["null", "int"]  # date: days since the epoch
    assert fields["LastModifiedDate"]["type"] == ["null", "long"]  # datetime: epoch milliseconds
    assert fields["Amount"]["type"] == ["null", "double"]
    assert fields["Probability"]["type"] == ["null", "double"]
    assert all(f["type"][0] == "null" and f["default"] is None for n, f in fields.items() if n != "ChangeEventHeader")


def test_fields_change_events_leave_out() -> None:
    opportunity = fields_of(cdc.change_event_schema(schema.OPPORTUNITY))
    account = fields_of(cdc.change_event_schema(schema.ACCOUNT))

    assert {"Id", "IsDeleted", "SystemModstamp"}.isdisjoint(account)
    assert "IsClosed" not in opportunity  # a formula
    assert "BillingCity" not in account  # only inside BillingAddress


def test_address_compound_is_a_nested_record_defined_once() -> None:
    fields = fields_of(cdc.change_event_schema(schema.ACCOUNT))

    billing = fields["BillingAddress"]["type"]
    assert billing[0] == "null"
    assert billing[1]["type"] == "record"
    assert billing[1]["name"] == "Address"
    assert [f["name"] for f in billing[1]["fields"]] == [
        "Street",
        "City",
        "State",
        "PostalCode",
        "Country",
        "Latitude",
        "Longitude",
    ]
    assert billing[1]["fields"][5]["type"] == ["null", "double"]
    # Avro forbids redefining a name: the second address refers to the first by name.
    assert fields["ShippingAddress"]["type"] == ["null", "Address"]
    assert list(fields).index("BillingAddress") < list(fields).index("ShippingAddress")


def test_person_name_compound_sits_where_name_is() -> None:
    event_schema = cdc.change_event_schema(schema.CONTACT)
    fields = fields_of(event_schema)

    name = fields["Name"]["type"][1]
    assert name["name"] == "Name"
    assert [f["name"] for f in name["fields"]] == ["Salutation", "FirstName", "LastName"]
    assert {"FirstName", "LastName", "Salutation"}.isdisjoint(fields)
    assert event_schema.top_fields.index("Name") < event_schema.top_fields.index("AccountId")


def test_custom_object_channel_name() -> None:
    employee = schema.custom_object("Employee__c", "a01", "Employee", [schema.FieldDef("Level__c", "int", custom=True)])

    event_schema = cdc.change_event_schema(employee)

    assert event_schema.event_name == "Employee__ChangeEvent"
    assert event_schema.channel == "/data/Employee__ChangeEvent"
    assert fields_of(event_schema)["Level__c"]["type"] == ["null", "int"]


def test_schema_id_is_a_stable_22_character_fingerprint() -> None:
    first = cdc.build_change_event_schema(schema.ACCOUNT)
    again = cdc.build_change_event_schema(schema.ACCOUNT)
    extended = cdc.build_change_event_schema(
        schema.ACCOUNT.with_fields([schema.FieldDef("Tier__c", "string", custom=True)])
    )

    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", first.schema_id)
    assert first.schema_id == again.schema_id
    assert extended.schema_id != first.schema_id
    assert cdc.schema_id_of(json.loads(first.schema_json)) == first.schema_id


def test_platform_event_schema_matches_salesforce_shape() -> None:
    event = cdc.platform_event_def(
        "Order__e", [schema.FieldDef("Weight__c", "double", custom=True), schema.FieldDef("Ref__c", "string")]
    )

    event_schema = cdc.platform_event_schema(event)

    parsed = json.loads(event_schema.schema_json)
    assert (parsed["name"], parsed["namespace"]) == ("Order__e", "com.sforce.eventbus")
    assert parsed["fields"] == [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
        {"name": "Weight__c", "type": ["null", "double"], "default": None},
        {"name": "Ref__c", "type": ["null", "string"], "default": None},
    ]
    avro.schema.parse(event_schema.schema_json)
    with pytest.raises(ValueError, match="__e"):
        cdc.platform_event_def("Order__c", [])
