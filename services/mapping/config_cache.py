"""Each tenant's current mapping version, cached; re-checked with one cheap query every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.tenant_config import StoredConfig, fetch_config


class Connection(Protocol):
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class _Entry:
    stored: StoredConfig
    checked_at: float


class ConfigCache:
    """Parsing a configuration costs milliseconds; checking its version costs one index lookup."""

    def __init__(self, check_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._check_seconds = check_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def current(self, conn: Connection, tenant_id: str) -> StoredConfig | None:
        """The tenant's current stored configuration, or None when it has none."""
        now = self._clock()
        entry = self._entries.get(tenant_id)
        if entry is not None and now - entry.checked_at < self._check_seconds:
            return entry.stored
        version = await conn.fetchval("SELECT max(version) FROM config_versions WHERE tenant_id = $1", tenant_id)
        if version is None:
            self._entries.pop(tenant_id, None)
            return None
        stored = entry.stored if entry is not None and entry.stored.version == version else None
        if stored is None:
            stored = await fetch_config(conn, tenant_id, version)
            if stored is None:  # deleted in between: as if it never existed
                return None
        self._entries[tenant_id] = _Entry(stored, now)
        return stored
