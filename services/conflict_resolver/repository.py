"""The resolver's state (:mod:`store`) in its tables (``deploy/sql/0006_conflict_resolver.sql``).

Every method runs inside the batch's transaction. Claiming an event id comes first: a second
delivery of an event already applied finds its row and changes nothing; a concurrent one waits
on the row's lock until the first commits (then skips) or rolls back (then applies).

:class:`BatchRepository` handles a whole batch of events, tenants mixed, with one statement per
step instead of one per event. Link rows are always locked in (tenant, link) order, so that two
batches (mapped changes and outcomes, or two replicas during a rebalance) never wait on each
other in a cycle. :class:`ResolverRepository` reads and writes one tenant's links one at a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from services.common.config_provider import TenantConfigs
from services.common.db import Connection, Pool
from services.common.pauses import EVERY_PAIR, Way
from services.common.tenant_config import StoredConfig
from services.common.value_codec import decode_value, encode_value
from services.common.values import Value
from services.conflict_resolver.holding import paused_both_ways
from services.conflict_resolver.resolve import FieldRecord, LinkState
from services.conflict_resolver.state_codec import decode_record, encode_record
from services.conflict_resolver.store import (
    EventKey,
    FieldKey,
    HeldInput,
    HeldOutput,
    Holds,
    LinkKey,
    LogRow,
    PairKey,
    SentWrite,
    holds_of,
)

_LINK_COLUMNS = "link_id, object_pair, external_id, app_record_id, crm_record_id, version, app_deleted, crm_deleted"


def _json(data: Any) -> Any:
    # Without a registered jsonb codec asyncpg hands jsonb over as text.
    return json.loads(data) if isinstance(data, str) else data


def _link(row: Any) -> LinkState:
    return LinkState(
        link_id=row["link_id"],
        object_pair=row["object_pair"],
        external_id=row["external_id"],
        app_record_id=row["app_record_id"],
        crm_record_id=row["crm_record_id"],
        version=row["version"],
        app_deleted=row["app_deleted"],
        crm_deleted=row["crm_deleted"],
    )


class ResolverRepository:
    """One tenant's links in the caller's transaction (a :class:`~store.TenantLinks`)."""

    def __init__(self, conn: Connection, tenant_id: str) -> None:
        self._conn = conn
        self._tenant = tenant_id

    async def claim(self, event_id: str) -> bool:
        """Record ``event_id`` as applied; False when it already was."""
        row = await self._conn.fetchrow(
            "INSERT INTO processed_events (tenant_id, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            self._tenant,
            event_id,
        )
        return row is not None

    async def lock_link(self, link_id: str) -> LinkState | None:
        row = await self._conn.fetchrow(
            f"SELECT {_LINK_COLUMNS} FROM link_states WHERE tenant_id = $1 AND link_id = $2 FOR UPDATE",
            self._tenant,
            link_id,
        )
        return None if row is None else _link(row)

    async def fields(self, link_id: str) -> dict[str, FieldRecord]:
        rows = await self._conn.fetch(
            "SELECT field, state FROM field_states WHERE tenant_id = $1 AND link_id = $2", self._tenant, link_id
        )
        return {row["field"]: decode_record(_json(row["state"])) for row in rows}

    async def save(self, link: LinkState, fields: Mapping[str, FieldRecord]) -> None:
        await self._conn.execute(
            "UPDATE link_states SET object_pair = $3, app_record_id = $4, crm_record_id = $5, version = $6,"
            " app_deleted = $7, crm_deleted = $8, updated_at = now() WHERE tenant_id = $1 AND link_id = $2",
            self._tenant,
            link.link_id,
            link.object_pair,
            link.app_record_id,
            link.crm_record_id,
            link.version,
            link.app_deleted,
            link.crm_deleted,
        )
        if fields:
            await self._conn.executemany(
                "INSERT INTO field_states (tenant_id, link_id, field, state) VALUES ($1, $2, $3, $4::jsonb)"
                " ON CONFLICT (tenant_id, link_id, field) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                [
                    (self._tenant, link.link_id, name, json.dumps(encode_record(record)))
                    for name, record in fields.items()
                ],
            )

    async def record_sent(self, link_id: str, version: int, operation: str, pending: Mapping[str, Value]) -> None:
        await self._conn.execute(
            "INSERT INTO sent_writes (tenant_id, link_id, version, operation, fields)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT DO NOTHING",
            self._tenant,
            link_id,
            version,
            operation,
            json.dumps({name: encode_value(value) for name, value in pending.items()}),
        )

    async def sent(self, link_id: str, version: int) -> tuple[str, dict[str, Value]] | None:
        row = await self._conn.fetchrow(
            "SELECT operation, fields FROM sent_writes WHERE tenant_id = $1 AND link_id = $2 AND version = $3",
            self._tenant,
            link_id,
            version,
        )
        if row is None:
            return None
        return row["operation"], {name: decode_value(v) for name, v in _json(row["fields"]).items()}

    async def store_crm_id(self, link: LinkState, record_id: str) -> None:
        """The writer created the Salesforce record: remember its id here and on mapping's link.

        mapping then resolves references to the record at once instead of waiting for its CDC
        event; only an empty id is filled in, so a later re-point by mapping is never undone.
        """
        await self._conn.execute(
            "UPDATE links SET crm_record_id = $3, updated_at = now()"
            " WHERE tenant_id = $1 AND link_id = $2 AND crm_record_id IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM links o WHERE o.tenant_id = $1 AND o.object_pair = links.object_pair"
            " AND o.crm_record_id = $3)",
            self._tenant,
            link.link_id,
            record_id,
        )


class BatchRepository:
    """The resolver's tables for one batch's transaction (a :class:`~store.Transaction`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def tenant(self, tenant_id: str) -> ResolverRepository:
        return ResolverRepository(self._conn, tenant_id)

    async def claim(self, event_ids: Sequence[EventKey]) -> set[EventKey]:
        """Record (tenant, event id) pairs as applied; returns those that were not yet."""
        wanted = sorted(set(event_ids))
        if not wanted:
            return set()
        rows = await self._conn.fetch(
            "INSERT INTO processed_events (tenant_id, event_id) SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT DO NOTHING RETURNING tenant_id, event_id",
            [w[0] for w in wanted],
            [w[1] for w in wanted],
        )
        return {(row["tenant_id"], row["event_id"]) for row in rows}

    async def lock_or_create_links(self, links: Mapping[LinkKey, LinkState]) -> dict[LinkKey, LinkState]:
        """The current state of ``links`` (created from the given ones when new), locked."""
        keys = sorted(links)
        if not keys:
            return {}
        await self._conn.execute(
            "INSERT INTO link_states (tenant_id, link_id, object_pair, external_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [links[k].object_pair for k in keys],
            [links[k].external_id for k in keys],
        )
        locked = await self.lock_links(keys)
        assert len(locked) == len(keys)  # inserted above or already there; rows are never deleted here
        return locked

    async def lock_links(self, keys: Sequence[LinkKey]) -> dict[LinkKey, LinkState]:
        """The existing ones of ``keys``, locked in (tenant, link) order."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        rows = await self._conn.fetch(
            f"SELECT l.tenant_id, {', '.join('l.' + c for c in _LINK_COLUMNS.split(', '))} FROM link_states l"
            " JOIN unnest($1::text[], $2::text[]) AS w(t, id) ON l.tenant_id = w.t AND l.link_id = w.id"
            " ORDER BY l.tenant_id, l.link_id FOR UPDATE OF l",
            [k[0] for k in wanted],
            [k[1] for k in wanted],
        )
        return {(row["tenant_id"], row["link_id"]): _link(row) for row in rows}

    async def fields(self, keys: Sequence[LinkKey]) -> dict[LinkKey, dict[str, FieldRecord]]:
        """Every field state of the ``keys`` links (an empty mapping for a link without any)."""
        wanted = sorted(set(keys))
        records: dict[LinkKey, dict[str, FieldRecord]] = {k: {} for k in wanted}
        if not wanted:
            return records
        rows = await self._conn.fetch(
            "SELECT f.tenant_id, f.link_id, f.field, f.state FROM field_states f"
            " JOIN unnest($1::text[], $2::text[]) AS w(t, id) ON f.tenant_id = w.t AND f.link_id = w.id",
            [k[0] for k in wanted],
            [k[1] for k in wanted],
        )
        for row in rows:
            records[(row["tenant_id"], row["link_id"])][row["field"]] = decode_record(_json(row["state"]))
        return records

    async def save(self, links: Mapping[LinkKey, LinkState], fields: Mapping[FieldKey, FieldRecord]) -> None:
        """Write the links' and fields' final states."""
        if links:
            keys = sorted(links)
            await self._conn.execute(
                "UPDATE link_states l SET object_pair = w.pair, app_record_id = w.app, crm_record_id = w.crm,"
                " version = w.version, app_deleted = w.app_deleted, crm_deleted = w.crm_deleted, updated_at = now()"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],"
                " $7::boolean[], $8::boolean[]) AS w(t, id, pair, app, crm, version, app_deleted, crm_deleted)"
                " WHERE l.tenant_id = w.t AND l.link_id = w.id",
                [k[0] for k in keys],
                [k[1] for k in keys],
                [links[k].object_pair for k in keys],
                [links[k].app_record_id for k in keys],
                [links[k].crm_record_id for k in keys],
                [links[k].version for k in keys],
                [links[k].app_deleted for k in keys],
                [links[k].crm_deleted for k in keys],
            )
        if fields:
            names = sorted(fields)
            await self._conn.execute(
                "INSERT INTO field_states (tenant_id, link_id, field, state)"
                " SELECT t, id, f, s::jsonb"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS w(t, id, f, s)"
                " ON CONFLICT (tenant_id, link_id, field) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                [n[0] for n in names],
                [n[1] for n in names],
                [n[2] for n in names],
                [json.dumps(encode_record(fields[n])) for n in names],
            )

    async def record_sent(self, sent: Sequence[SentWrite]) -> None:
        """(tenant, link, version, operation, pending values) of each write command sent."""
        if not sent:
            return
        await self._conn.execute(
            "INSERT INTO sent_writes (tenant_id, link_id, version, operation, fields)"
            " SELECT t, id, v, op, f::jsonb FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])"
            " AS w(t, id, v, op, f) ON CONFLICT DO NOTHING",
            [s[0] for s in sent],
            [s[1] for s in sent],
            [s[2] for s in sent],
            [s[3] for s in sent],
            [json.dumps({name: encode_value(value) for name, value in s[4].items()}) for s in sent],
        )

    async def log(self, rows: Sequence[LogRow]) -> None:
        """Append sync log rows (as :func:`services.common.sync_log.record` does, many at once)."""
        if rows:
            await self._conn.execute(
                "INSERT INTO sync_log (tenant_id, service, event, link_id, record_id, code, message, detail)"
                " SELECT t, s, e, l, r, c, m, d::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
                " $5::text[], $6::text[], $7::text[], $8::text[]) AS w(t, s, e, l, r, c, m, d)",
                *([row[i] for row in rows] for i in range(8)),
            )

    async def holding(self, pairs: Collection[PairKey]) -> Holds:
        """What is held of these (tenant, object pair)s: their pauses and waiting holds, one statement."""
        if not pairs:
            return Holds()
        wanted = sorted(pairs)
        rows = await self._conn.fetch(
            "SELECT k.t, k.p, w.way,"
            " EXISTS (SELECT 1 FROM sync_pauses s WHERE s.tenant_id = k.t AND s.direction = w.way"
            " AND s.object_pair IN (k.p, $4)) AS paused,"
            " EXISTS (SELECT 1 FROM held_outputs h WHERE h.tenant_id = k.t AND h.object_pair = k.p"
            " AND h.direction = w.way) AS outputs,"
            " EXISTS (SELECT 1 FROM held_inputs i WHERE i.tenant_id = k.t AND i.object_pair = k.p) AS inputs"
            " FROM unnest($1::text[], $2::text[]) AS k(t, p) CROSS JOIN unnest($3::text[]) AS w(way)",
            [k[0] for k in wanted],
            [k[1] for k in wanted],
            [str(w) for w in Way],
            EVERY_PAIR,
        )
        return holds_of(
            paused={(r["t"], r["p"], Way(r["way"])) for r in rows if r["paused"]},
            inputs_waiting={(r["t"], r["p"]) for r in rows if r["inputs"]},
            outputs_waiting={(r["t"], r["p"], Way(r["way"])) for r in rows if r["outputs"]},
        )

    async def hold(self, outputs: Sequence[HeldOutput]) -> None:
        """Store ``outputs``; ids rise in their order, which is the order they are released in."""
        if outputs:
            await self._conn.execute(
                "INSERT INTO held_outputs (tenant_id, object_pair, direction, record_key, message)"
                " SELECT t, p, d, k, m FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])"
                " WITH ORDINALITY AS o(t, p, d, k, m, n) ORDER BY n",
                [o[0][0] for o in outputs],
                [o[0][1] for o in outputs],
                [str(o[0][2]) for o in outputs],
                [o[1] for o in outputs],
                [o[2] for o in outputs],
            )

    async def hold_inputs(self, inputs: Sequence[HeldInput]) -> None:
        """Store ``inputs`` (ids rise in their order, the order they are decided in), one statement.

        A crash after this commits and before the input offsets do delivers them again: the unique
        (tenant, event id) keeps a change held once, and one already released and decided is
        known by its claim in processed_events (a second decision would skip it anyway, but it
        would show as held meanwhile)."""
        if inputs:
            await self._conn.execute(
                "INSERT INTO held_inputs (tenant_id, object_pair, event_id, message)"
                " SELECT t, p, e, m FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])"
                " WITH ORDINALITY AS o(t, p, e, m, n)"
                " WHERE NOT EXISTS (SELECT 1 FROM processed_events d WHERE d.tenant_id = o.t AND d.event_id = o.e)"
                " ORDER BY n ON CONFLICT (tenant_id, event_id) DO NOTHING",
                [i[0][0] for i in inputs],
                [i[0][1] for i in inputs],
                [i[1] for i in inputs],
                [i[2] for i in inputs],
            )

    async def held_inputs(self, tenant_id: str, object_pair: str, limit: int) -> list[tuple[int, bytes]] | None:
        """The pair's oldest held changes, its release locked to this transaction (see the protocol)."""
        if not await self._conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", f"held_inputs/{tenant_id}/{object_pair}"
        ):
            return None
        rows = await self._conn.fetch(
            "SELECT id, message FROM held_inputs WHERE tenant_id = $2 AND object_pair = $3"
            f" AND NOT {paused_both_ways('$2', '$3')} ORDER BY id LIMIT $4",
            EVERY_PAIR,
            tenant_id,
            object_pair,
            limit,
        )
        return [(r["id"], bytes(r["message"])) for r in rows]

    async def release_inputs(self, ids: Sequence[int]) -> None:
        if ids:
            await self._conn.execute("DELETE FROM held_inputs WHERE id = ANY($1::bigint[])", list(ids))


class PostgresSession:
    """One connection of the pool, for one batch (a :class:`~store.Session`)."""

    def __init__(self, conn: Connection, configs: TenantConfigs) -> None:
        self._conn = conn
        self._configs = configs

    async def mapping(self, tenant_id: str, version: int) -> StoredConfig | None:
        return await self._configs.at_version(self._conn, tenant_id, version)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[BatchRepository]:
        async with self._conn.transaction():
            yield BatchRepository(self._conn)


class PostgresStore:
    """The resolver's state in PostgreSQL (a :class:`~store.Store`)."""

    def __init__(self, pool: Pool, configs: TenantConfigs) -> None:
        self._pool = pool
        self._configs = configs

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PostgresSession]:
        async with self._pool.acquire() as conn:
            yield PostgresSession(conn, self._configs)
