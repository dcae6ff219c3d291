"""Pauses against the real database.

A pair paused both ways has its changes held undecided (``held_inputs``): nothing of them is
decided, stored or logged until a resume, when they are decided in order through the live path,
with the same outputs, state and log as a run that was never paused, and later changes queued
behind them. A pair paused one way has its changes decided and that way's outputs held
(``held_outputs``), released after the resume in the order they were decided, later outputs
queued behind. A pause set again stops a release; two releasers never interleave; a change held
or decided once is held or decided once however often it comes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.config_provider import TenantConfigs
from services.common.db import Pool, create_pool
from services.common.errors import RecordTooLargeError
from services.common.metrics import Metrics
from services.common.pauses import EVERY_PAIR, Way, held_inputs_of, held_of, pause, resume
from services.common.settings import PostgresSettings
from services.conflict_resolver import handlers
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.holding import release, release_inputs
from services.conflict_resolver.repository import PostgresStore
from tests.e2e.sync.harness import TENANT, prepare_database
from tests.integration.conflict_resolver.test_resolver_batches import (
    STATE_TABLES,
    ChangeMapped,
    Outbox,
    mapped,
    resolver,
    state,
    stream,
    wire,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BOTH = (Way.TO_CRM, Way.TO_APP)


async def _with(dsn: str, *statements: tuple[str, tuple[object, ...]]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = []
        for query, args in statements:
            rows = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


@asynccontextmanager
async def _pooled(
    dsn: str, crm: Outbox, app: Outbox, metrics: Metrics | None = None
) -> AsyncIterator[tuple[Pool, Resolver]]:
    async with create_pool(PostgresSettings(dsn=SecretStr(dsn), pool_max_size=2)) as pool:
        yield (
            pool,
            Resolver(
                PostgresStore(pool, TenantConfigs(max_staleness=0.0, versions=8)),
                publish_crm=crm,
                publish_app=app,
                service_name="conflict-resolver",
                metrics=metrics,
            ),
        )


async def _release(dsn: str, crm: Outbox, app: Outbox, *, page: int = 500) -> int:
    """Held outputs released, as the releaser's round does first."""
    async with _pooled(dsn, crm, app) as (pool, _):
        return await release(pool, {Way.TO_CRM: crm, Way.TO_APP: app}, "conflict-resolver", page=page)


async def _release_inputs(
    dsn: str, crm: Outbox, app: Outbox, *, page: int = 500, metrics: Metrics | None = None
) -> int:
    """Held changes decided, as the releaser's round does next."""
    async with _pooled(dsn, crm, app, metrics) as (pool, resolver):
        return await release_inputs(pool, resolver.release_held, page=page)


async def _pause(dsn: str, pairs: Sequence[str], ways: Sequence[Way]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await pause(conn, TENANT, pairs, ways, "test", "maintenance")
    finally:
        await conn.close()


async def _resume(dsn: str, pairs: Sequence[str], ways: Sequence[Way]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await resume(conn, TENANT, pairs, ways)
    finally:
        await conn.close()


async def _held(dsn: str) -> int:
    rows = await _with(dsn, ("SELECT count(*) AS n FROM held_outputs", ()))
    return int(rows[0]["n"])


async def _held_inputs(dsn: str) -> list[str]:
    """The event ids of the changes held, in the order they will be decided."""
    return [r["event_id"] for r in await _with(dsn, ("SELECT event_id FROM held_inputs ORDER BY id", ()))]


async def _reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {', '.join(STATE_TABLES)}, held_inputs, held_outputs, sync_pauses")
    finally:
        await conn.close()


async def _unpaused(dsn: str, events: Sequence[ChangeMapped]) -> tuple[tuple[Outbox, Outbox], dict[str, Any]]:
    """What ``events`` publish and leave behind when nothing is paused; the database reset after."""
    outboxes = Outbox(), Outbox()
    async with resolver(dsn, *outboxes) as r:
        assert await r.on_mapped_batch(events) == {}
    assert outboxes[0].sent
    assert outboxes[1].sent
    expected = await state(dsn)
    await _reset(dsn)
    return outboxes, dict(expected)


def _unmarked(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` (see ``state``) without the sync log's marks of outputs held (``"held": true``)."""

    def detail(text: str) -> str:
        data = json.loads(text)
        for write in data.get("writes", {}).values():
            write.pop("held", None)
        return json.dumps(data, sort_keys=True)

    return found | {"log": [(*row[:4], detail(row[4])) for row in found["log"]]}


async def test_a_pair_paused_both_ways_holds_its_changes_undecided_and_decides_them_as_if_never_paused(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    later = mapped("late", "L0", {"name": "after the resume"}, at=30)
    expected, expected_state = await _unpaused(fresh_database, [*events, later])

    await _pause(fresh_database, ["partners"], BOTH)
    paused = Outbox(), Outbox()
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch(events[:4]) == {}
        assert await r.on_mapped_batch(events[4:]) == {}
    assert paused[0].sent == []
    assert paused[1].sent == []
    # Held as they came, in order, and nothing decided: no link, field, claim or sync log row.
    assert await _held_inputs(fresh_database) == [e.event_id for e in events]
    assert await _held(fresh_database) == 0
    assert all(rows == [] for rows in (await state(fresh_database)).values())
    assert await _with(fresh_database, ("SELECT * FROM processed_events", ())) == []
    conn = await asyncpg.connect(fresh_database)
    try:
        shown = [(h.object_pair, h.changes) for h in await held_inputs_of(conn, TENANT)]
        assert await held_of(conn, TENANT) == []
    finally:
        await conn.close()
    assert shown == [("partners", len(events))]
    # Paused both ways: the releaser leaves them.
    assert await _release_inputs(fresh_database, *paused) == 0

    # Resumed, but not released yet: a later change of the pair queues behind the held ones.
    await _resume(fresh_database, ["partners"], BOTH)
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch([later]) == {}
    assert paused[0].sent == []
    assert paused[1].sent == []
    assert await _held_inputs(fresh_database) == [e.event_id for e in [*events, later]]

    released = Outbox(), Outbox()
    metrics = Metrics(CollectorRegistry())
    assert await _release_inputs(fresh_database, *released, page=3, metrics=metrics) == len(events) + 1
    # Decided through the live path, in the order they came: the same commands and updates byte for
    # byte, the same state and the same sync log as if the pair had never been paused.
    assert wire(released[0]) == wire(expected[0])
    assert wire(released[1]) == wire(expected[1])
    assert await state(fresh_database) == expected_state
    assert await _held_inputs(fresh_database) == []
    # Conflicts are counted as decided; no latency is, as it would count the pause.
    assert any(
        sample.value > 0
        for family in metrics.registry.collect()
        if family.name == "duplex_conflicts_decided"
        for sample in family.samples
    )
    assert (
        metrics.registry.get_sample_value(
            "duplex_end_to_end_latency_seconds_count", {"tenant": TENANT, "stage": "app_update_published"}
        )
        is None
    )
    # Nothing held any more: the next change is decided and published at once.
    direct = Outbox(), Outbox()
    async with resolver(fresh_database, *direct) as r:
        assert await r.on_mapped_batch([mapped("next", "L1", {"name": "direct"}, at=40)]) == {}
    assert len(direct[0].sent) == 1


class _InterruptingOutbox(Outbox):
    """Runs ``interrupt`` once, when it has published its first page (before the page commits)."""

    def __init__(self, interrupt: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._interrupt: Callable[[], Awaitable[None]] | None = interrupt

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        await super().__call__(events)
        interrupt, self._interrupt = self._interrupt, None
        if interrupt is not None:
            await interrupt()


async def test_changes_arriving_while_held_ones_are_released_queue_behind_them(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    later = [mapped("late", "L0", {"name": "during the release"}, at=30), mapped("late2", "L2", {}, at=31)]
    expected, expected_state = await _unpaused(fresh_database, [*events, *later])

    await _pause(fresh_database, ["partners"], BOTH)
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}
    await _resume(fresh_database, ["partners"], BOTH)

    async def arrive() -> None:
        # While the first page is decided (its links locked, its rows deleted but not committed),
        # later changes of the same records come: deciding them now would wait on those locks and
        # then overtake the held changes of later pages.
        async with asyncio.timeout(20), resolver(fresh_database, Outbox(), Outbox()) as r:
            assert await r.on_mapped_batch(later) == {}

    crm = _InterruptingOutbox(arrive)
    app = Outbox()
    assert await _release_inputs(fresh_database, crm, app, page=3) == len(events) + len(later)
    assert wire(crm) == wire(expected[0])
    assert wire(app) == wire(expected[1])
    assert await state(fresh_database) == expected_state
    assert await _held_inputs(fresh_database) == []


async def test_a_pause_of_both_ways_set_again_stops_the_release_of_held_changes(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    expected, _ = await _unpaused(fresh_database, events)

    await _pause(fresh_database, [EVERY_PAIR], BOTH)
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}
    await _resume(fresh_database, [EVERY_PAIR], BOTH)

    async def pause_again() -> None:
        await _pause(fresh_database, ["partners"], BOTH)

    crm = _InterruptingOutbox(pause_again)
    app = Outbox()
    # The page being decided goes on; the next is not started.
    assert await _release_inputs(fresh_database, crm, app, page=2) == 2
    assert await _held_inputs(fresh_database) == [e.event_id for e in events[2:]]
    assert await _release_inputs(fresh_database, crm, app, page=2) == 0

    # Paused one way again only: the changes are decided, that way's outputs held.
    await _resume(fresh_database, ["partners"], [Way.TO_APP])
    assert await _release_inputs(fresh_database, crm, app, page=2) == len(events) - 2
    assert await _held_inputs(fresh_database) == []
    assert await _held(fresh_database) > 0
    assert wire(app) == wire(expected[1])
    await _resume(fresh_database, ["partners"], [Way.TO_CRM])
    assert await _release(fresh_database, crm, app) > 0
    assert wire(crm) == wire(expected[0])


async def test_held_changes_are_held_once_and_decided_once_through_redeliveries_and_crashes(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    expected, expected_state = await _unpaused(fresh_database, events)

    # Decided before the pause, delivered again while paused (its offset was not committed): it is
    # not held, so the held view shows only what is still to decide.
    first = Outbox(), Outbox()
    async with resolver(fresh_database, *first) as r:
        assert await r.on_mapped_batch(events[:2]) == {}
    await _pause(fresh_database, ["partners"], BOTH)
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}
        # Held, then delivered again: held once.
        assert await r.on_mapped_batch(events[3:]) == {}
        assert await r.on_mapped_batch([events[4], events[4]]) == {}
    assert await _held_inputs(fresh_database) == [e.event_id for e in events[2:]]

    # The releaser dies while publishing a page: nothing of the page is decided or deleted.
    await _resume(fresh_database, ["partners"], BOTH)
    before = await state(fresh_database)
    assert await _release_inputs(fresh_database, Outbox(crash_after=1), Outbox(), page=4) == 0
    assert await _held_inputs(fresh_database) == [e.event_id for e in events[2:]]
    assert await state(fresh_database) == before

    later = Outbox(), Outbox()
    assert await _release_inputs(fresh_database, *later, page=4) == len(events) - 2
    assert wire(first[0]) + wire(later[0]) == wire(expected[0])
    assert wire(first[1]) + wire(later[1]) == wire(expected[1])
    assert await state(fresh_database) == expected_state

    # Delivered again after their release, paused or not: nothing is held, decided or sent again.
    again = Outbox(), Outbox()
    async with resolver(fresh_database, *again) as r:
        assert await r.on_mapped_batch(events) == {}
        await _pause(fresh_database, ["partners"], BOTH)
        assert await r.on_mapped_batch(events) == {}
    assert (again[0].sent, again[1].sent) == ([], [])
    assert await _held_inputs(fresh_database) == []
    assert await state(fresh_database) == expected_state


async def test_outputs_held_before_and_changes_held_after_come_out_in_the_order_decided(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    expected, expected_state = await _unpaused(fresh_database, events)

    # Salesforce paused first: the first changes are decided and their writes held; then the app
    # too: the rest are held undecided.
    await _pause(fresh_database, ["partners"], [Way.TO_CRM])
    crm, app = Outbox(), Outbox()
    async with resolver(fresh_database, crm, app) as r:
        assert await r.on_mapped_batch(events[:4]) == {}
        await _pause(fresh_database, [EVERY_PAIR], [Way.TO_APP])
        assert await r.on_mapped_batch(events[4:]) == {}
    held_writes = await _held(fresh_database)
    assert held_writes > 0
    assert await _held_inputs(fresh_database) == [e.event_id for e in events[4:]]
    assert crm.sent == []

    # The app resumed: the held changes are decided, their app updates sent, their writes held
    # behind the ones held before.
    await _resume(fresh_database, [EVERY_PAIR], [Way.TO_APP])
    assert await _release(fresh_database, crm, app) == 0
    assert await _release_inputs(fresh_database, crm, app) == len(events) - 4
    assert wire(app) == wire(expected[1])
    assert crm.sent == []
    assert await _held(fresh_database) > held_writes

    await _resume(fresh_database, ["partners"], [Way.TO_CRM])
    assert await _release(fresh_database, crm, app, page=2) > 0
    assert wire(crm) == wire(expected[0])
    # The same state and log, but for the marks of the writes held.
    assert _unmarked(await state(fresh_database)) == _unmarked(expected_state)


async def test_two_releasers_of_held_changes_never_interleave(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    expected, expected_state = await _unpaused(fresh_database, events)

    await _pause(fresh_database, [EVERY_PAIR], BOTH)
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}
    await _resume(fresh_database, [EVERY_PAIR], BOTH)
    shared = Outbox(), Outbox()
    counts = await asyncio.gather(*(_release_inputs(fresh_database, *shared, page=1) for _ in range(3)))
    assert sum(counts) == len(events)
    assert wire(shared[0]) == wire(expected[0])
    assert wire(shared[1]) == wire(expected[1])
    assert await state(fresh_database) == expected_state


async def test_a_paused_way_is_held_and_released_in_order_with_later_outputs_behind(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    later = mapped("late", "L0", {"name": "after the resume"}, at=30)
    expected, _ = await _unpaused(fresh_database, [*events, later])

    await _pause(fresh_database, ["partners"], [Way.TO_CRM])
    paused = Outbox(), Outbox()
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch(events[:4]) == {}
        assert await r.on_mapped_batch(events[4:]) == {}
    # One way paused: decided now, only that way's outputs held.
    assert paused[0].sent == []
    assert wire(paused[1]) == wire(expected[1])[: len(paused[1].sent)]
    assert await _held_inputs(fresh_database) == []
    conn = await asyncpg.connect(fresh_database)
    try:
        holds = {(h.object_pair, h.way): h.outputs for h in await held_of(conn, TENANT)}
        details = [
            r["d"] for r in await conn.fetch("SELECT detail::text AS d FROM sync_log WHERE event = 'change.resolved'")
        ]
    finally:
        await conn.close()
    assert set(holds) == {("partners", Way.TO_CRM)}
    assert any('"held": true' in d for d in details)

    # Resumed, but not released yet: a later output queues behind the held ones.
    await _resume(fresh_database, ["partners"], [Way.TO_CRM])
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch([later]) == {}
    assert paused[0].sent == []
    assert await _held(fresh_database) == len(expected[0].sent)

    released = Outbox(), Outbox()
    assert await _release(fresh_database, *released, page=3) == len(expected[0].sent)
    assert wire(released[0]) == wire(expected[0])
    assert await _held(fresh_database) == 0
    # Nothing held any more: the next output is published at once.
    direct = Outbox(), Outbox()
    async with resolver(fresh_database, *direct) as r:
        assert await r.on_mapped_batch([mapped("next", "L1", {"name": "direct"}, at=40)]) == {}
    assert len(direct[0].sent) == 1


async def test_a_tenant_wide_pause_of_one_direction_holds_only_that_direction(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    await _pause(fresh_database, [EVERY_PAIR], [Way.TO_APP])
    outboxes = Outbox(), Outbox()
    async with resolver(fresh_database, *outboxes) as r:
        assert await r.on_mapped_batch(list(stream())) == {}
    assert outboxes[0].sent
    assert outboxes[1].sent == []
    assert await _held_inputs(fresh_database) == []
    # Resuming the pair is not resuming the tenant: the pair stays held under the tenant's pause.
    await _resume(fresh_database, ["partners"], [Way.TO_APP])
    assert await _release(fresh_database, *outboxes) == 0
    await _resume(fresh_database, [EVERY_PAIR], [Way.TO_APP])
    assert await _release(fresh_database, *outboxes) > 0
    assert await _held(fresh_database) == 0


class _PausingOutbox(Outbox):
    """Pauses the pair again once it has published its first page."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        await super().__call__(events)
        await _pause(self._dsn, ["partners"], [Way.TO_CRM])


async def test_a_pause_set_again_stops_the_release_and_two_releasers_never_interleave(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    await _pause(fresh_database, ["partners"], [Way.TO_CRM])
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(list(stream())) == {}
    total = await _held(fresh_database)
    assert total >= 4

    await _resume(fresh_database, ["partners"], [Way.TO_CRM])
    first = _PausingOutbox(fresh_database)
    assert await _release(fresh_database, first, Outbox(), page=2) == 2
    assert await _held(fresh_database) == total - 2

    await _resume(fresh_database, ["partners"], [Way.TO_CRM])
    shared = Outbox(), Outbox()
    counts = await asyncio.gather(*(_release(fresh_database, *shared, page=1) for _ in range(3)))
    assert sum(counts) == total - 2
    # Each output once, in the order held.
    versions = [(c.records[0].link_id, c.records[0].version) for _, c in shared[0].sent]  # type: ignore[attr-defined]
    assert len(set(versions)) == len(versions) == total - 2
    for link in {link for link, _ in versions}:
        mine = [v for lid, v in versions if lid == link]
        assert mine == sorted(mine)


def _bounded(pool: Pool, crm: Outbox, app: Outbox) -> Resolver:
    return Resolver(
        PostgresStore(pool, TenantConfigs(max_staleness=0.0, versions=8)),
        publish_crm=crm,
        publish_app=app,
        service_name="conflict-resolver",
        max_output_size=4096,
    )


async def test_an_output_too_large_to_hold_is_refused_like_a_published_one(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    await _pause(fresh_database, ["partners"], [Way.TO_CRM])
    async with create_pool(PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)) as pool:
        huge = mapped("huge", "L9", {"name": "x" * 5000}, at=1)
        fine = mapped("fine", "L8", {"name": "small"}, at=2)
        refused = await _bounded(pool, Outbox(), Outbox()).on_mapped_batch([huge, fine])
    # Refused alone, at once, as it would have been unpaused: nothing of it is held to fail later.
    assert list(refused) == [0]
    assert "RECORD_TOO_LARGE" in refused[0].reason
    assert await _held(fresh_database) == 1


class _BoundedOutbox(Outbox):
    """Refuses a batch holding an event over ``limit`` bytes before sending any, as the topic's Sender does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        for index, (event, _) in enumerate(events):
            if event.ByteSize() > self._limit:
                raise RecordTooLargeError(index, f"{event.ByteSize()} bytes, over the {self._limit}-byte limit")
        await super().__call__(events)


async def test_a_held_change_whose_output_is_too_large_is_dropped_on_release_with_a_log_row(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    await _pause(fresh_database, ["partners"], BOTH)
    crm, app = _BoundedOutbox(4096), _BoundedOutbox(4096)
    huge = mapped("huge", "L9", {"name": "x" * 5000}, at=1)
    fine = mapped("fine", "L8", {"name": "small"}, at=2)
    async with create_pool(PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)) as pool:
        resolver = _bounded(pool, crm, app)
        # Held undecided, so not refused yet: what it would send is not known before deciding.
        assert await resolver.on_mapped_batch([huge, fine]) == {}
        await _resume(fresh_database, ["partners"], BOTH)
        assert await release_inputs(pool, resolver.release_held) == 2
    assert [c.records[0].link_id for _, c in crm.sent] == ["L8"]  # type: ignore[attr-defined]
    assert await _held_inputs(fresh_database) == []
    rejected = await _with(fresh_database, ("SELECT link_id, code FROM sync_log WHERE event = 'change.rejected'", ()))
    assert [(r["link_id"], r["code"]) for r in rejected] == [("L9", "RECORD_TOO_LARGE")]


async def test_one_round_decides_a_bounded_share_of_a_pairs_held_changes(
    fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    assert len(events) > 4
    await _pause(fresh_database, [EVERY_PAIR], BOTH)
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}
    await _resume(fresh_database, [EVERY_PAIR], BOTH)

    # A backlog is decided round by round, leaving the releaser to other pairs and outputs between.
    monkeypatch.setattr(handlers, "RELEASE_ROUND", 4)
    crm, app = Outbox(), Outbox()
    assert await _release_inputs(fresh_database, crm, app, page=2) == 4
    assert await _held_inputs(fresh_database) == [e.event_id for e in events[4:]]
    decided = 4
    while decided < len(events):
        decided += await _release_inputs(fresh_database, crm, app, page=2)
    assert await _held_inputs(fresh_database) == []
