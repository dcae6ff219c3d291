"""Versioned tenant configuration in PostgreSQL (tables from ``deploy/sql/0001_tenants_and_config.sql``).

Reads of a single version go through :func:`services.common.tenant_config.fetch_config`, the same
query the services use, so the admin and the services can never disagree on what "current" means.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from services.common.tenant_config import (
    StoredConfig,
    TenantConfig,
    canonical_json,
    config_sha256,
    fetch_config,
)

# Errors that mean "the database cannot be used right now", as opposed to bugs.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# A malformed DSN fails in the parser with a ValueError.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, ValueError)


class DatabaseUnavailableError(Exception):
    """The database cannot be reached or used. The message is safe to print (no credentials)."""


@dataclass(frozen=True)
class ApplyResult:
    tenant_id: str
    version: int
    changed: bool


@dataclass(frozen=True)
class TenantSummary:
    tenant_id: str
    created_at: datetime
    version: int | None
    applied_at: datetime | None
    applied_by: str | None


def describe_dsn(dsn: str) -> str:
    """host:port/database of a URL DSN, without user or password, for error messages."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured DSN"
    database = parts.path.lstrip("/")
    return f"{host}{port}/{database}" if database else f"{host}{port}"


def explain_database_error(exc: BaseException, dsn: str) -> DatabaseUnavailableError:
    where = describe_dsn(dsn)
    if isinstance(exc, asyncpg.UndefinedTableError):
        return DatabaseUnavailableError(
            f"the database at {where} has no Duplex schema ({exc}); apply the migrations in deploy/sql first"
        )
    if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError):
        # The parser's message may quote the DSN, password included.
        return DatabaseUnavailableError("invalid PostgreSQL DSN (expected postgresql://user:password@host:port/db)")
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailableError(f"cannot reach the database at {where}: timed out")
    return DatabaseUnavailableError(f"cannot reach the database at {where}: {exc}")


@asynccontextmanager
async def connect(dsn: str, connect_timeout: float) -> AsyncIterator[Any]:
    """One connection; every failure to reach or use it surfaces as :class:`DatabaseUnavailableError`."""
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except _CONNECT_ERRORS as exc:
        raise explain_database_error(exc, dsn) from None
    try:
        yield conn
    except DATABASE_ERRORS as exc:
        raise explain_database_error(exc, dsn) from None
    finally:
        await conn.close()


class ConfigStore:
    """Applies and reads tenant configuration over one asyncpg connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def apply(self, configs: Sequence[TenantConfig], actor: str) -> list[ApplyResult]:
        """Store each configuration as its tenant's next version unless it equals the current one.

        All or nothing: one transaction for the whole batch. Tenants are locked in id order, so two
        batches naming the same tenants in a different order cannot deadlock.
        """
        results: dict[str, ApplyResult] = {}
        async with self._conn.transaction():
            for config in sorted(configs, key=lambda c: c.tenant_id):
                results[config.tenant_id] = await self._apply_one(config, actor)
        return [results[c.tenant_id] for c in configs]

    async def _apply_one(self, config: TenantConfig, actor: str) -> ApplyResult:
        tenant_id = config.tenant_id
        sha = config_sha256(config)
        created = await self._conn.fetchval(
            "INSERT INTO tenants (id, created_by) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING true",
            tenant_id,
            actor,
        )
        # Serialises applies to this tenant: the next version number is read under the lock.
        await self._conn.execute("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", tenant_id)
        latest = await self._conn.fetchrow(
            "SELECT version, sha256 FROM config_versions WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            tenant_id,
        )
        if latest is not None and latest["sha256"] == sha:
            return ApplyResult(tenant_id, latest["version"], changed=False)
        version = 1 if latest is None else latest["version"] + 1
        await self._conn.execute(
            "INSERT INTO config_versions (tenant_id, version, document, sha256, applied_by)"
            " VALUES ($1, $2, $3::jsonb, $4, $5)",
            tenant_id,
            version,
            canonical_json(config),
            sha,
            actor,
        )
        if created:
            await self._audit(actor, tenant_id, "tenant.created", {})
        previous = None if latest is None else latest["version"]
        await self._audit(
            actor, tenant_id, "config.applied", {"version": version, "previousVersion": previous, "sha256": sha}
        )
        return ApplyResult(tenant_id, version, changed=True)

    async def _audit(self, actor: str, tenant_id: str, action: str, detail: dict[str, Any]) -> None:
        await self._conn.execute(
            "INSERT INTO audit_log (actor, tenant_id, action, detail) VALUES ($1, $2, $3, $4::jsonb)",
            actor,
            tenant_id,
            action,
            json.dumps(detail, sort_keys=True),
        )

    async def get(self, tenant_id: str, version: int | None = None) -> StoredConfig | None:
        return await fetch_config(self._conn, tenant_id, version)

    async def list_tenants(self) -> list[TenantSummary]:
        rows = await self._conn.fetch(
            """
            SELECT t.id, t.created_at, v.version, v.applied_at, v.applied_by
            FROM tenants t
            LEFT JOIN LATERAL (
                SELECT version, applied_at, applied_by
                FROM config_versions c
                WHERE c.tenant_id = t.id
                ORDER BY version DESC
                LIMIT 1
            ) v ON true
            ORDER BY t.id
            """
        )
        return [TenantSummary(r["id"], r["created_at"], r["version"], r["applied_at"], r["applied_by"]) for r in rows]
