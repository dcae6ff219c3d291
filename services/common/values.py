"""Field values in Python terms, and their protobuf form (``duplex.change.v1.FieldValue``).

Every service reasons about plain, hashable Python values; protobuf stops at the edges.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from duplex.change.v1 import value_pb2

# Multi-values are tuples so that values are hashable and comparable.
Value = None | str | int | Decimal | float | bool | date | datetime | tuple[str, ...]


class Reference(str):
    """A record id on one side, kept apart from plain text so that mapping can translate it."""

    __slots__ = ()


def to_value(field_value: value_pb2.FieldValue) -> Value:
    """The Python value of a FieldValue (an unset FieldValue is null)."""
    kind = field_value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "string_value":
        return field_value.string_value
    if kind == "int_value":
        return field_value.int_value
    if kind == "decimal_value":
        try:
            return Decimal(field_value.decimal_value)
        except InvalidOperation as exc:
            msg = f"not a decimal: {field_value.decimal_value!r}"
            raise ValueError(msg) from exc
    if kind == "double_value":
        return field_value.double_value
    if kind == "bool_value":
        return field_value.bool_value
    if kind == "date_value":
        d = field_value.date_value
        return date(d.year, d.month, d.day)
    if kind == "datetime_value":
        return field_value.datetime_value.ToDatetime(tzinfo=UTC)
    if kind == "reference_value":
        return Reference(field_value.reference_value)
    return tuple(field_value.multi_value.values)


def to_field_value(value: Value) -> value_pb2.FieldValue:
    """The FieldValue of a Python value. Booleans are checked before ints (bool is an int)."""
    if value is None:
        return value_pb2.FieldValue(null_value=True)
    if isinstance(value, bool):
        return value_pb2.FieldValue(bool_value=value)
    if isinstance(value, Reference):
        return value_pb2.FieldValue(reference_value=str(value))
    if isinstance(value, str):
        return value_pb2.FieldValue(string_value=value)
    if isinstance(value, int):
        return value_pb2.FieldValue(int_value=value)
    if isinstance(value, Decimal):
        return value_pb2.FieldValue(decimal_value=str(value))
    if isinstance(value, float):
        return value_pb2.FieldValue(double_value=value)
    if isinstance(value, datetime):
        result = value_pb2.FieldValue()
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        result.datetime_value.FromDatetime(aware.astimezone(UTC))
        return result
    if isinstance(value, date):
        return value_pb2.FieldValue(date_value=value_pb2.Date(year=value.year, month=value.month, day=value.day))
    return value_pb2.FieldValue(multi_value=value_pb2.MultiValue(values=list(value)))


def is_blank(value: Value) -> bool:
    """Null, an empty or whitespace-only string, or an empty multi-value."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, tuple) and not value


def same_value(a: Value, b: Value) -> bool:
    """Equal as field values: all blanks are equal; decimals compare exactly; types must match."""
    if is_blank(a) and is_blank(b):
        return True
    return type(a) is type(b) and a == b
