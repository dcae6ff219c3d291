"""Asking cdc-ingest for a backfill (``backfills`` in ``deploy/sql/0004_cdc_ingest.sql``)."""

from __future__ import annotations

from typing import Any, Protocol


class Executor(Protocol):
    async def execute(self, query: str, *args: Any) -> Any: ...


async def request_backfill(db: Executor, tenant_id: str, salesforce_object: str) -> None:
    """Mark a full re-read of one object as wanted; the replica serving the tenant starts it shortly."""
    await db.execute(
        "INSERT INTO backfills (tenant_id, object, status, method) VALUES ($1, $2, 'running', 'rest')"
        " ON CONFLICT (tenant_id, object) DO UPDATE SET status = 'running', job_id = NULL, locator = NULL,"
        " cursor_modstamp = NULL, cursor_id = NULL, emitted = 0, started_at = now(), updated_at = now()",
        tenant_id,
        salesforce_object,
    )
