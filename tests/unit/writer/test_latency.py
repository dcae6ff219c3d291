"""The writer observes origin commit → written (duplex_end_to_end_latency_seconds, stage=written)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from services.common.metrics import Metrics
from services.writer.batching import Operation, RecordWrite
from services.writer.commands import Delivery
from services.writer.inflight import InFlight
from services.writer.payload import ItemError, Outcome, WriteResult
from services.writer.settle import Settlement

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
P = ("crm-writes", 0)
LATENCY = "duplex_end_to_end_latency_seconds"
WRITTEN = {"tenant": "acme", "stage": "written"}
RECORDS = "duplex_writer_records_total"
OUTCOMES = ("succeeded", "rejected")


@dataclass
class Conn:
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    async def execute(self, _sql: str, *args: Any) -> None:
        self.rows.append(args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


@dataclass
class Database:
    conn: Conn = field(default_factory=Conn)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


async def publish(
    message: Any, topic: str, *, key: bytes | None, headers: dict[str, str] | None, no_confirm: bool
) -> Any:
    return asyncio.sleep(0)


async def outcomes(events: Sequence[tuple[Message, bytes]]) -> None:
    pass


def delivery(token: str, origin_seconds_ago: float | None) -> Delivery:
    origin = None if origin_seconds_ago is None else NOW - timedelta(seconds=origin_seconds_ago)
    return Delivery(
        token=token,
        command_id=f"cmd-{token}",
        tenant_id="acme",
        partition=P,
        offset=int(token),
        backfill=False,
        origin_commit_time=origin,
        key=None,
        headers=(),
        timestamp_ms=None,
    )


def write(*tokens: str) -> RecordWrite:
    *folded, last = tokens
    return RecordWrite(
        command_id=last,
        tenant_id="acme",
        crm_object="Account",
        operation=Operation.UPSERT,
        link_id="l1",
        fields={"Name": "Acme"},
        version=1,
        external_id_field="Duplex_Id__c",
        external_id_value="x1",
        command_ids=tuple(folded),
    )


REJECTED = (ItemError("REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]"),)


def settling(
    origins: dict[str, float | None], metrics: Metrics | None, database: Database | None = None
) -> tuple[Settlement, InFlight]:
    """A settlement of one command per token (its origin that many seconds ago), and what is in flight."""
    inflight = InFlight()
    for token, ago in origins.items():
        inflight.received(delivery(token, ago), 1)
    settlement = Settlement(
        publish=publish,
        outcomes=outcomes,
        dead_letter_topic="crm-writes.dlq",
        database=database or Database(),
        inflight=inflight,
        clock=lambda: NOW,
        metrics=metrics,
    )
    return settlement, inflight


@pytest.mark.parametrize(
    ("origins", "outcome", "count", "total"),
    [
        pytest.param([2.5], Outcome.SUCCEEDED, 1, 2.5, id="succeeded with an origin time"),
        pytest.param([None], Outcome.SUCCEEDED, 0, 0.0, id="succeeded without an origin time"),
        pytest.param([2.5], Outcome.REJECTED, 0, 0.0, id="rejected"),
        # Two commands coalesced into one write: each command's change reached Salesforce.
        pytest.param([4.0, 1.0], Outcome.SUCCEEDED, 2, 5.0, id="coalesced commands"),
        pytest.param([4.0, None], Outcome.SUCCEEDED, 1, 4.0, id="coalesced, one without origin"),
        # A clock behind the origin's does not make a negative latency.
        pytest.param([-3.0], Outcome.SUCCEEDED, 1, 0.0, id="origin in the future"),
    ],
)
async def test_a_settled_write_observes_origin_to_written(
    origins: list[float | None], outcome: Outcome, count: int, total: float
) -> None:
    tokens = [str(n) for n in range(len(origins))]
    metrics = Metrics(CollectorRegistry())
    settlement, inflight = settling(dict(zip(tokens, origins, strict=True)), metrics)
    errors = REJECTED if outcome is Outcome.REJECTED else ()

    await settlement.settle("acme", [(WriteResult(write(*tokens), outcome, record_id="001A", errors=errors), 1)])

    assert (metrics.registry.get_sample_value(f"{LATENCY}_count", WRITTEN) or 0) == count
    assert (metrics.registry.get_sample_value(f"{LATENCY}_sum", WRITTEN) or 0) == pytest.approx(total)
    assert inflight.unfinished() == 0
    # One record write settled, counted by its outcome on the service's own registry.
    settled = {o: metrics.registry.get_sample_value(RECORDS, {"tenant": "acme", "outcome": o}) for o in OUTCOMES}
    assert settled[str(outcome)] == 1
    assert sum(v or 0 for v in settled.values()) == 1


async def test_without_metrics_a_write_still_settles() -> None:
    settlement, inflight = settling({"0": 1.0}, None)
    await settlement.settle("acme", [(WriteResult(write("0"), Outcome.SUCCEEDED, record_id="001A"), 1)])
    assert inflight.committable([P]) == {P: 1}


@pytest.mark.parametrize(
    ("origins", "lag_ms"),
    [
        pytest.param({"0": 2.5, "1": 0.25}, 2500, id="the slowest record of the batch"),
        pytest.param({"0": None}, None, id="no origin time: no lag"),
        pytest.param({"0": -3.0}, 0, id="origin in the future"),
    ],
)
async def test_the_batch_row_carries_the_slowest_records_lag(
    origins: dict[str, float | None], lag_ms: int | None
) -> None:
    database = Database()
    settlement, _ = settling(origins, None, database)
    results = [(WriteResult(write(token), Outcome.SUCCEEDED, record_id=f"001{token}"), 1) for token in origins]

    await settlement.settle("acme", results)

    (row,) = [args for args in database.conn.rows if args[2] == "write.succeeded"]
    assert json.loads(row[-1]).get("lag_ms") == lag_ms
