"""The audit log: one row per change, written in the change's own transaction."""

from __future__ import annotations

import json
from typing import Any

from services.common.db import Connection


async def write_audit(
    conn: Connection,
    *,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    detail: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, tenant_id, action, detail, request_id) VALUES ($1, $2, $3, $4::jsonb, $5)",
        actor,
        tenant_id,
        action,
        json.dumps(detail or {}, sort_keys=True),
        request_id,
    )
