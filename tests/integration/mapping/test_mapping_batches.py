"""The mapping service's batches: bad records inside a batch, order within a key, redelivery after a crash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from pydantic import SecretStr

from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.contract import to_value
from services.common.db import create_pool
from services.common.dlq import ERROR_REASON, ORIGINAL_OFFSET
from services.common.settings import PostgresSettings
from services.common.topics import Topic, TopicNames
from services.mapping.app import postgres_mapper
from services.mapping.contract import changes_of, keyed
from services.mapping.events import MappedEvent
from services.mapping.links import link_id_for
from services.mapping.mapper import Mapper
from services.mapping.repository import BatchLinkRepository
from tests.e2e.sync.harness import TENANT, TopicReader, decode, prepare_database, producer, publish, record_changed
from tests.integration.mapping.test_mapping_service import running_mapping

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ChangeMapped = change_mapped_pb2.ChangeMapped


async def test_bad_records_inside_a_batch_are_dead_lettered_and_the_others_keep_their_order(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    key = record_key(TENANT, "partners", "a1")

    def update(n: int, name: str) -> record_changed_pb2.RecordChanged:
        kind = ChangeKind.CREATE if n == 0 else ChangeKind.UPDATE
        return record_changed(Side.APP, "partners", "a1", {"name": name}, event_id=f"m{n}", kind=kind, at=n)

    async with producer(kafka_bootstrap) as upstream:
        # All on one key (one partition) before the service starts, so they come as one batch;
        # records 1, 2 and 4 are bad in each of the ways a batch can meet.
        await publish(upstream, topic_names, Topic.APP_CHANGES, update(0, "v0"), key)
        await upstream.publish(b"\x08\x96\x01garbage", topic_names(Topic.APP_CHANGES), key=key)  # undecodable
        await publish(upstream, topic_names, Topic.APP_CHANGES, update(2, "x" * 41), key)  # refused by translate
        await publish(upstream, topic_names, Topic.APP_CHANGES, update(3, "v3"), key)
        unknown = record_changed(Side.APP, "invoices", "i1", {"n": 1}, event_id="m4")
        await publish(upstream, topic_names, Topic.APP_CHANGES, unknown, key)  # no pair maps it
        await publish(upstream, topic_names, Topic.APP_CHANGES, update(5, "v5"), key)
        async with running_mapping(kafka_bootstrap, topic_names, fresh_database):
            async with TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped:
                await mapped.until(3)
                records = await mapped.settle(quiet=1.0)
            async with TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq:
                dead = await dlq.until(3)

    events = decode(records, ChangeMapped)
    assert [e.source_event_id for e in events] == ["m0", "m3", "m5"]
    assert {e.link_id for e in events} == {link_id_for(TENANT, "partners", Side.APP, "a1")}
    assert [to_value(e.fields[0].crm_value) for e in events] == ["v0", "v3", "v5"]
    assert len({r.partition for r in records}) == 1
    reasons = {int(dict(r.headers)[ORIGINAL_OFFSET]): dict(r.headers)[ERROR_REASON].decode() for r in dead}
    assert sorted(reasons) == [1, 2, 4]
    assert reasons[2].startswith("STRING_TOO_LONG")
    assert reasons[4].startswith("UNKNOWN_OBJECT")

    conn = await asyncpg.connect(fresh_database)
    try:
        codes = sorted(r["code"] for r in await conn.fetch("SELECT code FROM sync_log WHERE event = 'change.rejected'"))
        links = await conn.fetchval("SELECT count(*) FROM links")
    finally:
        await conn.close()
    assert codes == ["STRING_TOO_LONG", "UNKNOWN_OBJECT"]
    assert links == 1


class CrashError(Exception):
    pass


class Outbox:
    """Stands in for the producer: keeps what was sent; ``crash_after`` sends, it fails (a crash)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self._crash_after = crash_after

    async def __call__(self, events: Sequence[MappedEvent]) -> None:
        for event, key in keyed(events):
            if self._crash_after is not None and len(self.sent) >= self._crash_after:
                raise CrashError
            self.sent.append((key, event))


async def test_a_batch_redelivered_after_a_crash_maps_to_the_same_events(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    batch = [
        record_changed(Side.APP, "partners", f"a{i}", {"name": f"n{i}"}, event_id=f"c{i}", kind=ChangeKind.CREATE)
        for i in range(5)
    ] + [
        # A second change of a record created earlier in the same batch finds the link it made.
        record_changed(Side.APP, "partners", "a0", {"name": "again"}, event_id="u0", at=1),
        # A contact referencing a partner: held (the partner has no Salesforce id yet).
        record_changed(Side.APP, "contacts", "c1", {"last_name": "Doe", "partner_id": "a1"}, event_id="k1"),
    ]
    settings = PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)
    async with create_pool(settings) as pool:

        def mapper(outbox: Outbox) -> Mapper:
            return postgres_mapper(pool, outbox, service_name="mapping", check_seconds=0)

        # The process dies while publishing: nothing of the batch may stay.
        with pytest.raises(CrashError):
            await mapper(Outbox(crash_after=3)).handle_batch(changes_of(batch))
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM links") == 0
            assert await conn.fetchval("SELECT count(*) FROM held_references") == 0

        first = Outbox()
        assert await mapper(first).handle_batch(changes_of(batch)) == {}
        # Committed, then redelivered (the offset commit was lost): the same events again.
        again = Outbox()
        assert await mapper(again).handle_batch(changes_of(batch)) == {}
        async with pool.acquire() as conn:
            links = await conn.fetchval("SELECT count(*) FROM links")
            held = await conn.fetch("SELECT link_id, field FROM held_references")

    def ids(outbox: Outbox) -> list[tuple[bytes, str]]:
        return [(key, event.event_id) for key, event in outbox.sent]

    assert ids(first) == ids(again)
    assert [e.source_event_id for _, e in first.sent] == ["c0", "c1", "c2", "c3", "c4", "u0", "k1"]
    link_a0 = link_id_for(TENANT, "partners", Side.APP, "a0")
    assert [e.link_id for _, e in first.sent if e.source_event_id in {"c0", "u0"}] == [link_a0, link_a0]
    assert links == 6  # five partners and the contact, each once
    assert [(r["link_id"], r["field"]) for r in held] == [
        (link_id_for(TENANT, "contacts", Side.APP, "c1"), "partner_id")
    ]


async def test_a_new_link_whose_id_is_taken_gets_the_next_one_inside_a_batch(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    taken = link_id_for(TENANT, "partners", Side.CRM, "001X")
    conn = await asyncpg.connect(fresh_database)
    try:
        # 001X founded this link, which a merge then moved to 001N: 001X's own id is taken.
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, crm_record_id, external_id)"
            " VALUES ($1, 'partners', $2, '001N', $3)",
            TENANT,
            taken,
            f"dx-{taken}",
        )
        async with conn.transaction():
            repo = BatchLinkRepository(conn)
            await repo.prefetch([(TENANT, "partners", Side.CRM, "001X"), (TENANT, "partners", Side.CRM, "001Y")])
            fresh = await repo.create(TENANT, "partners", Side.CRM, "001Y")  # deferred to the flush
            again = await repo.create(TENANT, "partners", Side.CRM, "001X")  # inserted at once
            assert await repo.find(TENANT, "partners", Side.CRM, "001X") == again
            await repo.flush()
        rows = await conn.fetch("SELECT link_id, crm_record_id FROM links ORDER BY crm_record_id")
    finally:
        await conn.close()
    assert again.link_id == link_id_for(TENANT, "partners", Side.CRM, "001X#1")
    assert fresh.link_id == link_id_for(TENANT, "partners", Side.CRM, "001Y")
    assert [tuple(r) for r in rows] == [(taken, "001N"), (again.link_id, "001X"), (fresh.link_id, "001Y")]


async def test_link_lookups_use_the_record_index_after_the_table_grew(fresh_database: str) -> None:
    """Planned from statistics taken while ``links`` was empty (a new deployment, a tenant's first
    backfill) and generically (no parameter values: the planner's worst case), a lookup by record
    id once took links_external_id's two leading columns and filtered every link of the pair once
    per wanted record. The pool's sessions also plan each statement for its values."""
    await prepare_database(fresh_database)
    settings = PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=1)
    async with create_pool(settings) as pool, pool.acquire() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        await conn.execute("ANALYZE links")
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, external_id)"
            " SELECT $1, 'partners', md5(g::text), 'p' || g, 'dx-' || g FROM generate_series(1, 5000) g",
            TENANT,
        )
        plans: list[str] = []

        def listener(_conn: object, message: Any) -> None:
            plans.append(message.message)

        conn.add_log_listener(listener)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute("SET auto_explain.log_min_duration = 0")
        await conn.execute("SET client_min_messages = log")
        for run in range(3):
            repository = BatchLinkRepository(conn)
            await repository.prefetch([(TENANT, "partners", Side.APP, f"p{run * 100 + n}") for n in range(100)])
        conn.remove_log_listener(listener)
    lookups = [plan for plan in plans if "app_record_id = w.r" in plan]
    assert len(lookups) == 3
    for plan in lookups:
        # The pathology: a nested loop whose inner scan reads the pair's links and filters them.
        assert "Filter: (w.r = app_record_id)" not in plan, plan
