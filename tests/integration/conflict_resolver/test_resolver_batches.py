"""The conflict-resolver's batches against the real database: a batch means what its events mean one by
one, in order; bad events are handed back while the rest apply; a redelivered batch changes nothing twice."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.config_provider import TenantConfigs
from services.common.contract import to_field_value
from services.common.db import create_pool
from services.common.metrics import Metrics
from services.common.settings import PostgresSettings
from services.common.values import Value
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.repository import PostgresStore
from tests.e2e.sync.harness import CLIENT, T0, TENANT, prepare_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ChangeMapped = change_mapped_pb2.ChangeMapped
CRM_NAMES = {"name": "Name", "phone": "Phone", "status": "Status__c"}
STATE_TABLES = ("link_states", "field_states", "sent_writes", "processed_events", "sync_log")


def mapped(
    event_id: str,
    link: str,
    fields: dict[str, Value],
    *,
    at: int,
    side: str = "app",
    kind: record_changed_pb2.ChangeKind.ValueType = record_changed_pb2.CHANGE_KIND_UPDATE,
    client: str = "",
    pair: str = "partners",
    crm_id: str = "",
) -> ChangeMapped:
    event = ChangeMapped(
        event_id=event_id,
        tenant_id=TENANT,
        link_id=link,
        object_pair=pair,
        mapping_version=1,
        origin_side=record_changed_pb2.SIDE_APP if side == "app" else record_changed_pb2.SIDE_CRM,
        kind=kind,
        app_record_id=f"app-{link}",
        crm_record_id=crm_id,
        external_id=f"dx-{link}",
        origin_client=client,
        source_event_id=event_id,
    )
    for name, value in fields.items():
        event.fields.add(
            app_field=name,
            crm_field=CRM_NAMES[name],
            app_value=to_field_value(value),
            crm_value=to_field_value(value),
            changed=True,
        )
    event.origin_commit_time.FromDatetime(T0 + timedelta(seconds=at))
    return event


def stream() -> Iterator[ChangeMapped]:
    """Creates, edits from both sides, echoes and conflicts over three links, links interleaved."""
    create = record_changed_pb2.CHANGE_KIND_CREATE
    for n in range(3):
        yield mapped(f"c{n}", f"L{n}", {"name": f"n{n}", "phone": "1"}, at=n, kind=create)
    yield mapped("u0", "L0", {"name": "app edit"}, at=10)
    yield mapped("e1", "L1", {"name": "n1", "phone": "1"}, at=11, side="crm", client=CLIENT, crm_id="001L1")
    yield mapped("s0", "L0", {"name": "crm edit", "status": "Closed"}, at=12, side="crm", crm_id="001L0")
    yield mapped("u2", "L2", {"phone": None}, at=13)
    yield mapped("u0b", "L0", {"name": "app again"}, at=11)  # older than Salesforce's edit: loses
    yield mapped("d2", "L2", {}, at=14, side="app", kind=record_changed_pb2.CHANGE_KIND_DELETE)


class Outbox:
    """Stands in for a topic's producer: keeps what was sent; fails once ``crash_after`` were sent."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.sent: list[tuple[bytes, Message]] = []
        self._crash_after = crash_after

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        for event, key in events:
            if self._crash_after is not None and len(self.sent) >= self._crash_after:
                raise ConnectionError("the process died here")
            self.sent.append((key, event))


@asynccontextmanager
async def resolver(dsn: str, crm: Outbox, app: Outbox, metrics: Metrics | None = None) -> Any:
    async with create_pool(PostgresSettings(dsn=SecretStr(dsn), pool_max_size=2)) as pool:
        yield Resolver(
            PostgresStore(pool, TenantConfigs(max_staleness=0.0, versions=8)),
            publish_crm=crm,
            publish_app=app,
            service_name="conflict-resolver",
            metrics=metrics,
        )


async def state(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "links": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT link_id, app_record_id, crm_record_id, version, app_deleted, crm_deleted"
                    " FROM link_states ORDER BY link_id"
                )
            ],
            "fields": [
                tuple(r) for r in await conn.fetch("SELECT link_id, field, state FROM field_states ORDER BY 1, 2")
            ],
            "sent": [tuple(r) for r in await conn.fetch("SELECT link_id, version, operation, fields FROM sent_writes")],
            # The lag is when a change was decided, not what was decided: left out.
            "log": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT event, link_id, code, message, detail - 'lag_ms' AS detail FROM sync_log"
                    " WHERE event <> 'echoes.dropped' ORDER BY id"
                )
            ],
            # Counted per batch: the same totals however the events were batched.
            "echoes": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT detail->>'object_pair', detail->>'side', detail->>'echo', sum((detail->>'count')::int)"
                    " FROM sync_log WHERE event = 'echoes.dropped' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                )
            ],
        }
    finally:
        await conn.close()


async def reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {', '.join(STATE_TABLES)}")
    finally:
        await conn.close()


def wire(outbox: Outbox) -> list[tuple[bytes, bytes]]:
    return [(key, event.SerializeToString(deterministic=True)) for key, event in outbox.sent]


async def test_a_batch_means_what_its_events_mean_one_by_one_in_order(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())

    one_by_one = Outbox(), Outbox()
    async with resolver(fresh_database, *one_by_one) as r:
        for event in events:
            assert await r.on_mapped_batch([event]) == {}
    expected = await state(fresh_database)

    await reset(fresh_database)
    batched = Outbox(), Outbox()
    metrics = Metrics(CollectorRegistry())
    async with resolver(fresh_database, *batched, metrics=metrics) as r:
        assert await r.on_mapped_batch(events) == {}

    # Same commands and app updates, byte for byte and in the same order; same state and log.
    assert wire(batched[0]) == wire(one_by_one[0])
    assert wire(batched[1]) == wire(one_by_one[1])
    assert await state(fresh_database) == expected
    # One origin → published latency per app update published, none for the Salesforce writes.
    published = {"tenant": TENANT, "stage": "app_update_published"}
    assert len(batched[1].sent) > 0
    assert metrics.registry.get_sample_value("duplex_end_to_end_latency_seconds_count", published) == len(
        batched[1].sent
    )
    # Per link, the commands carry increasing versions in event order.
    commands = [c for _, c in batched[0].sent if isinstance(c, write_records_pb2.WriteRecords)]
    versions = [(c.records[0].link_id, c.records[0].version) for c in commands]
    for link in {link for link, _ in versions}:
        mine = [v for lid, v in versions if lid == link]
        assert mine == sorted(mine) == list(range(1, len(mine) + 1))


async def test_bad_events_inside_a_batch_are_handed_back_and_the_rest_applies(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    good = list(stream())
    no_link = mapped("bad-1", "", {"name": "x"}, at=1)
    unknown_pair = mapped("bad-2", "L9", {"name": "x"}, at=1, pair="invoices")
    batch = [*good[:2], no_link, *good[2:5], unknown_pair, *good[5:]]
    outboxes = Outbox(), Outbox()
    async with resolver(fresh_database, *outboxes) as r:
        refused = await r.on_mapped_batch(batch)
    assert sorted(refused) == [2, 6]
    assert "link_id" in refused[2].reason
    assert "invoices" in refused[6].reason

    await_state = await state(fresh_database)
    await reset(fresh_database)
    alone = Outbox(), Outbox()
    async with resolver(fresh_database, *alone) as r:
        assert await r.on_mapped_batch(good) == {}
    # The good events did exactly what they do without the bad ones around them.
    assert wire(outboxes[0]) == wire(alone[0])
    assert wire(outboxes[1]) == wire(alone[1])
    rejected = [row for row in await_state["log"] if row[0] == "change.rejected"]
    assert [(row[1], row[2]) for row in rejected] == [("L9", "UNKNOWN_PAIR")]
    assert {k: v for k, v in await_state.items() if k != "log"} == {
        k: v for k, v in (await state(fresh_database)).items() if k != "log"
    }


async def test_a_batch_redelivered_after_a_crash_changes_nothing_twice(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())

    metrics = Metrics(CollectorRegistry())
    published = {"tenant": TENANT, "stage": "app_update_published"}
    # Dies while publishing: the transaction rolls back, nothing is marked processed.
    async with resolver(fresh_database, Outbox(crash_after=2), Outbox(), metrics) as r:
        with pytest.raises(ConnectionError):
            await r.on_mapped_batch(events)
    assert (await state(fresh_database))["links"] == []
    # Nothing committed, nothing observed.
    assert metrics.registry.get_sample_value("duplex_end_to_end_latency_seconds_count", published) is None

    first = Outbox(), Outbox()
    async with resolver(fresh_database, *first, metrics) as r:
        assert await r.on_mapped_batch(events) == {}
    after_first = await state(fresh_database)
    observed = metrics.registry.get_sample_value("duplex_end_to_end_latency_seconds_count", published)
    assert observed == len(first[1].sent) > 0

    # Committed, but the offsets were not: the whole batch comes again, and again in part.
    again = Outbox(), Outbox()
    async with resolver(fresh_database, *again, metrics) as r:
        assert await r.on_mapped_batch(events) == {}
        assert await r.on_mapped_batch(events[3:] + events[:2]) == {}
    assert again[0].sent == []
    assert again[1].sent == []
    assert metrics.registry.get_sample_value("duplex_end_to_end_latency_seconds_count", published) == observed
    assert await state(fresh_database) == after_first
    # The same event twice in one batch is applied once.
    await reset(fresh_database)
    twice = Outbox(), Outbox()
    async with resolver(fresh_database, *twice) as r:
        assert await r.on_mapped_batch([events[0], events[0], *events[1:]]) == {}
    assert wire(twice[0]) == wire(first[0])
    assert wire(twice[1]) == wire(first[1])
