"""The version rules: a write at or below the version applied to its link is never sent again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from duplex.writer.v1 import write_settled_pb2
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from services.common.metrics import Metrics
from services.writer.batching import Batch, Ingestion, Operation, RecordWrite, coalesce
from services.writer.commands import Delivery
from services.writer.contract import WriteSettled
from services.writer.inflight import InFlight
from services.writer.payload import Outcome, WriteResult
from services.writer.settle import Settlement
from services.writer.tenant import TenantOptions, TenantResources, TenantWriter
from services.writer.versions import highest, superseded, unapplied

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def write(version: int, link: str = "l1", token: str | None = None, **fields: object) -> RecordWrite:
    return RecordWrite(
        command_id=token or f"c{version}",
        tenant_id="acme",
        crm_object="Account",
        operation=Operation.UPDATE,
        link_id=link,
        fields=fields or {"Name": f"v{version}"},  # type: ignore[arg-type]
        version=version,
        record_id=f"001{link}",
    )


@pytest.mark.parametrize(
    ("version", "applied", "expected"),
    [
        pytest.param(3, {}, False, id="nothing applied yet"),
        pytest.param(3, {"l1": 2}, False, id="newer than the applied one"),
        pytest.param(3, {"l1": 3}, True, id="the applied one again (a duplicate)"),
        pytest.param(2, {"l1": 3}, True, id="older than the applied one (a replay)"),
        pytest.param(2, {"other": 9}, False, id="another link's version"),
        pytest.param(0, {"l1": 3}, False, id="unversioned (an old producer) is always sent"),
    ],
)
def test_superseded(version: int, applied: dict[str, int], expected: bool) -> None:
    assert superseded(write(version), applied) is expected


def test_highest_is_per_link_and_leaves_unversioned_writes_out() -> None:
    writes = [write(2), write(5), write(3), write(4, link="l2"), write(0, link="l3")]

    assert highest(writes) == {"l1": 5, "l2": 4}


def test_an_older_write_coalesced_after_a_newer_one_changes_nothing() -> None:
    newer = write(5, Name="new", Phone="1")
    older = write(3, Name="old", Website="w")

    merged = coalesce(newer, older)

    assert (merged.version, dict(merged.fields)) == (5, {"Name": "new", "Phone": "1"})
    # The replay still gets its outcome; the newer command stays the one whose values were sent.
    assert set(merged.all_command_ids) == {"c3", "c5"}
    assert merged.command_id == "c5"


def test_an_unversioned_write_coalesces_as_before() -> None:
    merged = coalesce(write(5, Name="new"), write(0, Name="later"))

    assert merged.fields == {"Name": "later"}


# ----------------------------------------------------------------------------- the tenant loop


@dataclass
class Versions:
    applied_to: dict[str, int]
    asked: list[set[str]] = field(default_factory=list)

    async def applied(self, tenant_id: str, link_ids: Collection[str]) -> Mapping[str, int]:
        self.asked.append(set(link_ids))
        return {k: v for k, v in self.applied_to.items() if k in link_ids}


@dataclass
class Executor:
    sent: list[Batch] = field(default_factory=list)

    async def execute(self, batch: Batch, *, backfill: bool = False) -> list[WriteResult]:
        self.sent.append(batch)
        return [WriteResult(w, Outcome.SUCCEEDED, record_id=w.record_id) for w in batch.writes]


@dataclass
class Settler:
    settled: list[WriteResult] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def settle(self, tenant_id: str, settled: list[tuple[WriteResult, int]]) -> None:
        self.settled.extend(r for r, _ in settled)
        if len(self.settled) >= self.expected:
            self.done.set()


async def test_superseded_writes_are_settled_without_a_call_and_the_others_are_sent() -> None:
    executor, settler = Executor(), Settler(expected=3)
    versions = Versions({"dup": 4, "old": 7, "new": 1})

    async def resources() -> TenantResources:
        return TenantResources(executor, Ingestion.REST)

    writer = TenantWriter(
        "acme",
        resources=resources,
        settler=settler,
        versions=versions,
        deliveries=InFlight(),
        options=TenantOptions(window=timedelta(milliseconds=1), max_wait=timedelta(milliseconds=1)),
    )
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        writer.submit([write(4, link="dup"), write(6, link="old"), write(2, link="new")], [])
        async with asyncio.timeout(5):
            await settler.done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    outcomes = {r.write.link_id: r.outcome for r in settler.settled}
    assert outcomes == {"dup": Outcome.SUPERSEDED, "old": Outcome.SUPERSEDED, "new": Outcome.SUCCEEDED}
    assert [[w.link_id for w in b.writes] for b in executor.sent] == [["new"]]
    assert versions.asked == [{"dup", "old", "new"}]


async def test_a_batch_of_replays_only_costs_no_call() -> None:
    executor, settler = Executor(), Settler(expected=1)

    async def resources() -> TenantResources:
        return TenantResources(executor, Ingestion.REST)

    writer = TenantWriter(
        "acme",
        resources=resources,
        settler=settler,
        versions=Versions({"l1": 9}),
        deliveries=InFlight(),
        options=TenantOptions(window=timedelta(milliseconds=1), max_wait=timedelta(milliseconds=1)),
    )
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        writer.submit([write(9)], [])
        async with asyncio.timeout(5):
            await settler.done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert [r.outcome for r in settler.settled] == [Outcome.SUPERSEDED]
    assert executor.sent == []


# ----------------------------------------------------------------------------- settlement


@dataclass
class Conn:
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    async def execute(self, sql: str, *args: Any) -> None:
        self.statements.append((sql, args))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


@dataclass
class Database:
    conn: Conn = field(default_factory=Conn)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


async def test_settling_raises_applied_versions_and_logs_and_counts_the_superseded() -> None:
    published: list[Any] = []

    async def publish(
        message: Any, topic: str, *, key: bytes | None, headers: dict[str, str] | None, no_confirm: bool
    ) -> Any:
        published.append(message)
        return asyncio.sleep(0)

    async def outcomes(events: Sequence[tuple[Message, bytes]]) -> None:
        published.extend(event for event, _ in events)

    inflight = InFlight()
    for token in ("1", "2", "3"):
        inflight.received(
            Delivery(token, f"cmd-{token}", "acme", ("crm-writes", 0), int(token), False, None, None, (), None), 1
        )
    metrics = Metrics(CollectorRegistry())
    database = Database()
    settlement = Settlement(
        publish=publish,
        outcomes=outcomes,
        dead_letter_topic="crm-writes.dlq",
        database=database,
        inflight=inflight,
        clock=lambda: NOW,
        metrics=metrics,
    )

    await settlement.settle(
        "acme",
        [
            (WriteResult(write(5, token="1"), Outcome.SUCCEEDED, record_id="001l1"), 1),
            (WriteResult(write(2, link="l2", token="2"), Outcome.SUPERSEDED, record_id="001l2"), 0),
            (WriteResult(write(0, link="l3", token="3"), Outcome.SUCCEEDED, record_id="001l3"), 1),
        ],
    )

    statuses = {m.link_id: m.status for m in published if isinstance(m, WriteSettled)}
    assert statuses == {
        "l1": write_settled_pb2.WRITE_STATUS_SUCCEEDED,
        "l2": write_settled_pb2.WRITE_STATUS_SUPERSEDED,
        "l3": write_settled_pb2.WRITE_STATUS_SUCCEEDED,
    }
    [raised] = [args for sql, args in database.conn.statements if "writer_applied_versions" in sql]
    # Only versioned writes that succeeded raise their link's applied version.
    assert raised == ("acme", ["l1"], [5])
    events = [args[2] for sql, args in database.conn.statements if "sync_log" in sql]
    assert sorted(events) == ["write.succeeded", "write.superseded"]
    counted = metrics.registry.get_sample_value(
        "duplex_writer_records_total", {"tenant": "acme", "outcome": "superseded"}
    )
    assert counted == 1
    assert inflight.unfinished() == 0


def test_a_replay_folded_into_a_newer_write_sends_only_what_is_not_applied() -> None:
    """v11 (Notes) was applied; its replay is pending when v12 (Phone) arrives and folds it in. The
    Salesforce user has since changed Notes: sending v11's Notes again would overwrite that edit."""
    folded = coalesce(write(11, Notes="app value"), write(12, Phone="555"))
    assert folded.version == 12
    assert (folded.version_of("Notes"), folded.version_of("Phone")) == (11, 12)

    left = unapplied(folded, {"l1": 11})
    assert left is not None
    assert left.fields == {"Phone": "555"}
    assert left.all_command_ids == folded.all_command_ids  # both commands still get their outcome
    # Nothing applied yet: the whole write goes; everything applied: nothing does.
    assert unapplied(folded, {}) == folded
    assert unapplied(folded, {"l1": 12}) is None
    assert unapplied(coalesce(write(11, Notes="a"), write(12, Notes="b")), {"l1": 11}) == coalesce(
        write(11, Notes="a"), write(12, Notes="b")
    )
