"""The writer's PostgreSQL state: the highest version applied per link
(``deploy/sql/0011_writer_applied_versions.sql``; the rules are in :mod:`services.writer.versions`)
and the parked commands (:mod:`services.writer.parking`)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence

from services.common import sync_log
from services.common.db import Pool
from services.writer.commands import Delivery
from services.writer.offsets import Partition
from services.writer.parking import ParkedCommand, Reason


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


class PostgresParkStore:
    """The parked commands (``deploy/sql/0012_writer_parked_commands.sql``; :mod:`services.writer.parking`)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def park(self, deliveries: Sequence[tuple[Delivery, Reason]]) -> list[int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "INSERT INTO writer_parked_commands"
                " (tenant_id, topic, kafka_partition, kafka_offset, record_key, headers, timestamp_ms, command, reason)"
                " SELECT t, tp, p, o, k, h, ts, c, why FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[],"
                " $5::bytea[], $6::jsonb[], $7::bigint[], $8::bytea[], $9::text[])"
                " WITH ORDINALITY AS r(t, tp, p, o, k, h, ts, c, why, n) ORDER BY n RETURNING id",
                [d.tenant_id for d, _ in deliveries],
                [d.partition[0] for d, _ in deliveries],
                [d.partition[1] for d, _ in deliveries],
                [d.offset for d, _ in deliveries],
                [d.key for d, _ in deliveries],
                [json.dumps([[name, value.hex()] for name, value in d.headers]) for d, _ in deliveries],
                [d.timestamp_ms for d, _ in deliveries],
                [d.value for d, _ in deliveries],
                [reason for _, reason in deliveries],
            )
        # The serial ids are drawn in the ORDER BY's order, so ascending ids are the input's order.
        return sorted(row["id"] for row in rows)

    async def load(self, tenant_id: str, partition: Partition, after: int, limit: int) -> list[ParkedCommand]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, topic, kafka_partition, kafka_offset, record_key, headers, timestamp_ms, command"
                " FROM writer_parked_commands"
                " WHERE topic = $1 AND kafka_partition = $2 AND tenant_id = $3 AND id > $4 ORDER BY id LIMIT $5",
                partition[0],
                partition[1],
                tenant_id,
                after,
                limit,
            )
        return [
            ParkedCommand(
                id=row["id"],
                tenant_id=tenant_id,
                partition=(row["topic"], row["kafka_partition"]),
                offset=row["kafka_offset"],
                key=row["record_key"],
                headers=tuple((name, bytes.fromhex(value)) for name, value in json.loads(row["headers"])),
                timestamp_ms=row["timestamp_ms"],
                command=row["command"],
            )
            for row in rows
        ]

    async def unpark(self, park_ids: Collection[int]) -> None:
        if not park_ids:
            return
        async with self._pool.acquire() as conn:
            await unpark(conn, park_ids)

    async def parked_tenants(self, partitions: Collection[Partition]) -> dict[str, set[Partition]]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT tenant_id, topic, kafka_partition FROM writer_parked_commands"
                " WHERE (topic, kafka_partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                [t for t, _ in partitions],
                [p for _, p in partitions],
            )
        tenants: dict[str, set[Partition]] = {}
        for row in rows:
            tenants.setdefault(row["tenant_id"], set()).add((row["topic"], row["kafka_partition"]))
        return tenants


async def unpark(db: sync_log.Executor, park_ids: Collection[int]) -> None:
    """Delete the park rows of commands whose every outcome is durable."""
    if park_ids:
        await db.execute("DELETE FROM writer_parked_commands WHERE id = ANY($1::bigint[])", list(park_ids))
