"""What cdc-ingest does with the governor's refusals (issue #14), with in-memory parts: waits last until
the governor's not_before and are warned about once per episode; the stream publishes and
checkpoints everything before a deletion whose merge master it must read, then waits for budget;
updates whose completion is refused go out as they came; polls and jobs wait and carry on; a
worker whose objects were never described cannot start without budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.cdc_ingest.contract import RecordChanged
from services.cdc_ingest.cursor import Cursor
from services.cdc_ingest.filters import UpdateCompleter
from services.cdc_ingest.handover import Snapshots
from services.cdc_ingest.jobs import JobRunner
from services.cdc_ingest.polling import Poller
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.pubsub import Start
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.repair import Repairs
from services.cdc_ingest.rest import LEAST_BUDGET_WAIT_SECONDS, BudgetEpisode, SalesforceRest, seconds_until
from services.cdc_ingest.selection import Objects
from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.sink import ChangeSink
from services.cdc_ingest.store import Store
from services.cdc_ingest.stream import Stream, StreamState, _Event
from services.cdc_ingest.translate import read_change
from services.cdc_ingest.typed import FieldInfo
from services.cdc_ingest.worker import TenantWorker
from services.common.change import ChangeKind
from services.common.contract import from_proto
from services.common.governor_client import BudgetUnavailable
from services.common.jobs import Job
from services.common.retry import RetryPolicy
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.common.values import Reference

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = CdcIngestSettings(
    kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
    postgres=PostgresSettings(dsn="postgresql://127.0.0.1:9/duplex"),
)


def refusal(seconds: float = 30, now: datetime | None = None) -> BudgetUnavailable:
    """A refusal saying budget is expected ``seconds`` from ``now`` (the real now when None)."""
    return BudgetUnavailable("acme", (now or datetime.now(UTC)) + timedelta(seconds=seconds), "daily cap reached")


def config(*, soql: str | None = None) -> Any:
    pair: dict[str, Any] = {
        "name": "account",
        "app": {"object": "account"},
        "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
        "fields": [{"app": "name", "salesforce": "Name"}],
    }
    if soql is not None:
        pair["filter"] = {"soql": soql}
    return parse_tenant_config(
        {
            "apiVersion": "duplex.dev/v1",
            "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {
                "salesforce": {
                    "instanceUrl": "https://acme.example",
                    "apiVersion": "62.0",
                    "auth": {
                        "mode": "password",
                        "clientId": "c",
                        "clientSecret": {"secretRef": {"env": "S"}},
                        "username": "u",
                        "password": {"secretRef": {"env": "P"}},
                    },
                    "dailyApiCap": 1000,
                },
                "sync": {"cdc": True},
                "objects": [pair],
            },
        }
    )


def change(record_id: str, kind: ChangeKind, **values: Any) -> pb.RecordChanged:
    return read_change(
        tenant_id="acme",
        entity="Account",
        record_id=record_id,
        values=values,
        modstamp=T0,
        kind=kind,
        cursor="",
        channel="/data/ChangeEvents",
    )


class Sleeps:
    """Records each wait; ends the loop under test after ``stop_after`` of them."""

    def __init__(self, stop_after: int = 1_000) -> None:
        self.slept: list[float] = []
        self._stop_after = stop_after

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        if len(self.slept) >= self._stop_after:
            raise asyncio.CancelledError


# --- the waits and their warnings ----------------------------------------------------------------


def test_a_wait_lasts_until_not_before_and_never_less_than_the_least() -> None:
    assert seconds_until(T0 + timedelta(seconds=42), T0) == 42
    assert seconds_until(T0 - timedelta(seconds=5), T0) == LEAST_BUDGET_WAIT_SECONDS
    assert seconds_until(T0, T0) == LEAST_BUDGET_WAIT_SECONDS


async def test_an_episode_is_warned_about_once_and_a_new_one_again(caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    episode = BudgetEpisode("acme", "polls wait", sleep=sleeps, clock=lambda: T0)
    with caplog.at_level(logging.INFO, logger="services.cdc_ingest.rest"):
        for _ in range(3):
            await episode.wait(refusal(30, T0))
        episode.note(refusal(30, T0))
        episode.granted()
        episode.granted()
        await episode.wait(refusal(5, T0))
    assert sleeps.slept == [30, 30, 30, 5]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "tenant out of API budget: polls wait"),
        (logging.INFO, "API budget back: polls wait"),
        (logging.WARNING, "tenant out of API budget: polls wait"),
    ]
    assert not any(r.exc_info for r in caplog.records)


# --- the stream ----------------------------------------------------------------------------------


class Rest:
    """Account, mergeable and described; its queryAll refused until ``refusing`` is cleared."""

    def __init__(self, recycle_bin: dict[str, str]) -> None:
        self.recycle_bin = recycle_bin
        self.refusing = True
        self.refused = 0

    def knows(self, entity: str) -> bool:
        return True

    async def mergeable(self, entity: str) -> bool:
        return True

    async def query(
        self, soql: str, *, all_rows: bool = False, backfill: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        if self.refusing:
            self.refused += 1
            raise refusal()
        for record_id, master in self.recycle_bin.items():
            if f"'{record_id}'" in soql:
                yield {"Id": record_id, "MasterRecordId": master}


class Log:
    """Publishes and checkpoints, in the order they happen."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []

    async def publish(self, changes: list[RecordChanged], source: str) -> None:
        if changes:
            self.steps.append(("publish", [(c.record_id, c.kind) for c in changes]))

    async def save_checkpoint(self, tenant_id: str, channel: str, replay_id: bytes, commit: datetime | None) -> None:
        self.steps.append(("checkpoint", replay_id))


def stream(rest: Rest, log: Log, sleep: Sleeps) -> Stream:
    return Stream(
        tenant_id="acme",
        settings=SETTINGS,
        rest=cast(SalesforceRest, rest),
        pubsub_factory=cast(Any, None),
        store=cast(Store, log),
        publisher=cast(Publisher, log),
        repairs=cast(Repairs, None),
        objects=Objects(streamed=["Account"], polled=[]),
        snapshots=Snapshots("duplex"),
        reconnect=RetryPolicy(base_delay=0.1, max_delay=1.0, max_attempts=None),
        sleep=sleep,
    )


async def test_everything_before_a_merge_losers_deletion_goes_out_before_it_waits_for_budget() -> None:
    rest, log = Rest({"001L": "001W"}), Log()

    async def sleep(seconds: float) -> None:
        # Budget returns while the stream waits: what it published and checkpointed is already out.
        log.steps.append(("wait", seconds))
        rest.refusing = False

    events = [
        _Event(b"\x01", T0, [change("001A", ChangeKind.CREATE, Name="Acme")]),
        _Event(b"\x02", T0, [change("001A", ChangeKind.UPDATE, Name="Acme 2")]),
        _Event(b"\x03", T0, [change("001L", ChangeKind.DELETE)]),
        _Event(b"\x04", T0, [change("001B", ChangeKind.CREATE, Name="Later")]),
    ]
    state = StreamState(Start.latest())
    await stream(rest, log, cast(Sleeps, sleep))._flush(events, state)

    create, update, delete = pb.CHANGE_KIND_CREATE, pb.CHANGE_KIND_UPDATE, pb.CHANGE_KIND_DELETE
    published, checkpointed, (waited, seconds), *rest_of_it = log.steps
    assert (published, checkpointed, waited) == (
        ("publish", [("001A", create), ("001A", update)]),
        ("checkpoint", b"\x02"),
        "wait",
    )
    # Until the governor's not_before, 30 s after the refusal.
    assert 29 < seconds <= 30
    assert rest_of_it == [("publish", [("001L", delete), ("001B", create)]), ("checkpoint", b"\x04")]
    assert rest.refused == 1
    assert from_proto(events[2].changes[0]).fields == {"MasterRecordId": Reference("001W")}
    assert state.start == Start.after(b"\x04")


async def test_a_refused_deletion_first_in_line_publishes_nothing_until_budget_returns() -> None:
    rest, log = Rest({}), Log()
    waits = 0

    async def sleep(seconds: float) -> None:
        nonlocal waits
        waits += 1
        if waits == 3:
            rest.refusing = False

    events = [_Event(b"\x07", T0, [change("001X", ChangeKind.DELETE)])]
    await stream(rest, log, cast(Sleeps, sleep))._flush(events, StreamState(Start.latest()))
    # Asked again after each wait, and published (a plain deletion, no master) once it was granted.
    assert (rest.refused, waits) == (3, 3)
    assert log.steps == [("publish", [("001X", pb.CHANGE_KIND_DELETE)]), ("checkpoint", b"\x07")]


# --- updates completed for filters ---------------------------------------------------------------


class RefusingRest:
    def __init__(self) -> None:
        self.asked = 0

    async def fields(self, entity: str, *, refresh: bool = False) -> dict[str, FieldInfo]:
        self.asked += 1
        raise refusal()


async def test_updates_whose_completion_is_refused_go_out_as_they_came(caplog: pytest.LogCaptureFixture) -> None:
    rest = RefusingRest()
    completer = UpdateCompleter(config(soql="Type = 'Customer'"), cast(SalesforceRest, rest), cast(RecordReader, None))
    batches = [[change("001A", ChangeKind.UPDATE, Phone="1")], [change("001B", ChangeKind.UPDATE, Phone="2")]]
    with caplog.at_level(logging.INFO, logger="services.cdc_ingest"):
        for batch in batches:
            await completer.complete(batch)
    assert rest.asked == 2
    assert [from_proto(b[0]).fields for b in batches] == [{"Phone": "1"}, {"Phone": "2"}]
    assert [r.getMessage() for r in caplog.records] == [
        "tenant out of API budget: streamed updates of filtered objects left as they came"
    ]


# --- polls and jobs ------------------------------------------------------------------------------


class Reader:
    """Refuses the first ``refusals`` reads, then reads nothing."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.reads = 0

    async def read_window(self, *args: Any, **kwargs: Any) -> int:
        self.reads += 1
        if self.reads <= self.refusals:
            raise refusal(45)
        return 0


class Cursors:
    async def poll_cursor(self, tenant_id: str, entity: str) -> Cursor:
        return Cursor(T0)


async def test_a_refused_poll_waits_for_budget_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    reader = Reader(refusals=2)
    sleeps = Sleeps(stop_after=3)
    poller = Poller(
        tenant_id="acme",
        interval_seconds=5,
        overlap=timedelta(seconds=2),
        store=cast(Store, Cursors()),
        reader=cast(RecordReader, reader),
        reconnect=RetryPolicy(base_delay=0.1, max_delay=1.0, max_attempts=None),
        sleep=sleeps,
    )
    with caplog.at_level(logging.WARNING, logger="services.cdc_ingest"), pytest.raises(asyncio.CancelledError):
        await poller.poll_forever("Account")
    # Two waits until not_before (45 s off), then the interval after the poll that went through.
    assert len(sleeps.slept) == 3
    assert all(44 < s <= 45 for s in sleeps.slept[:2]), sleeps.slept
    assert sleeps.slept[2] == 5
    assert reader.reads == 3
    assert [r.getMessage() for r in caplog.records] == ["tenant out of API budget: polls of Account wait for budget"]
    assert not any(r.exc_info for r in caplog.records)


class Polls:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.polls = 0

    async def poll_once(self, entity: str, recent: Any = None) -> int:
        self.polls += 1
        if self.polls <= self.refusals:
            raise refusal()
        return 3


async def test_a_refused_job_waits_for_budget_and_finishes() -> None:
    polls = Polls(refusals=2)
    sleeps = Sleeps()
    runner = JobRunner(
        tenant_id="acme",
        config=config(),
        store=cast(Store, None),
        objects=Objects(streamed=[], polled=["Account"]),
        poller=cast(Poller, polls),
        backfiller=cast(Any, None),
        reconciler=cast(Any, None),
        every_seconds=1,
        sleep=sleeps,
    )
    job = cast(Job, type("J", (), {"id": 7, "kind": "poll", "trigger": "api", "object_pair": "account"})())
    done = await runner._budgeted(job, config().spec.objects[0])
    assert done == (3, None, {"published": 3})
    assert polls.polls == 3
    assert len(sleeps.slept) == 2
    assert all(29 < s <= 30 for s in sleeps.slept), sleeps.slept


# --- the worker's start --------------------------------------------------------------------------


class Describes:
    """Every describe refused."""

    async def fields(self, entity: str, *, refresh: bool = False) -> dict[str, FieldInfo]:
        raise refusal(12)


class NoStoredDescribes:
    """A pool whose crm_schema_objects holds nothing for the tenant."""

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        class Db:
            async def fetch(self, *args: Any) -> list[Any]:
                return []

        yield Db()


async def test_a_worker_whose_objects_were_never_described_waits_for_budget_to_start() -> None:
    store = type("S", (), {"pool": NoStoredDescribes()})()
    worker = TenantWorker(
        tenant_id="acme",
        config=config(),
        settings=SETTINGS,
        rest=cast(SalesforceRest, Describes()),
        pubsub_factory=cast(Any, None),
        store=cast(Store, store),
        sink=cast(ChangeSink, None),
    )
    with pytest.raises(BudgetUnavailable) as refused:
        await worker.describe_all()
    # The supervisor's out-of-budget path then waits for this.
    assert timedelta(seconds=11) < refused.value.not_before - datetime.now(UTC) <= timedelta(seconds=12)
    assert "never described: ['Account']" in str(refused.value)


class Finished:
    """A Pub/Sub client whose call the server ended while the stream waited (grpc's InvalidStateError)."""

    async def subscribe(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise asyncio.InvalidStateError("RPC already finished.")
        yield


async def test_a_call_ended_while_the_stream_waited_is_a_reconnect_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OrgId:
        async def org_id(self) -> str:
            return "00D000000000001"

    async def finished(_org_id: str) -> Any:
        return Finished()

    subject = Stream(
        tenant_id="acme",
        settings=SETTINGS,
        rest=cast(SalesforceRest, OrgId()),
        pubsub_factory=finished,
        store=cast(Store, None),
        publisher=cast(Publisher, None),
        repairs=cast(Repairs, None),
        objects=Objects(streamed=["Account"], polled=[]),
        snapshots=Snapshots("duplex"),
        reconnect=RetryPolicy(base_delay=0.1, max_delay=1.0, max_attempts=None),
        sleep=Sleeps(stop_after=1),
    )
    with caplog.at_level(logging.INFO, logger="services.cdc_ingest"), pytest.raises(asyncio.CancelledError):
        await subject.run(StreamState(Start.latest()))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "pubsub stream failed")]
