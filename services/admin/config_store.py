"""Versioned tenant configuration in PostgreSQL (tables from ``deploy/sql/0001_tenants_and_config.sql``).

Reads of a single version go through :func:`services.common.tenant_config.fetch_config`, the same
query the services use, so the admin and the services can never disagree on what "current" means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from services.admin.audit import write_audit
from services.common.db import Connection
from services.common.tenant_config import (
    ConfigIssue,
    StoredConfig,
    TenantConfig,
    canonical_json,
    config_sha256,
    fetch_config,
)
from services.common.tenant_config.policy import SalesforcePolicy, policy_issues

# Errors that mean "the database cannot be used right now", as opposed to bugs.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# A malformed DSN fails in the parser with a ValueError.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, ValueError)


class DatabaseUnavailableError(Exception):
    """The database cannot be reached or used. The message is safe to print (no credentials)."""


class RefusedByPolicyError(Exception):
    """A stored version names secrets or hosts the deployment's policy no longer allows; ``issues`` says which."""

    def __init__(self, version: int, issues: Sequence[ConfigIssue]) -> None:
        count = len(issues)
        super().__init__(
            f"version {version} is not allowed by this deployment's policy "
            f"({count} problem{'s' if count > 1 else ''}); see errors"
        )
        self.issues = tuple(issues)


@dataclass(frozen=True)
class ApplyResult:
    tenant_id: str
    version: int
    changed: bool
    # The tenant did not exist, or had been deleted, before this apply.
    created: bool = False


@dataclass(frozen=True)
class VersionSummary:
    version: int
    sha256: str
    applied_at: datetime
    applied_by: str


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
    """Applies, reads and deletes tenant configuration over one asyncpg connection.

    Versions are written to ``config_history`` and read through the ``config_versions`` view, which
    hides deleted tenants exactly as the services see them (``deploy/sql/0008_admin_api.sql``).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def apply(
        self, configs: Sequence[TenantConfig], actor: str, request_id: str | None = None
    ) -> list[ApplyResult]:
        """Store each configuration as its tenant's next version unless it equals the current one.

        All or nothing: one transaction for the whole batch. Tenants are locked in id order, so two
        batches naming the same tenants in a different order cannot deadlock.
        """
        results: dict[str, ApplyResult] = {}
        async with self._conn.transaction():
            for config in sorted(configs, key=lambda c: c.tenant_id):
                results[config.tenant_id] = await self._apply_one(config, actor, request_id)
        return [results[c.tenant_id] for c in configs]

    async def restore(
        self,
        tenant_id: str,
        version: int,
        actor: str,
        policy: SalesforcePolicy,
        request_id: str | None = None,
    ) -> ApplyResult | None:
        """Make version ``version`` current again, as a new version; None when the tenant or version is missing.

        Restoring applies the old document anew, so it must pass today's ``policy``: a version stored
        before the policy tightened raises :class:`RefusedByPolicyError` and nothing is written.
        """
        async with self._conn.transaction():
            tenant = await self._conn.fetchrow("SELECT deleted_at FROM tenants WHERE id = $1 FOR UPDATE", tenant_id)
            if tenant is None or tenant["deleted_at"] is not None:
                return None
            stored = await fetch_config(self._conn, tenant_id, version)
            if stored is None:
                return None
            refused = policy_issues(stored.config, policy)
            if refused:
                raise RefusedByPolicyError(version, refused)
            return await self._apply_one(stored.config, actor, request_id, restored_from=version)

    async def delete(self, tenant_id: str, actor: str, request_id: str | None = None) -> int | None:
        """Offboard a tenant: every service stops seeing it; its history and audit trail stay.

        Returns the version that was current, or None when there is no such (undeleted) tenant.
        """
        async with self._conn.transaction():
            last: int | None = await self._conn.fetchval(
                "UPDATE tenants SET deleted_at = now(), deleted_by = $2 WHERE id = $1 AND deleted_at IS NULL"
                " RETURNING (SELECT max(version) FROM config_history WHERE tenant_id = $1)",
                tenant_id,
                actor,
            )
            if last is None:
                return None
            await write_audit(
                self._conn,
                actor=actor,
                tenant_id=tenant_id,
                action="tenant.deleted",
                detail={"version": last},
                request_id=request_id,
            )
        return last

    async def _apply_one(
        self, config: TenantConfig, actor: str, request_id: str | None, restored_from: int | None = None
    ) -> ApplyResult:
        tenant_id = config.tenant_id
        sha = config_sha256(config)
        created = await self._conn.fetchval(
            "INSERT INTO tenants (id, created_by) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING true",
            tenant_id,
            actor,
        )
        # Serialises applies to this tenant: the next version number is read under the lock.
        deleted_at = await self._conn.fetchval("SELECT deleted_at FROM tenants WHERE id = $1 FOR UPDATE", tenant_id)
        recreated = deleted_at is not None
        if recreated:
            await self._conn.execute("UPDATE tenants SET deleted_at = NULL, deleted_by = NULL WHERE id = $1", tenant_id)
        latest = await self._conn.fetchrow(
            "SELECT version, sha256 FROM config_history WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            tenant_id,
        )
        if latest is not None and latest["sha256"] == sha and not recreated:
            return ApplyResult(tenant_id, latest["version"], changed=False)
        # Numbering continues over a deletion: a version number never names two documents.
        version = 1 if latest is None else latest["version"] + 1
        await self._conn.execute(
            "INSERT INTO config_history (tenant_id, version, document, sha256, applied_by)"
            " VALUES ($1, $2, $3::jsonb, $4, $5)",
            tenant_id,
            version,
            canonical_json(config),
            sha,
            actor,
        )
        if created:
            await write_audit(
                self._conn, actor=actor, tenant_id=tenant_id, action="tenant.created", request_id=request_id
            )
        if recreated:
            await write_audit(
                self._conn, actor=actor, tenant_id=tenant_id, action="tenant.recreated", request_id=request_id
            )
        previous = None if latest is None or recreated else latest["version"]
        detail: dict[str, Any] = {"version": version, "previousVersion": previous, "sha256": sha}
        if restored_from is not None:
            detail["restoredFrom"] = restored_from
        await write_audit(
            self._conn,
            actor=actor,
            tenant_id=tenant_id,
            action="config.restored" if restored_from is not None else "config.applied",
            detail=detail,
            request_id=request_id,
        )
        return ApplyResult(tenant_id, version, changed=True, created=bool(created) or recreated)

    async def get(self, tenant_id: str, version: int | None = None) -> StoredConfig | None:
        return await fetch_config(self._conn, tenant_id, version)

    async def versions(self, tenant_id: str) -> list[VersionSummary]:
        """Every version of a tenant, oldest first; empty when there is no such (undeleted) tenant."""
        rows = await self._conn.fetch(
            "SELECT version, sha256, applied_at, applied_by FROM config_versions WHERE tenant_id = $1 ORDER BY version",
            tenant_id,
        )
        return [VersionSummary(r["version"], r["sha256"], r["applied_at"], r["applied_by"]) for r in rows]

    async def list_tenants(self, among: Collection[str] | None = None) -> list[TenantSummary]:
        """The tenants that are not deleted (only those in ``among`` when given), by name."""
        rows = await self._conn.fetch(
            """
            SELECT t.id, t.created_at, v.version, v.applied_at, v.applied_by
            FROM tenants t
            LEFT JOIN LATERAL (
                SELECT version, applied_at, applied_by
                FROM config_history c
                WHERE c.tenant_id = t.id
                ORDER BY version DESC
                LIMIT 1
            ) v ON true
            WHERE t.deleted_at IS NULL AND ($1::text[] IS NULL OR t.id = ANY($1::text[]))
            ORDER BY t.id
            """,
            None if among is None else sorted(among),
        )
        return [TenantSummary(r["id"], r["created_at"], r["version"], r["applied_at"], r["applied_by"]) for r in rows]
