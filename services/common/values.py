"""Field values in Python terms.

Every service reasons about plain, hashable Python values; their protobuf form
(``duplex.change.v1.FieldValue``) is translated in :mod:`services.common.contract`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

# Multi-values are tuples so that values are hashable and comparable.
Value = None | str | int | Decimal | float | bool | date | datetime | tuple[str, ...]


class Reference(str):
    """A record id on one side, kept apart from plain text so that mapping can translate it."""

    __slots__ = ()


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


# Duplex's events (and the app contract) carry ints as int64.
INT64 = range(-(2**63), 2**63)


def int64(number: int | Decimal) -> int:
    """``number`` as an int64 (a fraction truncated); ValueError when it is not finite or out of
    range, decided before ``int()`` expands an exponent such as 1e40000000 (which takes hours)."""
    if isinstance(number, Decimal):
        # Twenty digits or more (10**19 and up) are beyond 2**63 anyway.
        if not number.is_finite() or number.adjusted() >= 19:
            raise ValueError(f"not a number within int64: {number}")
        number = int(number)
    if number not in INT64:
        raise ValueError(f"{number} is outside int64")
    return number
