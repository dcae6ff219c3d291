"""The stored form of a configuration: its canonical JSON and hash (what admin stores and ``show``
prints), and reads of stored versions, shared by admin and every service that needs a tenant's mapping."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.common.tenant_config.loading import parse_tenant_config
from services.common.tenant_config.model import TenantConfig

# ---------------------------------------------------------------------------------------------
# Canonical form: what is stored, hashed and shown


def to_document(config: TenantConfig) -> dict[str, Any]:
    """The JSON-ready document with every default made explicit (``show`` prints this)."""
    return config.model_dump(mode="json", by_alias=True, exclude_none=True)


def canonical_json(config: TenantConfig) -> str:
    # Sorted keys and fixed separators so equal configurations hash equally, whatever the input order.
    return json.dumps(to_document(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_sha256(config: TenantConfig) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading stored versions


class QueryConnection(Protocol):
    """What is needed of an asyncpg ``Connection`` or ``Pool``."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class StoredConfig:
    tenant_id: str
    version: int
    sha256: str
    applied_at: datetime
    applied_by: str
    config: TenantConfig


class TenantNotFoundError(LookupError):
    def __init__(self, tenant_id: str, version: int | None = None) -> None:
        self.tenant_id = tenant_id
        self.version = version
        what = f"tenant '{tenant_id}'" if version is None else f"version {version} of tenant '{tenant_id}'"
        super().__init__(f"{what} has no stored configuration")


_SELECT_VERSION = """
    SELECT tenant_id, version, sha256, applied_at, applied_by, document
    FROM config_versions
    WHERE tenant_id = $1 AND ($2::integer IS NULL OR version = $2)
    ORDER BY version DESC
    LIMIT 1
"""


async def fetch_config(conn: QueryConnection, tenant_id: str, version: int | None = None) -> StoredConfig | None:
    """A stored version (the latest when ``version`` is None), or None when there is none."""
    row = await conn.fetchrow(_SELECT_VERSION, tenant_id, version)
    if row is None:
        return None
    document = row["document"]
    # Works whether or not the connection has a jsonb codec registered.
    if isinstance(document, str):
        document = json.loads(document)
    return StoredConfig(
        tenant_id=row["tenant_id"],
        version=row["version"],
        sha256=row["sha256"],
        applied_at=row["applied_at"],
        applied_by=row["applied_by"],
        config=parse_tenant_config(document),
    )


async def load_current(conn: QueryConnection, tenant_id: str) -> TenantConfig:
    """The tenant's current configuration; raises :class:`TenantNotFoundError` if it has none."""
    stored = await fetch_config(conn, tenant_id)
    if stored is None:
        raise TenantNotFoundError(tenant_id)
    return stored.config
