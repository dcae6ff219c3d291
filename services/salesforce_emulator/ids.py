"""The emulator's record ids, issued per org (their format: :mod:`services.common.salesforce_ids`)."""

from __future__ import annotations

import itertools
import threading

from services.common.salesforce_ids import checksum, is_valid, same, to18

__all__ = ["IdFactory", "checksum", "is_valid", "same", "to18"]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


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
