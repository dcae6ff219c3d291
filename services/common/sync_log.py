"""Appending to the sync log (``deploy/sql/0002_sync_log.sql``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Executor(Protocol):
    """What is needed of an asyncpg Connection or Pool."""

    async def execute(self, query: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Entry:
    """One row of the sync log, before the service that writes it signs it."""

    tenant_id: str
    event: str
    link_id: str | None = None
    record_id: str | None = None
    code: str | None = None
    message: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class SyncLog:
    """The sync log as one service writes it: every row signed with the service's name."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def record(self, db: Executor, entry: Entry) -> None:
        """Append ``entry`` (inside the caller's transaction when it must commit with other state)."""
        await record(
            db,
            tenant_id=entry.tenant_id,
            service=self._service,
            event=entry.event,
            link_id=entry.link_id,
            record_id=entry.record_id,
            code=entry.code,
            message=entry.message,
            detail=dict(entry.detail),
        )


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
