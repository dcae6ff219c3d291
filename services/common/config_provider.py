"""Tenant configuration as every service reads it: one provider, two questions.

* :meth:`TenantConfigs.current`: the tenant's newest configuration, at most ``max_staleness``
  seconds behind the database. Parsing a configuration costs milliseconds, checking its version
  one index lookup, so after the staleness window only the version is re-read, and the document
  only when the version moved.
* :meth:`TenantConfigs.at_version`: a given version. A version never changes once applied, so
  these are kept (the least recently used dropped past ``versions``) and never re-read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.common.tenant_config import QueryConnection, StoredConfig, TenantNotFoundError, fetch_config

_CURRENT_VERSION = "SELECT max(version) FROM config_versions WHERE tenant_id = $1"


@dataclass(frozen=True)
class _Checked:
    stored: StoredConfig
    checked_at: float


class TenantConfigs:
    """Cached tenant configurations for one process (see the module doc)."""

    def __init__(
        self, max_staleness: float, *, versions: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_staleness = max_staleness
        self._size = versions
        self._clock = clock
        self._current: dict[str, _Checked] = {}
        self._versions: OrderedDict[tuple[str, int], StoredConfig] = OrderedDict()

    async def current(self, conn: QueryConnection, tenant_id: str) -> StoredConfig | None:
        """The tenant's newest stored configuration, or None when it has none."""
        now = self._clock()
        checked = self._current.get(tenant_id)
        if checked is not None and now - checked.checked_at < self._max_staleness:
            return checked.stored
        version = await conn.fetchval(_CURRENT_VERSION, tenant_id)
        if version is None:
            self._current.pop(tenant_id, None)
            return None
        stored = checked.stored if checked is not None and checked.stored.version == version else None
        if stored is None:
            stored = await self.at_version(conn, tenant_id, version)
            if stored is None:  # deleted in between: as if it never existed
                return None
        self._current[tenant_id] = _Checked(stored, now)
        return stored

    async def require_current(self, conn: QueryConnection, tenant_id: str) -> StoredConfig:
        """As :meth:`current`; raises :class:`TenantNotFoundError` when the tenant has none."""
        stored = await self.current(conn, tenant_id)
        if stored is None:
            raise TenantNotFoundError(tenant_id)
        return stored

    async def at_version(self, conn: QueryConnection, tenant_id: str, version: int) -> StoredConfig | None:
        """Version ``version`` of the tenant's configuration, or None when it was never stored."""
        key = (tenant_id, version)
        found = self._versions.get(key)
        if found is None:
            found = await fetch_config(conn, tenant_id, version)
            if found is None:
                return None
            self._versions[key] = found
            if len(self._versions) > self._size:
                self._versions.popitem(last=False)
        self._versions.move_to_end(key)
        return found
