"""The example app against real PostgreSQL and Kafka: it keeps the public contract's rules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from duplex.change.v1 import record_changed_pb2 as rc
from duplex.change.v1 import value_pb2

from examples.partners_app import app as partners
from services.common.topics import Topic, TopicNames

pytestmark = pytest.mark.integration
DUPLEX = "duplex-acme"


@pytest.fixture
async def setup(fresh_database: str, kafka_bootstrap: str, topic_names: TopicNames) -> AsyncIterator[tuple[Any, Any]]:
    settings = partners.Settings(
        dsn=fresh_database,
        bootstrap_servers=kafka_bootstrap,
        tenant_id="acme",
        app_changes_topic=topic_names(Topic.APP_CHANGES),
        app_updates_topic=topic_names(Topic.APP_UPDATES),
    )
    conn = await asyncpg.connect(fresh_database)
    await partners.migrate(conn)
    try:
        yield settings, conn
    finally:
        await conn.close()


SEEN: set[str] = set()


async def published(settings: partners.Settings, conn: Any) -> list[rc.RecordChanged]:
    """Relay the outbox once; the changes it published that no earlier call returned."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        count = await partners.relay_once(conn, producer, settings)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.app_changes_topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        new: list[rc.RecordChanged] = []
        async with asyncio.timeout(30):
            while len(new) < count:
                batch = await consumer.getmany(timeout_ms=500)
                messages = [rc.RecordChanged.FromString(m.value or b"") for ms in batch.values() for m in ms]
                new += [m for m in messages if m.event_id not in SEEN]
                SEEN.update(m.event_id for m in messages)
        return new
    finally:
        await consumer.stop()


def update(
    record_id: str, kind: rc.ChangeKind.ValueType, event_id: str, **fields: value_pb2.FieldValue
) -> rc.RecordChanged:
    message = rc.RecordChanged(
        event_id=event_id,
        tenant_id="acme",
        origin_side=rc.SIDE_CRM,
        object_type="partners",
        record_id=record_id,
        kind=kind,
        origin_client=DUPLEX,
        external_id="link-1" if not record_id else "",
    )
    for name, value in fields.items():
        message.fields[name].CopyFrom(value)
    message.origin_commit_time.GetCurrentTime()
    return message


async def test_local_changes_are_published_typed_and_once(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme", "annual_revenue": Decimal("12.50")})
    await partners.edit_partner(conn, record, {"phone": "555", "partner_since": date(2024, 2, 29)})

    create, edit = await published(settings, conn)
    again = await published(settings, conn)

    assert again == []
    assert (create.kind, edit.kind) == (rc.CHANGE_KIND_CREATE, rc.CHANGE_KIND_UPDATE)
    assert create.fields["annual_revenue"].decimal_value == "12.50"
    assert create.origin_client == "partners-app"
    assert sorted(edit.changed_fields) == ["partner_since", "phone"]
    assert edit.fields["partner_since"].date_value == value_pb2.Date(year=2024, month=2, day=29)
    assert {create.record_id, edit.record_id} == {record}
    assert create.event_id != edit.event_id


async def test_applied_updates_are_idempotent_and_echo_tagged(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme"})
    await published(settings, conn)
    change = update(record, rc.CHANGE_KIND_UPDATE, "u1", website=value_pb2.FieldValue(string_value="acme.example"))

    assert await partners.apply_update(conn, change, settings)
    assert not await partners.apply_update(conn, change, settings)
    [echo] = await published(settings, conn)

    assert await conn.fetchval("SELECT website FROM partners_app.partners WHERE id = $1", record) == "acme.example"
    assert echo.origin_client == DUPLEX  # Duplex recognises its own change coming back
    assert list(echo.changed_fields) == ["website"]


async def test_an_update_of_a_partner_deleted_meanwhile_does_not_bring_it_back(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme"})
    await partners.delete_partner(conn, record)
    await published(settings, conn)
    change = update(record, rc.CHANGE_KIND_UPDATE, "u3", website=value_pb2.FieldValue(string_value="acme.example"))

    assert await partners.apply_update(conn, change, settings)

    assert await conn.fetchval("SELECT count(*) FROM partners_app.partners") == 0
    assert await published(settings, conn) == []


async def test_a_create_from_salesforce_gets_an_app_id_and_keeps_the_link(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    change = update("", rc.CHANGE_KIND_CREATE, "u2", name=value_pb2.FieldValue(string_value="From SF"))

    assert await partners.apply_update(conn, change, settings)
    [echo] = await published(settings, conn)

    assert echo.kind == rc.CHANGE_KIND_CREATE
    assert echo.external_id == "link-1"
    assert echo.record_id.startswith("p-")
    assert echo.fields["name"].string_value == "From SF"


async def test_the_consumer_applies_updates_and_skips_bad_ones(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme"})
    bad = update(record, rc.CHANGE_KIND_UPDATE, "bad", no_such_field=value_pb2.FieldValue(string_value="x"))
    good = update(record, rc.CHANGE_KIND_UPDATE, "good", phone=value_pb2.FieldValue(string_value="777"))
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for message in (bad, b"not protobuf at all", good):
            value = message if isinstance(message, bytes) else message.SerializeToString()
            await producer.send_and_wait(settings.app_updates_topic, value, key=b"acme/partners/" + record.encode())
    finally:
        await producer.stop()

    runner = asyncio.create_task(partners.run(settings))
    try:
        async with asyncio.timeout(30):
            phone = "SELECT phone FROM partners_app.partners WHERE id = $1"
            while await conn.fetchval(phone, record) != "777":  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.2)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    assert await conn.fetchval("SELECT count(*) FROM partners_app.applied_updates") == 1


async def test_a_resend_request_publishes_the_partner_whole_once_as_of_its_last_change(
    setup: tuple[Any, Any],
) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme", "notes": None})
    await partners.edit_partner(conn, record, {"phone": "555"})
    _, edit = await published(settings, conn)
    # Tagged as an app-update would be: the answer must not carry the tag (it is no echo).
    resend = update(record, rc.CHANGE_KIND_RESEND, "r1")

    assert await partners.apply_update(conn, resend, settings)
    assert not await partners.apply_update(conn, resend, settings)
    [snapshot] = await published(settings, conn)

    assert snapshot.kind == rc.CHANGE_KIND_SNAPSHOT
    assert (snapshot.record_id, snapshot.origin_client) == (record, "")
    assert snapshot.event_id not in {"r1", edit.event_id}
    assert set(snapshot.fields) == set(partners.COLUMNS)
    assert (snapshot.fields["name"].string_value, snapshot.fields["phone"].string_value) == ("Acme", "555")
    assert "notes" in snapshot.nulled_fields
    assert list(snapshot.changed_fields) == []
    # Its last change's time, not the time of the request: a snapshot is no new edit.
    assert snapshot.origin_commit_time == edit.origin_commit_time


async def test_a_resend_request_for_a_partner_the_app_does_not_have_is_not_answered(setup: tuple[Any, Any]) -> None:
    settings, conn = setup
    record = await partners.create_partner(conn, {"name": "Acme"})
    await partners.delete_partner(conn, record)
    await published(settings, conn)

    assert await partners.apply_update(conn, update(record, rc.CHANGE_KIND_RESEND, "r2"), settings)

    assert await published(settings, conn) == []
    assert await conn.fetchval("SELECT count(*) FROM partners_app.partners") == 0
