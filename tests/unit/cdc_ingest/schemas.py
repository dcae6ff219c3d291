"""A hand-written Account change event schema in Salesforce's shape, for the domain tests."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro

from services.cdc_ingest.event_schema import ChangeEventSchema, parse_schema

_STRINGS = {"type": "array", "items": "string"}
HEADER = {
    "type": "record",
    "name": "ChangeEventHeader",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": _STRINGS},
        {
            "name": "changeType",
            "type": {
                "type": "enum",
                "name": "ChangeType",
                "symbols": [
                    "CREATE",
                    "UPDATE",
                    "DELETE",
                    "UNDELETE",
                    "GAP_CREATE",
                    "GAP_UPDATE",
                    "GAP_DELETE",
                    "GAP_UNDELETE",
                    "GAP_OVERFLOW",
                ],
            },
        },
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": _STRINGS},
        {"name": "diffFields", "type": _STRINGS},
        {"name": "changedFields", "type": _STRINGS},
    ],
}
ADDRESS_PARTS = ["Street", "City", "State", "PostalCode", "Country"]


def _nullable(name: str, avro_type: Any) -> dict[str, Any]:
    return {"name": name, "type": ["null", avro_type], "default": None}


ADDRESS = {"type": "record", "name": "Address", "fields": [_nullable(p, "string") for p in ADDRESS_PARTS]}
# Index: 0 header, 1 Name, 2 BillingAddress, 3 Phone, 4 AnnualRevenue, 5 NumberOfEmployees,
# 6 ParentId, 7 LastModifiedDate, 8 ShippingAddress (the named type reused), 9 Founded__c,
# 10 Industries__c, 11 IsActive__c
ACCOUNT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "AccountChangeEvent",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "ChangeEventHeader", "type": HEADER},
        _nullable("Name", "string"),
        _nullable("BillingAddress", ADDRESS),
        _nullable("Phone", "string"),
        _nullable("AnnualRevenue", "double"),
        _nullable("NumberOfEmployees", "int"),
        _nullable("ParentId", "string"),
        _nullable("LastModifiedDate", "long"),
        _nullable("ShippingAddress", "Address"),
        _nullable("Founded__c", "int"),
        _nullable("Industries__c", "string"),
        _nullable("IsActive__c", "boolean"),
    ],
}


def account_schema() -> ChangeEventSchema:
    return parse_schema("acct-schema-1", json.dumps(ACCOUNT_SCHEMA))


def header(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entityName": "Account",
        "recordIds": ["001000000000001AAA"],
        "changeType": "UPDATE",
        "changeOrigin": "com/salesforce/api/rest/62.0;client=crm-ui",
        "transactionKey": "tx-1",
        "sequenceNumber": 3,
        "commitTimestamp": 1_714_564_800_123,
        "commitNumber": 42,
        "commitUser": "005000000000001AAA",
        "nulledFields": [],
        "diffFields": [],
        "changedFields": [],
    }
    return base | overrides


def encode(record: dict[str, Any]) -> bytes:
    """Avro binary of one event, with the schema's own writer (fastavro, not the emulator)."""
    full = {f["name"]: None for f in ACCOUNT_SCHEMA["fields"]} | record
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(ACCOUNT_SCHEMA), full)
    return buffer.getvalue()
