"""Backfill on first connection: REST or Bulk 2.0 by record count, resumable after a stop."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
from datetime import datetime

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2 as pb
from typer.testing import CliRunner, Result

from services.admin.auth import Role
from services.admin.cli import app as cli
from tests.fixtures.telemetry import local_telemetry
from tests.integration.admin_api.harness import serving
from tests.integration.cdc_ingest.harness import (
    CALL_OPTIONS_CLIENT,
    Harness,
    Tenant,
    in_thread,
    sync_log,
    wait_backfilled,
    wait_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RECORDS = 3000
PAGE = 500


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("bulk", {"bulk_threshold": 1000, "bulk_page_size": PAGE}),
        ("rest", {"bulk_threshold": 1_000_000, "poll_page_size": PAGE}),
    ],
)
async def test_backfill_resumes_after_a_stop_without_starting_over(
    method: str, overrides: dict[str, int], cdc: Harness
) -> None:
    tenant = await cdc.tenant(["Account"])
    sf = tenant.org.salesforce()
    await in_thread(sf.bulk2.Account.insert, records=[{"Name": f"Existing {i:05d}"} for i in range(RECORDS)], wait=0.2)
    # No overlap: the stream that takes over skips every event the snapshots already cover, so
    # everything seen here comes from the backfill.
    config = cdc.settings(poll_overlap_seconds=0, **overrides)

    telemetry = local_telemetry("cdc-ingest")
    async with cdc.reader() as reader:
        async with cdc.running(tenant, config):
            await reader.until(lambda changes: len(changes) >= RECORDS // 3, within=60)
        stopped_at = len(reader.changes)
        assert stopped_at < RECORDS, "stopped too late to show a resume"
        async with cdc.running(tenant, config, telemetry=telemetry):
            await wait_backfilled(cdc.dsn, tenant.id, 1, within=90)
            await reader.until(lambda changes: len({c.record_id for c in changes}) >= RECORDS, within=30)

    assert {c.kind for c in reader.changes} == {pb.CHANGE_KIND_SNAPSHOT}
    assert {c.source_position.channel for c in reader.changes} == {"backfill:Account"}
    assert all(c.source_position.cursor for c in reader.changes)
    assert len({c.record_id for c in reader.changes}) == RECORDS
    # Resumed: at most the page in flight at the stop was published twice.
    assert len(reader.changes) <= RECORDS + PAGE
    connection = await asyncpg.connect(cdc.dsn)
    try:
        row = await connection.fetchrow("SELECT * FROM backfills WHERE tenant_id = $1", tenant.id)
    finally:
        await connection.close()
    assert (row["status"], row["method"]) == ("done", method)
    started = [r for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "cdc.backfill.started"]
    assert len(started) == 1
    assert started[0]["detail"]["records"] == RECORDS
    registry = telemetry.registry
    ingested = registry.get_sample_value(
        "duplex_cdc_events_ingested_total", {"tenant": tenant.id, "source": "backfill"}
    )
    assert ingested is not None
    assert 0 < ingested <= RECORDS
    # Snapshots are dated by the records' last edit: they say nothing of how far behind the
    # stream is, so a backfill sets no lag.
    assert registry.get_sample_value("duplex_cdc_lag_seconds", {"tenant": tenant.id}) is None


def salesforce_clock(tenant: Tenant) -> datetime:
    """The emulator's clock, as Salesforce tells it: the ``Date`` of an answer."""
    return email.utils.parsedate_to_datetime(tenant.org.emulator.admin("GET", "/orgs").headers["Date"])


async def test_the_stream_takes_over_without_sending_again_what_the_snapshots_carried(cdc: Harness) -> None:
    tenant = await cdc.tenant(["Account"])
    loaded = [{"Name": f"Loaded {i:03d}"} for i in range(200)]
    await in_thread(tenant.org.salesforce().bulk2.Account.insert, records=loaded, wait=0.2)
    sf, ours = tenant.org.salesforce(), tenant.org.salesforce(client=CALL_OPTIONS_CLIENT)
    edited = (await in_thread(sf.Account.create, {"Name": "Edited before"}))["id"]
    await in_thread(sf.Account.update, edited, {"Name": "Edited before, twice"})
    echoed = (await in_thread(ours.Account.create, {"Name": "Written by Duplex"}))["id"]
    # The hand-over covers what committed before the backfill's first answer, by Salesforce's
    # clock in whole seconds: let that clock pass the second of the last edit.
    edits_done = await in_thread(salesforce_clock, tenant)
    for _ in range(40):
        if await in_thread(salesforce_clock, tenant) > edits_done:
            break
        await asyncio.sleep(0.05)
    # The default overlap: the stream begins well before the backfill, in the middle of the load.
    config = cdc.settings(poll_overlap_seconds=300)

    async with cdc.reader() as reader, cdc.running(tenant, config):
        await wait_backfilled(cdc.dsn, tenant.id, 1)
        await reader.until(lambda changes: len({c.record_id for c in changes}) >= len(loaded) + 2, within=60)
        await in_thread(sf.Account.update, edited, {"Name": "Edited after"})
        await reader.until(lambda _: any(c.fields["Name"].string_value == "Edited after" for c in reader.of(edited)))
        await wait_checkpoint(cdc.dsn, tenant.id, reader.of(edited)[-1].source_position.replay_id)
        await reader.drained()

    by_record: dict[str, list[int]] = {}
    for c in reader.changes:
        by_record.setdefault(c.record_id, []).append(c.kind)
    snapshot_only = [pb.CHANGE_KIND_SNAPSHOT]
    # Every record edited before the backfill came once, as its snapshot, ...
    assert sum(kinds == snapshot_only for kinds in by_record.values()) == len(loaded)
    # ... an edit after it came by the stream, ...
    assert by_record[edited] == [pb.CHANGE_KIND_SNAPSHOT, pb.CHANGE_KIND_UPDATE]
    assert [c.fields["Name"].string_value for c in reader.of(edited)] == ["Edited before, twice", "Edited after"]
    # ... and Duplex's own write came again, tagged, so that the resolver learns it landed.
    assert by_record[echoed] == [pb.CHANGE_KIND_SNAPSHOT, pb.CHANGE_KIND_CREATE]
    assert reader.of(echoed)[-1].origin_client == CALL_OPTIONS_CLIENT


async def test_a_backfill_requested_with_the_cli_runs_on_the_serving_replica_by_rest_or_bulk(cdc: Harness) -> None:
    first, added, threshold = 50, 30, 60
    tenant = await cdc.tenant(["Account"])
    sf = tenant.org.salesforce()
    await in_thread(sf.bulk2.Account.insert, records=[{"Name": f"Again {i:03d}"} for i in range(first)], wait=0.2)
    # 50 records are read by REST on first connection; 80 by the time of the request, by Bulk.
    config = cdc.settings(poll_overlap_seconds=0, bulk_threshold=threshold)

    def snapshots(changes: list[pb.RecordChanged]) -> list[pb.RecordChanged]:
        return [c for c in changes if c.kind == pb.CHANGE_KIND_SNAPSHOT]

    async def method() -> tuple[str, int, int]:
        connection = await asyncpg.connect(cdc.dsn)
        try:
            row = await connection.fetchrow(
                "SELECT method, estimated, emitted FROM backfills WHERE tenant_id = $1", tenant.id
            )
        finally:
            await connection.close()
        return row["method"], row["estimated"], row["emitted"]

    async with cdc.reader() as reader, cdc.running(tenant, config), serving(cdc.dsn) as api:
        # As an operator would: through the admin API, with an operator's token.
        env = {"DUPLEX_SERVER": f"http://127.0.0.1:{api.running.port}", "DUPLEX_TOKEN": await api.token(Role.OPERATOR)}

        def backfill(name: str) -> Result:
            return CliRunner().invoke(cli, ["backfill", tenant.id, name], env=env)

        await wait_backfilled(cdc.dsn, tenant.id, 1)
        await reader.until(lambda changes: len(snapshots(changes)) >= first, within=30)
        first_method = await method()
        more = [{"Name": f"More {i:03d}"} for i in range(added)]
        await in_thread(sf.bulk2.Account.insert, records=more, wait=0.2)
        requested = await in_thread(backfill, "account")
        unknown = await in_thread(backfill, "Lead")
        assert requested.exit_code == 0, requested.output
        total = first + (first + added)
        await reader.until(lambda changes: len(snapshots(changes)) >= total, within=60)
        for _ in range(100):  # the completion is logged just after the last snapshot is published
            completed = [r for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "cdc.backfill.completed"]
            if len(completed) == 2:
                break
            await asyncio.sleep(0.1)
        second_method = await method()
        listed = await in_thread(lambda: CliRunner().invoke(cli, ["backfills", tenant.id, "--json"], env=env))

    assert requested.exit_code == 0
    assert re.fullmatch(rf"backfill of Account for tenant/{tenant.id}: job \d+ \(requested\)", requested.output.strip())
    assert unknown.exit_code == 1
    assert "does not sync Lead (it syncs Account)" in unknown.output
    assert len(snapshots(reader.changes)) == total
    assert len({c.record_id for c in snapshots(reader.changes)}) == first + added
    assert len(completed) == 2
    # The count taken when each began is what progress is reported against.
    assert (first_method, second_method) == (("rest", first, first), ("bulk", first + added, first + added))
    (account,) = json.loads(listed.stdout)
    assert (account["status"], account["published"], account["estimated"], account["percent"]) == (
        "done",
        first + added,
        first + added,
        100.0,
    )
    assert [r["detail"]["method"] for r in completed] == ["rest", "bulk"]
    started = [r["detail"] for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "cdc.backfill.started"]
    assert [(d["records"], d["method"]) for d in started] == [(first, "rest"), (first + added, "bulk")]
