"""cdc-ingest's Postgres state (``deploy/sql/0004_cdc_ingest.sql``): checkpoints, cursors,
backfills, leases, and the sync log.

Every write of progress is *fenced* by the tenant's lease: it only lands while this replica holds
an unexpired lease on the tenant. A replica that lost its lease (paused, partitioned) and carries
on for a moment may still publish duplicates, which are harmless, but can never move a checkpoint
that the tenant's new owner relies on; it learns of the loss from :class:`LeaseLostError`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.cdc_ingest.cursor import Cursor
from services.common import jobs, sync_log
from services.common.value_codec import decode_value
from services.common.values import Value

SERVICE = "cdc-ingest"

log = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """This replica no longer holds the tenant's lease; stop serving the tenant."""


@dataclass(frozen=True)
class Checkpoint:
    replay_id: bytes
    commit_time: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Backfill:
    tenant_id: str
    entity: str
    status: str
    method: str
    job_id: str | None
    locator: str | None
    cursor: Cursor | None
    emitted: int
    started_at: datetime
    # Salesforce's count when reading began (None while only requested).
    estimated: int | None = None


_FENCE = "EXISTS (SELECT 1 FROM tenant_leases l WHERE l.tenant_id = $1 AND l.holder = $2 AND l.expires_at > now())"


class Store:
    """State of every tenant this replica serves. ``holder`` is this replica's lease-holder id."""

    def __init__(self, pool: asyncpg.Pool, holder: str) -> None:
        self.pool = pool
        self.holder = holder

    async def _fenced(self, tenant_id: str, query: str, *args: Any) -> None:
        status = await self.pool.execute(query, tenant_id, self.holder, *args)
        if status.endswith(" 0"):
            raise LeaseLostError(f"lease on tenant {tenant_id} lost")

    # --- replay checkpoints ---------------------------------------------------------------------

    async def checkpoint(self, tenant_id: str, channel: str) -> Checkpoint | None:
        row = await self.pool.fetchrow(
            "SELECT replay_id, commit_time, updated_at FROM replay_checkpoints WHERE tenant_id = $1 AND channel = $2",
            tenant_id,
            channel,
        )
        return Checkpoint(bytes(row["replay_id"]), row["commit_time"], row["updated_at"]) if row else None

    async def save_checkpoint(
        self, tenant_id: str, channel: str, replay_id: bytes, commit_time: datetime | None
    ) -> None:
        """Only call once every event up to ``replay_id`` is acknowledged by Kafka."""
        await self._fenced(
            tenant_id,
            "INSERT INTO replay_checkpoints (tenant_id, channel, replay_id, commit_time, updated_at)"
            f" SELECT $1, $3::text, $4::bytea, $5::timestamptz, now() WHERE {_FENCE}"
            " ON CONFLICT (tenant_id, channel) DO UPDATE SET replay_id = EXCLUDED.replay_id,"
            " commit_time = COALESCE(EXCLUDED.commit_time, replay_checkpoints.commit_time), updated_at = now()",
            channel,
            replay_id,
            commit_time,
        )

    # --- poll cursors ----------------------------------------------------------------------------

    async def poll_cursor(self, tenant_id: str, entity: str) -> Cursor | None:
        row = await self.pool.fetchrow(
            "SELECT modstamp, record_id FROM poll_cursors WHERE tenant_id = $1 AND object = $2", tenant_id, entity
        )
        return Cursor(row["modstamp"], row["record_id"]) if row else None

    async def save_poll_cursor(self, tenant_id: str, entity: str, cursor: Cursor) -> None:
        await self._fenced(
            tenant_id,
            "INSERT INTO poll_cursors (tenant_id, object, modstamp, record_id, updated_at)"
            f" SELECT $1, $3::text, $4::timestamptz, $5::text, now() WHERE {_FENCE}"
            " ON CONFLICT (tenant_id, object) DO UPDATE SET modstamp = EXCLUDED.modstamp,"
            " record_id = EXCLUDED.record_id, updated_at = now()",
            entity,
            cursor.modstamp,
            cursor.record_id,
        )

    # --- backfills -------------------------------------------------------------------------------

    async def backfill(self, tenant_id: str, entity: str) -> Backfill | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM backfills WHERE tenant_id = $1 AND object = $2", tenant_id, entity
        )
        if row is None:
            return None
        cursor = Cursor(row["cursor_modstamp"], row["cursor_id"] or "") if row["cursor_modstamp"] else None
        return Backfill(
            tenant_id,
            entity,
            row["status"],
            row["method"],
            row["job_id"],
            row["locator"],
            cursor,
            row["emitted"],
            row["started_at"],
            row["estimated"],
        )

    async def start_backfill(self, tenant_id: str, entity: str, method: str, estimated: int) -> None:
        """(Re)start a backfill from the beginning; an on-demand request replaces a finished one."""
        await self._fenced(
            tenant_id,
            "INSERT INTO backfills (tenant_id, object, status, method, estimated)"
            f" SELECT $1, $3::text, 'running', $4::text, $5::bigint WHERE {_FENCE}"
            " ON CONFLICT (tenant_id, object) DO UPDATE SET status = 'running', method = EXCLUDED.method,"
            " estimated = EXCLUDED.estimated, job_id = NULL, locator = NULL, cursor_modstamp = NULL,"
            " cursor_id = NULL, emitted = 0, started_at = now(), updated_at = now()",
            entity,
            method,
            estimated,
        )

    async def backfill_progress(
        self,
        tenant_id: str,
        entity: str,
        *,
        job_id: str | None,
        locator: str | None,
        cursor: Cursor | None,
        emitted: int,
    ) -> None:
        await self._fenced(
            tenant_id,
            "UPDATE backfills SET job_id = $4::text, locator = $5::text, cursor_modstamp = $6::timestamptz,"
            " cursor_id = $7::text, emitted = $8::bigint, updated_at = now()"
            f" WHERE tenant_id = $1 AND object = $3 AND {_FENCE}",
            entity,
            job_id,
            locator,
            cursor.modstamp if cursor else None,
            cursor.record_id if cursor else None,
            emitted,
        )

    async def count_backfill(self, tenant_id: str, entity: str, method: str, estimated: int) -> None:
        """Set the method and record count of a running backfill that has not read anything yet."""
        await self._fenced(
            tenant_id,
            "UPDATE backfills SET method = $4::text, estimated = $5::bigint, updated_at = now()"
            " WHERE tenant_id = $1 AND object = $3 AND status = 'running' AND job_id IS NULL"
            f" AND cursor_modstamp IS NULL AND emitted = 0 AND {_FENCE}",
            entity,
            method,
            estimated,
        )

    async def want_backfill(self, tenant_id: str, entity: str) -> None:
        """Mark a full re-read of ``entity`` as wanted, from the start: :meth:`Backfiller.backfill`
        then counts the records and chooses the method."""
        await self._fenced(
            tenant_id,
            "INSERT INTO backfills (tenant_id, object, status, method)"
            f" SELECT $1, $3::text, 'running', 'rest' WHERE {_FENCE}"
            " ON CONFLICT (tenant_id, object) DO UPDATE SET status = 'running', job_id = NULL, locator = NULL,"
            " cursor_modstamp = NULL, cursor_id = NULL, emitted = 0, estimated = NULL, started_at = now(),"
            " updated_at = now()",
            entity,
        )

    async def finish_backfill(self, tenant_id: str, entity: str) -> None:
        await self._fenced(
            tenant_id,
            "UPDATE backfills SET status = 'done', updated_at = now()"
            f" WHERE tenant_id = $1 AND object = $3 AND {_FENCE}",
            entity,
        )

    # --- jobs (services.common.jobs) ------------------------------------------------------------

    async def claim_jobs(self, tenant_id: str) -> list[jobs.Job]:
        """The tenant's requested jobs, now running here, while this replica holds its lease."""
        return await jobs.claim(self.pool, tenant_id, _FENCE, self.holder)

    # --- what Duplex holds, for a reconcile -----------------------------------------------------

    # Read-only views of the conflict-resolver's state (deploy/sql/0006_conflict_resolver.sql):
    # the Salesforce form of each field's current truth is what Duplex believes Salesforce holds.
    _LINKED = (
        " FROM link_states s WHERE s.tenant_id = $1 AND s.object_pair = $2 AND s.crm_record_id IS NOT NULL"
        " AND NOT s.crm_deleted"
    )
    # Linked records that left the pair's filter are deliberately not synced (services/mapping).
    _OUTSIDE = "EXISTS (SELECT 1 FROM outside_filter o WHERE o.tenant_id = s.tenant_id AND o.link_id = s.link_id)"

    async def linked_records(self, tenant_id: str, object_pair: str) -> set[str]:
        """The Salesforce ids of the pair's records Duplex syncs and believes live."""
        rows = await self.pool.fetch(
            f"SELECT s.crm_record_id{self._LINKED} AND NOT {self._OUTSIDE}", tenant_id, object_pair
        )
        return {row["crm_record_id"] for row in rows}

    async def held_values(
        self, tenant_id: str, object_pair: str, record_ids: list[str]
    ) -> tuple[dict[str, dict[str, Value]], set[str]]:
        """Of ``record_ids``: those Duplex syncs, each with app field -> the Salesforce form of its
        truth; and those it links but does not sync (outside the pair's filter)."""
        rows = await self.pool.fetch(
            f"SELECT s.crm_record_id, s.outside, f.field, f.state -> 'crm_form' AS crm_form FROM"
            f" (SELECT s.tenant_id, s.link_id, s.crm_record_id, {self._OUTSIDE} AS outside{self._LINKED}"
            " AND s.crm_record_id = ANY($3::text[])) s"
            " LEFT JOIN field_states f ON f.tenant_id = s.tenant_id AND f.link_id = s.link_id AND NOT s.outside",
            tenant_id,
            object_pair,
            record_ids,
        )
        held: dict[str, dict[str, Value]] = {}
        outside: set[str] = set()
        for row in rows:
            if row["outside"]:
                outside.add(row["crm_record_id"])
                continue
            values = held.setdefault(row["crm_record_id"], {})
            if row["field"] is not None:
                raw = row["crm_form"]
                values[row["field"]] = decode_value(json.loads(raw) if isinstance(raw, str) else raw)
        return held, outside

    # --- sync log ------------------------------------------------------------------------------

    async def log_event(
        self,
        tenant_id: str,
        event: str,
        *,
        message: str,
        record_id: str | None = None,
        code: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await sync_log.record(
            self.pool,
            tenant_id=tenant_id,
            service=SERVICE,
            event=event,
            record_id=record_id,
            code=code,
            message=message,
            detail=detail,
        )

    # --- leases --------------------------------------------------------------------------------

    async def config_versions(self, tenant_ids: list[str]) -> dict[str, int]:
        """Each tenant's current configuration version."""
        rows = await self.pool.fetch(
            "SELECT tenant_id, max(version) AS version FROM config_versions WHERE tenant_id = ANY($1::text[])"
            " GROUP BY tenant_id",
            tenant_ids,
        )
        return {row["tenant_id"]: row["version"] for row in rows}

    async def configured_tenants(self) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT tenant_id FROM config_versions ORDER BY tenant_id")
        return [row["tenant_id"] for row in rows]

    async def heartbeat(self, ttl_seconds: float) -> int:
        """Mark this replica alive; the number of live replicas (this one included)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO cdc_replicas (replica_id, expires_at) VALUES ($1, now() + make_interval(secs => $2))"
                " ON CONFLICT (replica_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                self.holder,
                ttl_seconds,
            )
            await conn.execute("DELETE FROM cdc_replicas WHERE expires_at < now() - interval '1 hour'")
            live: int = await conn.fetchval("SELECT count(*) FROM cdc_replicas WHERE expires_at > now()")
            return live

    async def held(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT tenant_id FROM tenant_leases WHERE holder = $1 AND expires_at > now() ORDER BY tenant_id",
            self.holder,
        )
        return [row["tenant_id"] for row in rows]

    async def renew(self, tenant_ids: list[str], ttl_seconds: float) -> list[str]:
        """Extend the leases still held; the ones renewed."""
        rows = await self.pool.fetch(
            "UPDATE tenant_leases SET expires_at = now() + make_interval(secs => $3)"
            " WHERE tenant_id = ANY($1::text[]) AND holder = $2 AND expires_at > now() RETURNING tenant_id",
            tenant_ids,
            self.holder,
            ttl_seconds,
        )
        return [row["tenant_id"] for row in rows]

    async def try_acquire(self, tenant_id: str, ttl_seconds: float) -> bool:
        """Take the tenant's lease if it is free or expired."""
        row = await self.pool.fetchrow(
            "INSERT INTO tenant_leases (tenant_id, holder, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (tenant_id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
            " WHERE tenant_leases.expires_at <= now() OR tenant_leases.holder = EXCLUDED.holder"
            " RETURNING tenant_id",
            tenant_id,
            self.holder,
            ttl_seconds,
        )
        return row is not None

    async def release(self, tenant_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM tenant_leases WHERE tenant_id = $1 AND holder = $2", tenant_id, self.holder
        )
