"""Salesforce field values → Duplex typed values, whatever path they came by.

The same field must produce the same typed value whether it arrived in a CDC event (Avro:
datetimes as epoch ms, dates as days since 1970-01-01, currency as double), in a REST/SOQL
record (JSON: ``2024-05-01T12:00:00.000+0000``, ``2024-05-01``, numbers) or in a Bulk 2.0 CSV
(text, empty = null). Otherwise consumers would see a change where there is none. The field's
type comes from describe; a field describe does not know (added since) keeps its wire type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from services.common.values import Reference, Value, int64

_EPOCH = date(1970, 1, 1)
_REFERENCE_TYPES = frozenset({"id", "reference"})
_DECIMAL_TYPES = frozenset({"currency", "percent"})
_INT_TYPES = frozenset({"int", "long"})
# Compound parents are read through their components; their own value is not a field value.
COMPOUND_TYPES = frozenset({"address", "location"})


@dataclass(frozen=True)
class FieldInfo:
    """What describe says about one field."""

    name: str
    type: str
    compound: str | None = None
    calculated: bool = False


FieldTypes = Mapping[str, FieldInfo]


def _datetime_from_text(text: str) -> datetime:
    # Salesforce writes +0000; fromisoformat in 3.11 wants +00:00.
    normalised = text.strip().replace("Z", "+00:00")
    if len(normalised) > 5 and normalised[-5] in "+-" and normalised[-3] != ":":
        normalised = normalised[:-2] + ":" + normalised[-2:]
    parsed = datetime.fromisoformat(normalised)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def datetime_from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _decimal(value: object) -> Decimal:
    try:
        # str() of a float is its shortest round-trip form, so 12.5 stays 12.5, not 12.4999…
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc


def typed(sf_type: str | None, raw: object) -> Value:
    """One value from Avro or REST JSON as the typed value for a field of ``sf_type``.

    Raises ValueError for a value Duplex cannot carry (an int beyond int64).
    """
    if raw is None:
        return None
    if sf_type in _REFERENCE_TYPES:
        return Reference(str(raw))
    if sf_type == "multipicklist":
        return tuple(part for part in str(raw).split(";") if part)
    if sf_type == "boolean":
        if isinstance(raw, str):
            return raw.strip().lower() == "true"
        return bool(raw)
    if sf_type in _INT_TYPES:
        return int64(_decimal(raw)) if isinstance(raw, str) else int64(int(raw))  # type: ignore[call-overload]
    if sf_type == "double":
        return float(raw)  # type: ignore[arg-type]
    if sf_type in _DECIMAL_TYPES:
        return _decimal(raw)
    if sf_type == "datetime":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return datetime_from_ms(int(raw))
        return _datetime_from_text(str(raw))
    if sf_type == "date":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return _EPOCH + timedelta(days=raw)
        return date.fromisoformat(str(raw)[:10])
    if sf_type is None:
        if isinstance(raw, bool | int | float | str):
            return raw
        return str(raw)
    return str(raw)


def typed_from_csv(sf_type: str | None, text: str) -> Value:
    """One Bulk 2.0 CSV cell; an empty cell is null."""
    if text == "":
        return None
    if sf_type is None:
        return text
    return typed(sf_type, text)
