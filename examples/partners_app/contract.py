"""The partner row in Duplex's public contract (``duplex.change.v1.RecordChanged``). Pure.

Each column has one contract type; values travel typed (decimals as strings, dates as dates),
so nothing has to guess a type from text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from duplex.change.v1 import record_changed_pb2 as rc
from duplex.change.v1 import value_pb2

OBJECT = "partners"
# The client id this app stamps on its own changes (Duplex stamps its own on what it sends here).
CLIENT = "partners-app"


class Kind(StrEnum):
    STRING = "string"
    DECIMAL = "decimal"
    INT = "int"
    DATE = "date"
    DATETIME = "datetime"
    BOOL = "bool"
    REFERENCE = "reference"
    MULTI = "multi"


COLUMNS: Mapping[str, Kind] = {
    "name": Kind.STRING,
    "website": Kind.STRING,
    "phone": Kind.STRING,
    "status": Kind.STRING,
    "tier": Kind.STRING,
    "industries": Kind.MULTI,
    "annual_revenue": Kind.DECIMAL,
    "employee_count": Kind.INT,
    "partner_since": Kind.DATE,
    "archived": Kind.BOOL,
    "notes": Kind.STRING,
    "parent_partner_id": Kind.REFERENCE,
    "salesforce_id": Kind.STRING,
    "crm_modified_at": Kind.DATETIME,
}

KINDS = {
    "create": rc.CHANGE_KIND_CREATE,
    "update": rc.CHANGE_KIND_UPDATE,
    "delete": rc.CHANGE_KIND_DELETE,
    # A partner's whole current state, published when Duplex asks for it again (a resend request).
    "snapshot": rc.CHANGE_KIND_SNAPSHOT,
}
# The kinds whose message carries every column, not only those changed.
WHOLE = frozenset({"create", "snapshot"})


class ContractError(ValueError):
    """An app-update this app cannot apply (unknown field, wrong type): it is skipped and logged."""


def to_field_value(kind: Kind, value: Any) -> value_pb2.FieldValue:
    if value is None:
        return value_pb2.FieldValue(null_value=True)
    if kind is Kind.STRING:
        return value_pb2.FieldValue(string_value=str(value))
    if kind is Kind.DECIMAL:
        return value_pb2.FieldValue(decimal_value=str(value))
    if kind is Kind.INT:
        return value_pb2.FieldValue(int_value=int(value))
    if kind is Kind.BOOL:
        return value_pb2.FieldValue(bool_value=bool(value))
    if kind is Kind.DATE:
        return value_pb2.FieldValue(date_value=value_pb2.Date(year=value.year, month=value.month, day=value.day))
    if kind is Kind.DATETIME:
        result = value_pb2.FieldValue()
        result.datetime_value.FromDatetime(value.astimezone(UTC))
        return result
    if kind is Kind.REFERENCE:
        return value_pb2.FieldValue(reference_value=str(value))
    return value_pb2.FieldValue(multi_value=value_pb2.MultiValue(values=list(value)))


def from_field_value(column: str, field_value: value_pb2.FieldValue) -> Any:
    """The column value of a FieldValue; raises ContractError if it does not fit the column."""
    if column not in COLUMNS:
        raise ContractError(f"unknown field {column!r}")
    kind = COLUMNS[column]
    which = field_value.WhichOneof("kind")
    if which in (None, "null_value"):
        return [] if kind is Kind.MULTI else None
    expected = {
        Kind.STRING: "string_value",
        Kind.DECIMAL: "decimal_value",
        Kind.INT: "int_value",
        Kind.BOOL: "bool_value",
        Kind.DATE: "date_value",
        Kind.DATETIME: "datetime_value",
        Kind.REFERENCE: "reference_value",
        Kind.MULTI: "multi_value",
    }[kind]
    if which != expected:
        raise ContractError(f"{column}: expected {expected}, got {which}")
    if kind is Kind.DECIMAL:
        return Decimal(field_value.decimal_value)
    if kind is Kind.DATE:
        d = field_value.date_value
        return date(d.year, d.month, d.day)
    if kind is Kind.DATETIME:
        return field_value.datetime_value.ToDatetime(tzinfo=UTC)
    if kind is Kind.MULTI:
        return list(field_value.multi_value.values)
    return getattr(field_value, expected)


def record_changed(
    *,
    tenant_id: str,
    event: str,
    record_id: str,
    kind: str,
    row: Mapping[str, Any] | None,
    changed: Sequence[str],
    committed_at: datetime,
    origin_client: str,
    link_id: str | None = None,
) -> rc.RecordChanged:
    """A RecordChanged for one committed change of a partner row."""
    message = rc.RecordChanged(
        event_id=event,
        tenant_id=tenant_id,
        origin_side=rc.SIDE_APP,
        object_type=OBJECT,
        record_id=record_id,
        kind=KINDS[kind],
        changed_fields=list(changed) if kind == "update" else [],
        origin_client=origin_client,
        external_id=link_id or "",
    )
    if row is not None:
        names = COLUMNS if kind in WHOLE else [c for c in changed if c in COLUMNS]
        for column in names:
            message.fields[column].CopyFrom(to_field_value(COLUMNS[column], row[column]))
        message.nulled_fields.extend(c for c in names if row[c] is None)
    message.origin_commit_time.FromDatetime(committed_at.astimezone(UTC))
    return message


def update_values(update: rc.RecordChanged) -> dict[str, Any]:
    """The column values an app-update sets; raises ContractError for anything that does not fit."""
    return {name: from_field_value(name, value) for name, value in update.fields.items()}
