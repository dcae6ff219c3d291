"""cdc-ingest while the governor refuses a tenant's REST calls (issue #14), against the emulator process,
real Kafka and real PostgreSQL: Pub/Sub streaming costs no call, so what needs none keeps arriving in
order; a merge loser's deletion waits in place for budget and then arrives with its master; the
worker is neither failed nor restarted, and nothing is logged at ERROR."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.cdc_ingest.app import RunningCdcIngest, run
from services.common.contract import from_proto
from services.common.governor_client import BudgetUnavailable
from services.common.values import Reference
from tests.integration.cdc_ingest.harness import (
    Harness,
    Tenant,
    configure_tenant,
    create_org,
    in_thread,
    tenant_document,
    wait_backfilled,
    wait_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# How far ahead the refusals say budget is expected: short, so that the waits are seen to end.
NOT_BEFORE = timedelta(seconds=0.5)


class Switch:
    """A CallBudget that grants every call, or refuses every call as the governor does a tenant at its cap."""

    def __init__(self) -> None:
        self.refusing = False
        self.refused = 0

    async def acquire(self, tenant_id: str, calls: int, *, backfill: bool = False) -> None:
        if self.refusing:
            self.refused += 1
            raise BudgetUnavailable(tenant_id, datetime.now(UTC) + NOT_BEFORE, "daily cap reached (test)")

    async def report(self, tenant_id: str, used: int, limit: int) -> None:
        pass


async def filtered_tenant(cdc: Harness) -> Tenant:
    """A tenant syncing Account with a pair filter, so that streamed updates are completed by a REST read."""
    org = create_org(cdc.emulator)
    tenant = Tenant(f"t-{uuid.uuid4().hex[:8]}", org)
    document = tenant_document(tenant.id, org, ["Account"])
    pair = document["spec"]["objects"][0]
    pair["fields"].append({"app": "kind", "salesforce": "Type"})
    pair["filter"] = {"soql": "Type != 'Other'"}
    await configure_tenant(cdc.dsn, document)
    return tenant


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def deletions(changes: list[pb.RecordChanged]) -> list[pb.RecordChanged]:
    return [c for c in changes if c.kind == pb.CHANGE_KIND_DELETE]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def warned(caplog: pytest.LogCaptureFixture, message: str) -> int:
    return sum(r.levelno == logging.WARNING and r.getMessage() == message for r in caplog.records)


def assert_not_restarted(service: RunningCdcIngest, tenant: Tenant, task: asyncio.Task[None]) -> None:
    assert service.supervisor.workers[tenant.id] is task
    assert not task.done()
    assert tenant.id not in service.supervisor.out_of_budget


async def test_out_of_budget_the_stream_goes_on_and_a_merge_waits_for_budget(
    cdc: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.cdc_ingest")
    tenant = await filtered_tenant(cdc)
    org = tenant.org
    sf = org.salesforce()
    master = (await in_thread(sf.Account.create, {"Name": "Acme", "Type": "Prospect"}))["id"]
    loser = (await in_thread(sf.Account.create, {"Name": "Acme Inc.", "Type": "Prospect"}))["id"]
    plain = (await in_thread(sf.Account.create, {"Name": "Deleted the ordinary way", "Type": "Prospect"}))["id"]
    budget = Switch()

    async with (
        cdc.reader() as reader,
        run(cdc.settings(), environ=tenant.secrets, budget_for=lambda _tenant_id: budget) as service,
    ):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        task = service.supervisor.workers[tenant.id]
        budget.refusing = True

        created = (await in_thread(sf.Account.create, {"Name": "Made while refused", "Type": "Prospect"}))["id"]
        await in_thread(sf.Account.update, created, {"Phone": "555-0100"})
        await in_thread(org.merge, "Account", master, loser)
        await in_thread(sf.Account.delete, plain)
        after = (await in_thread(sf.Account.create, {"Name": "After the merge", "Type": "Prospect"}))["id"]

        # Within seconds, with no call granted: the create and the update, left as it came.
        await reader.until(lambda _: len(reader.of(created)) >= 2, within=10)
        update = from_proto(reader.of(created)[1])
        assert update.kind.name == "UPDATE"
        assert update.fields["Phone"] == "555-0100"
        assert "Type" not in update.fields, "the completion was refused: nothing is added"
        # Published and checkpointed before the merge's deletion, which waits for budget in place.
        await wait_checkpoint(cdc.dsn, tenant.id, reader.of(created)[1].source_position.replay_id)
        refused = budget.refused
        await until(lambda: budget.refused >= refused + 3, "the masters read to be refused again")
        assert not deletions(reader.of(loser)) + deletions(reader.of(plain)) + reader.of(after), "nothing passes it"
        assert_not_restarted(service, tenant, task)

        budget.refusing = False
        await reader.until(
            lambda _: bool(deletions(reader.of(loser)) and deletions(reader.of(plain)) and reader.of(after)),
            within=15,
        )
        assert_not_restarted(service, tenant, task)
        # Before the shutdown, whose own noise is not this test's business.
        assert errors(caplog) == []

    (deleted,) = (from_proto(c) for c in deletions(reader.of(loser)))
    assert deleted.fields == {"MasterRecordId": Reference(master)}
    (ordinary,) = (from_proto(c) for c in deletions(reader.of(plain)))
    assert not ordinary.fields
    order = [(c.record_id, c.kind) for c in reader.changes]
    delete = pb.CHANGE_KIND_DELETE
    assert order.index((loser, delete)) < order.index((plain, delete)) < order.index((after, pb.CHANGE_KIND_CREATE))
    assert [c.kind for c in reader.of(after)] == [pb.CHANGE_KIND_CREATE]
    # One warning each, however many events and retries the refusals met.
    assert warned(caplog, "tenant out of API budget: merge masters wait for budget") == 1
    assert warned(caplog, "tenant out of API budget: streamed updates of filtered objects left as they came") == 1


async def test_a_worker_started_out_of_budget_streams_with_the_stored_describe(
    cdc: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.cdc_ingest")
    tenant = await cdc.tenant(["Account"])
    org = tenant.org
    sf = org.salesforce()
    master = (await in_thread(sf.Account.create, {"Name": "Acme"}))["id"]
    loser = (await in_thread(sf.Account.create, {"Name": "Acme Inc."}))["id"]
    plain = (await in_thread(sf.Account.create, {"Name": "Deleted the ordinary way"}))["id"]
    budget = Switch()

    async with cdc.reader() as reader:
        async with run(cdc.settings(), environ=tenant.secrets, budget_for=lambda _tenant_id: budget):
            await wait_backfilled(cdc.dsn, tenant.id, 1)
            first = (await in_thread(sf.Account.create, {"Name": "Before the stop"}))["id"]
            await reader.until(lambda _: bool(reader.of(first)))
            await wait_checkpoint(cdc.dsn, tenant.id, reader.of(first)[0].source_position.replay_id)
        # Made while nobody listens, so that the restarted stream gets them in one FetchResponse.
        created = (await in_thread(sf.Account.create, {"Name": "Made while down", "AnnualRevenue": 1250000}))["id"]
        await in_thread(sf.Account.update, created, {"AnnualRevenue": 990000})
        await in_thread(org.merge, "Account", master, loser)
        await in_thread(sf.Account.delete, plain)
        after = (await in_thread(sf.Account.create, {"Name": "After the merge"}))["id"]

        budget.refusing = True
        async with run(cdc.settings(), environ=tenant.secrets, budget_for=lambda _tenant_id: budget) as service:
            await until(lambda: tenant.id in service.supervisor.workers, "the worker to start")
            task = service.supervisor.workers[tenant.id]
            # Within seconds, with no call granted, and checkpointed before the merge's deletion.
            await reader.until(lambda _: len(reader.of(created)) >= 2, within=10)
            await wait_checkpoint(cdc.dsn, tenant.id, reader.of(created)[1].source_position.replay_id)
            refused = budget.refused
            await until(lambda: budget.refused >= refused + 3, "the masters read to be refused again")
            assert not deletions(reader.of(loser)) + deletions(reader.of(plain)) + reader.of(after)
            assert_not_restarted(service, tenant, task)

            budget.refusing = False
            await reader.until(
                lambda _: bool(deletions(reader.of(loser)) and deletions(reader.of(plain)) and reader.of(after)),
                within=15,
            )
            assert_not_restarted(service, tenant, task)
            assert errors(caplog) == []

    create, update = (from_proto(c) for c in reader.of(created))
    # Typed by the stored describe (currency), not by the event's wire type (double).
    assert isinstance(create.fields["AnnualRevenue"], Decimal)
    assert create.fields["AnnualRevenue"] == Decimal(1250000)
    assert update.fields["AnnualRevenue"] == Decimal(990000)
    (deleted,) = (from_proto(c) for c in deletions(reader.of(loser)))
    assert deleted.fields == {"MasterRecordId": Reference(master)}
    (ordinary,) = (from_proto(c) for c in deletions(reader.of(plain)))
    assert not ordinary.fields
    assert warned(caplog, "tenant out of API budget at start; using the stored describes") == 1
    assert (
        warned(
            caplog,
            "no API budget to read the org's CDC selection; every object configured for streaming is streamed"
            " until the worker's next start",
        )
        == 1
    )
    assert warned(caplog, "tenant out of API budget: merge masters wait for budget") == 1
