"""Pauses against the real database: what the resolver decides for a paused pair and direction is
held in the deciding transaction, and released after the resume in the order it was decided, with
later outputs queued behind it; a pause set again stops a release; two releasers never interleave."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest
from google.protobuf.message import Message
from pydantic import SecretStr

from services.common.config_provider import TenantConfigs
from services.common.db import create_pool
from services.common.pauses import EVERY_PAIR, Way, held_of, pause, resume
from services.common.settings import PostgresSettings
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.holding import release
from services.conflict_resolver.repository import PostgresStore
from tests.e2e.sync.harness import TENANT, prepare_database
from tests.integration.conflict_resolver.test_resolver_batches import Outbox, mapped, reset, resolver, stream, wire

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


async def _release(dsn: str, crm: Outbox, app: Outbox, *, page: int = 500) -> int:
    async with create_pool(PostgresSettings(dsn=SecretStr(dsn), pool_max_size=2)) as pool:
        return await release(pool, {Way.TO_CRM: crm, Way.TO_APP: app}, "conflict-resolver", page=page)


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


async def test_a_paused_pair_is_held_and_released_in_order_with_later_outputs_behind(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    events = list(stream())
    later = mapped("late", "L0", {"name": "after the resume"}, at=30)

    # What the events publish when nothing is paused.
    expected = Outbox(), Outbox()
    async with resolver(fresh_database, *expected) as r:
        assert await r.on_mapped_batch([*events, later]) == {}
    assert expected[0].sent
    assert expected[1].sent

    await reset(fresh_database)
    await _pause(fresh_database, ["partners"], BOTH)
    paused = Outbox(), Outbox()
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch(events[:4]) == {}
        assert await r.on_mapped_batch(events[4:]) == {}
    assert paused[0].sent == []
    assert paused[1].sent == []
    conn = await asyncpg.connect(fresh_database)
    try:
        holds = {(h.object_pair, h.way): h.outputs for h in await held_of(conn, TENANT)}
        details = [
            r["d"] for r in await conn.fetch("SELECT detail::text AS d FROM sync_log WHERE event = 'change.resolved'")
        ]
    finally:
        await conn.close()
    assert set(holds) == {("partners", Way.TO_CRM), ("partners", Way.TO_APP)}
    assert any('"held": true' in d for d in details)

    # Resumed, but not released yet: a later output queues behind the held ones.
    await _resume(fresh_database, ["partners"], BOTH)
    async with resolver(fresh_database, *paused) as r:
        assert await r.on_mapped_batch([later]) == {}
    assert paused[0].sent == []
    assert paused[1].sent == []
    assert await _held(fresh_database) == len(expected[0].sent) + len(expected[1].sent)

    released = Outbox(), Outbox()
    assert await _release(fresh_database, *released, page=3) == len(expected[0].sent) + len(expected[1].sent)
    assert wire(released[0]) == wire(expected[0])
    assert wire(released[1]) == wire(expected[1])
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


async def test_an_output_too_large_to_release_is_refused_like_a_published_one(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    await _pause(fresh_database, ["partners"], BOTH)
    async with create_pool(PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2)) as pool:
        resolver = Resolver(
            PostgresStore(pool, TenantConfigs(max_staleness=0.0, versions=8)),
            publish_crm=Outbox(),
            publish_app=Outbox(),
            service_name="conflict-resolver",
            max_output_size=4096,
        )
        huge = mapped("huge", "L9", {"name": "x" * 5000}, at=1)
        fine = mapped("fine", "L8", {"name": "small"}, at=2)
        refused = await resolver.on_mapped_batch([huge, fine])
    # Refused alone, at once, as it would have been unpaused: nothing of it is held to fail later.
    assert list(refused) == [0]
    assert "RECORD_TOO_LARGE" in refused[0].reason
    assert await _held(fresh_database) == 1
