"""Appending to the sync log (``deploy/sql/0002_sync_log.sql``)."""

from __future__ import annotations

import json
from typing import Any, Protocol


class Executor(Protocol):
    """What is needed of an asyncpg Connection or Pool."""

    async def execute(self, query: str, *args: Any) -> Any: ...


async def record(
    db: Executor,
    *,
    tenant_id: str,
    service: str,
    event: str,
    link_id: str | None = None,
    record_id: str | None = None,
    code: str | None = None,
    message: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one row. Run it inside the caller's transaction when it must commit with other state."""
    await db.execute(
        "INSERT INTO sync_log (tenant_id, service, event, link_id, record_id, code, message, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        tenant_id,
        service,
        event,
        link_id,
        record_id,
        code,
        message,
        json.dumps(detail or {}, sort_keys=True, default=str),
    )
