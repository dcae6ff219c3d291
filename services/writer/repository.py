"""The writer's PostgreSQL state: the highest version applied per link
(``deploy/sql/0011_writer_applied_versions.sql``; the rules are in :mod:`services.writer.versions`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from services.common import sync_log
from services.common.db import Pool


class PostgresAppliedVersions:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def applied(self, tenant_id: str, link_ids: Collection[str]) -> dict[str, int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT link_id, version FROM writer_applied_versions"
                " WHERE tenant_id = $1 AND link_id = ANY($2::text[])",
                tenant_id,
                list(link_ids),
            )
        return {row["link_id"]: row["version"] for row in rows}


async def raise_applied(db: sync_log.Executor, tenant_id: str, versions: Mapping[str, int]) -> None:
    """Record ``versions`` (link -> version) as applied; a lower version never replaces a higher one."""
    if not versions:
        return
    await db.execute(
        "INSERT INTO writer_applied_versions (tenant_id, link_id, version)"
        " SELECT $1, link_id, version FROM unnest($2::text[], $3::bigint[]) AS v(link_id, version)"
        " ON CONFLICT (tenant_id, link_id) DO UPDATE"
        " SET version = GREATEST(writer_applied_versions.version, EXCLUDED.version), applied_at = now()",
        tenant_id,
        list(versions),
        list(versions.values()),
    )
