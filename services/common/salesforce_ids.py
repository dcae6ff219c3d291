"""Salesforce record ids: 15 case-sensitive base-62 characters plus a 3-character case-safe suffix."""

from __future__ import annotations

import re

_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SHAPE = re.compile(r"^[0-9A-Za-z]{15}([0-9A-Z]{3})?$")


def checksum(id15: str) -> str:
    """The 3-character suffix: one character per 5-character chunk, from its uppercase positions."""
    out = []
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        flags = sum(1 << j for j, ch in enumerate(chunk) if "A" <= ch <= "Z")
        out.append(_SUFFIX[flags])
    return "".join(out)


def to18(record_id: str) -> str:
    """An 18-character id from a 15- or 18-character one."""
    return record_id if len(record_id) == 18 else record_id + checksum(record_id)


def is_valid(record_id: str) -> bool:
    """Well-formed: 15 characters, or 18 whose suffix matches."""
    if not _SHAPE.match(record_id):
        return False
    return len(record_id) == 15 or checksum(record_id[:15]) == record_id[15:]


def same(a: str, b: str) -> bool:
    """Whether two ids (15 or 18 characters) name the same record."""
    return a[:15] == b[:15]
