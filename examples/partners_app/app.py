"""The partner directory: its table, an outbox relay to app-changes, and an app-updates consumer.

The two rules of Duplex's public contract that matter most, and how this app keeps them:

1. *Nothing lost:* a change and its outbox row commit in one transaction; the relay marks a row
   published only after Kafka acknowledged it (acks=all). A crash in between publishes it again
   with the same event id, which Duplex deduplicates.
2. *No echo loops:* a change made by applying an app-update is published with that update's
   ``origin_client``, so Duplex recognises its own change coming back and does not sync it again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from duplex.change.v1 import record_changed_pb2 as rc
from google.protobuf.message import DecodeError

from examples.partners_app import contract

log = logging.getLogger("partners_app")
SCHEMA = Path(__file__).with_name("schema.sql")
COLUMNS = tuple(contract.COLUMNS)


@dataclass(frozen=True)
class Settings:
    dsn: str
    bootstrap_servers: str
    tenant_id: str
    app_changes_topic: str = "duplex.app-changes.v1"
    app_updates_topic: str = "duplex.app-updates.v1"
    group_id: str = "partners-app"


async def migrate(conn: Any) -> None:
    await conn.execute(SCHEMA.read_text())


async def _outbox(
    conn: Any,
    record_id: str,
    kind: str,
    changed: list[str],
    origin_client: str = contract.CLIENT,
    committed_at: datetime | None = None,
) -> None:
    """Record a change in the outbox, in the caller's transaction, with the values it made.

    The message is built now, not when the relay publishes it: by then a later change may have
    altered the row, and publishing those later values with this change's commit time would
    make Duplex's newest-wins policies compare the wrong edits. The tenant is filled in by the relay.
    """
    event_id, committed_at = uuid.uuid4().hex, committed_at or datetime.now(UTC)
    row = None
    if kind != "delete":
        row = await conn.fetchrow("SELECT * FROM partners_app.partners WHERE id = $1", record_id)
    message = contract.record_changed(
        tenant_id="",
        event=event_id,
        record_id=record_id,
        kind=kind,
        row=row,
        changed=changed,
        committed_at=committed_at,
        origin_client=origin_client,
        link_id=row["duplex_link_id"] if row is not None else None,
    )
    # The event id is stored with the change, so a republished change keeps its idempotency key.
    await conn.execute(
        "INSERT INTO partners_app.outbox (event_id, record_id, kind, changed, committed_at, origin_client, message)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        event_id,
        record_id,
        kind,
        changed,
        committed_at,
        origin_client,
        message.SerializeToString(),
    )


async def create_partner(
    conn: Any, values: Mapping[str, Any], *, link_id: str | None = None, origin: str = contract.CLIENT
) -> str:
    """Insert a partner and record the change, in one transaction."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise contract.ContractError(f"unknown fields {sorted(unknown)}")
    record_id = f"p-{uuid.uuid4().hex[:12]}"
    columns = ["id", "duplex_link_id", *values]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO partners_app.partners ({', '.join(columns)}) VALUES ({placeholders})",
            record_id,
            link_id,
            *values.values(),
        )
        await _outbox(conn, record_id, "create", list(COLUMNS), origin)
    return record_id


async def create_partners(conn: Any, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Insert many partners (an import, say) in one transaction; each change goes to the outbox."""
    async with conn.transaction():
        return [await create_partner(conn, values) for values in rows]


async def edit_partner(
    conn: Any, record_id: str, values: Mapping[str, Any], *, origin: str = contract.CLIENT
) -> list[str]:
    """Update a partner; records the fields that really changed. Returns them."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise contract.ContractError(f"unknown fields {sorted(unknown)}")
    async with conn.transaction():
        current = await conn.fetchrow("SELECT * FROM partners_app.partners WHERE id = $1 FOR UPDATE", record_id)
        if current is None:
            raise LookupError(f"no partner {record_id}")
        changed = [k for k, v in values.items() if current[k] != v]
        if not changed:
            return []
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changed, start=2))
        await conn.execute(
            f"UPDATE partners_app.partners SET {assignments}, updated_at = now() WHERE id = $1",
            record_id,
            *(values[name] for name in changed),
        )
        await _outbox(conn, record_id, "update", changed, origin)
    return changed


async def delete_partner(conn: Any, record_id: str, *, origin: str = contract.CLIENT) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM partners_app.partners WHERE id = $1", record_id)
        await _outbox(conn, record_id, "delete", [], origin)


async def resend_partner(conn: Any, record_id: str) -> None:
    """Publish a partner's whole current state again (a snapshot), as Duplex's resend request asks.

    Stamped with the partner's last change, not now: it is no new edit, and must not win a
    newest-wins conflict against a Salesforce edit made since. Not tagged with the request's
    ``origin_client``: it is this app's own state, not the echo of a value Duplex wrote.
    """
    async with conn.transaction():
        # Locked, so that no edit commits between reading the time of the last change and the values.
        last_change = await conn.fetchval(
            "SELECT COALESCE((SELECT max(committed_at) FROM partners_app.outbox WHERE record_id = p.id), p.updated_at)"
            " FROM partners_app.partners p WHERE p.id = $1 FOR UPDATE OF p",
            record_id,
        )
        await _outbox(conn, record_id, "snapshot", list(COLUMNS), origin_client="", committed_at=last_change)


async def relay_once(conn: Any, producer: AIOKafkaProducer, settings: Settings, batch: int = 500) -> int:
    """Publish unpublished outbox rows in order; returns how many were published."""
    async with conn.transaction():
        rows = await conn.fetch(
            "SELECT o.*, p.* FROM partners_app.outbox o"
            " LEFT JOIN partners_app.partners p ON p.id = o.record_id"
            " WHERE o.published_at IS NULL ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
            batch,
        )
        for row in rows:
            if row["message"] is not None:
                message = rc.RecordChanged.FromString(row["message"])
                message.tenant_id = settings.tenant_id
            else:  # written before outbox rows carried their message
                message = contract.record_changed(
                    tenant_id=settings.tenant_id,
                    event=row["event_id"],
                    record_id=row["record_id"],
                    kind=row["kind"],
                    row=row if row["kind"] != "delete" and row["id"] is not None else None,
                    changed=row["changed"],
                    committed_at=row["committed_at"],
                    origin_client=row["origin_client"],
                    link_id=row["duplex_link_id"],
                )
            # Keyed tenant/object/record: Duplex keeps each record's changes in order.
            key = f"{settings.tenant_id}/{contract.OBJECT}/{row['record_id']}".encode()
            await producer.send_and_wait(settings.app_changes_topic, message.SerializeToString(), key=key)
        if rows:
            await conn.execute(
                "UPDATE partners_app.outbox SET published_at = now() WHERE seq = ANY($1::bigint[])",
                [row["seq"] for row in rows],
            )
    return len(rows)


async def apply_update(conn: Any, update: rc.RecordChanged, settings: Settings) -> bool:
    """Apply one app-update once. False when it was already applied or is not for this app."""
    if update.tenant_id != settings.tenant_id or update.object_type != contract.OBJECT:
        return False
    values = contract.update_values(update)  # raises ContractError before anything is written
    async with conn.transaction():
        first = await conn.fetchval(
            "INSERT INTO partners_app.applied_updates (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
            update.event_id,
        )
        if not first:
            return False
        record_id = update.record_id or await conn.fetchval(
            "SELECT id FROM partners_app.partners WHERE duplex_link_id = $1", update.external_id
        )
        exists = record_id and await conn.fetchval("SELECT true FROM partners_app.partners WHERE id = $1", record_id)
        origin = update.origin_client or "duplex"
        if update.kind == rc.CHANGE_KIND_RESEND:
            if exists:
                await resend_partner(conn, record_id)
            else:
                # Not answered with a delete: the partner's delete went out through the outbox when it
                # was deleted, and settles it in Duplex; a delete sent on the strength of a lookup that
                # found nothing could only delete a record in Salesforce by mistake.
                log.info("resend request for a partner this app does not have, ignored", extra={"record_id": record_id})
        elif update.kind == rc.CHANGE_KIND_DELETE:
            if exists:
                await delete_partner(conn, record_id, origin=origin)
        elif exists:
            await edit_partner(conn, record_id, values, origin=origin)
        elif update.kind == rc.CHANGE_KIND_CREATE:
            await create_partner(conn, {"name": "", **values}, link_id=update.external_id or None, origin=origin)
        else:
            # Deleted here while the update was on its way: the delete reaches Duplex and settles the
            # record; re-creating it from the update's few fields would make a second, partial one.
            log.info("update for a partner deleted meanwhile, skipped", extra={"record_id": record_id})
    return True


# Whatever fails while relaying or applying (the database or the broker restarting, a connection
# broken mid-transaction), nothing is lost: the outbox row stays unpublished, the update stays
# unapplied and uncommitted. So both loops log, wait and try again instead of exiting.
RETRY_SECONDS = 1.0


async def _apply(message: ConsumerRecord[Any, Any], settings: Settings, pool: Any) -> None:
    """Apply one app-update, retrying while the database is away; refuse what cannot be used."""
    while True:
        try:
            update = rc.RecordChanged.FromString(message.value or b"")
            async with pool.acquire() as conn:
                await apply_update(conn, update, settings)
            return
        except (DecodeError, contract.ContractError) as exc:
            # This app's policy for updates it cannot use: log and move on (they stay in the topic).
            log.warning("skipping app-update at offset %s: %s", message.offset, exc)
            return
        except Exception:
            log.exception("applying app-update at offset %s failed, retrying", message.offset)
            await asyncio.sleep(RETRY_SECONDS)


async def consume(settings: Settings, consumer: AIOKafkaConsumer, pool: Any) -> None:
    """Apply app-updates in order; offsets are committed only after their updates are applied (or refused)."""
    while True:
        batches = await consumer.getmany(timeout_ms=500, max_records=500)
        for messages in batches.values():
            for message in messages:
                await _apply(message, settings, pool)
        if not batches:
            continue
        try:
            await consumer.commit()
        except KafkaError as exc:
            # They come again and are skipped: applied_updates remembers every event id applied.
            log.warning("committing app-update offsets failed: %r", exc)


async def relay(settings: Settings, producer: AIOKafkaProducer, pool: Any, interval: float) -> None:
    """Publish the outbox, forever; waits out a database or broker restart."""
    while True:
        try:
            async with pool.acquire() as conn:
                published = await relay_once(conn, producer, settings)
        except Exception:
            # The transaction rolled back: the same rows are published again, with the same event ids.
            log.exception("relaying the outbox failed, retrying")
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if not published:
            await asyncio.sleep(interval)


async def run(settings: Settings, *, relay_interval: float = 0.2) -> None:
    """Relay and consume until cancelled."""
    pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=4)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(
        settings.app_updates_topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        # The line a supervisor waits for (devstack.pipeline): tables exist, producer and consumer run.
        log.info("partners app running (tenant %s, publishing to %s)", settings.tenant_id, settings.app_changes_topic)

        await asyncio.gather(relay(settings, producer, pool, relay_interval), consume(settings, consumer, pool))
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()
