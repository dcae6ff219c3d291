"""Salesforce record ids: 15 case-sensitive base-62 characters plus a 3-character case-safe suffix."""

from __future__ import annotations

import itertools
import re
import threading

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
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


def _base62(n: int, width: int) -> str:
    digits = []
    for _ in range(width):
        n, r = divmod(n, 62)
        digits.append(_BASE62[r])
    if n:
        msg = "id space exhausted"
        raise OverflowError(msg)
    return "".join(reversed(digits))


class IdFactory:
    """Issues ids for one org: key prefix + 2-character pod/instance + 10 base-62 counter digits."""

    def __init__(self, instance: str = "5g", start: int = 1) -> None:
        if len(instance) != 2:
            msg = "instance must be 2 characters"
            raise ValueError(msg)
        self._instance = instance
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def next(self, key_prefix: str) -> str:
        """A new 18-character id with ``key_prefix`` (3 characters)."""
        with self._lock:
            n = next(self._counter)
        return to18(key_prefix + self._instance + _base62(n, 10))
