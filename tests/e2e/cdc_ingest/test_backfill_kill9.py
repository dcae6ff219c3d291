"""A backfill killed with SIGKILL half-way resumes where it was, and every record arrives."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from devstack.emulator import EmulatorProcess
from services.common.topics import TopicNames
from tests.integration.cdc_ingest.harness import (
    change_reader,
    configure_tenant,
    create_org,
    governor_process,
    in_thread,
    prepare_database,
    secrets_for,
    start_service,
    tenant_document,
    wait_backfilled,
)

pytestmark = pytest.mark.e2e

PAGE = 1_000


async def backfill_state(dsn: str, tenant: str) -> tuple[str, str] | None:
    """(status, method) of the tenant's one backfill."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow("SELECT status, method FROM backfills WHERE tenant_id = $1", tenant)
    finally:
        await connection.close()
    return (row["status"], row["method"]) if row else None


async def kill_during_backfill(
    records: int, emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, dsn: str, tmp_path: Path
) -> None:
    org = create_org(emulator)
    sf = org.salesforce()
    for start in range(0, records, 50_000):
        rows = [{"Name": f"Existing {i:06d}"} for i in range(start, min(records, start + 50_000))]
        await in_thread(sf.bulk2.Account.insert, records=rows, wait=0.2)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(dsn)
    await configure_tenant(dsn, tenant_document(tenant, org, ["Account"]))
    secrets = secrets_for(tenant, org)
    log = tmp_path / "cdc-ingest.log"
    # Bulk 2.0 query job, read in pages: the job id and locator are the resume point.
    tuning = {"bulk_threshold": "1000", "bulk_page_size": str(PAGE), "poll_overlap_seconds": "0"}

    with governor_process(dsn, tmp_path / "governor.log") as governor:
        async with change_reader(kafka_bootstrap, topic_names) as reader:
            process = start_service(
                emulator, kafka_bootstrap, topic_names, dsn, secrets, log, governor=governor, **tuning
            )
            try:
                await reader.until(lambda changes: len(changes) >= records // 3, within=300)
                process.send_signal(signal.SIGKILL)
                assert process.wait(timeout=10) == -signal.SIGKILL
                killed_at = len(reader.changes)
                assert killed_at < records, "killed too late to show a resume"
                # Every record may be published before the reader has caught up; only an unfinished
                # backfill in the database shows that the kill interrupted it.
                assert await backfill_state(dsn, tenant) == ("running", "bulk"), "killed after the backfill finished"
                process = start_service(
                    emulator, kafka_bootstrap, topic_names, dsn, secrets, log, governor=governor, **tuning
                )
                await wait_backfilled(dsn, tenant, 1, within=600)
                await reader.until(lambda changes: len({c.record_id for c in changes}) >= records, within=120)
            finally:
                process.kill()
                process.wait(timeout=10)

    snapshots = [c for c in reader.changes if c.kind == pb.CHANGE_KIND_SNAPSHOT]
    assert len({c.record_id for c in snapshots}) == records, f"log: {log.read_text()[-3000:]}"
    # Resumed, not restarted: at most what was in flight at the kill (a page, plus the batch being
    # published) came twice.
    assert len(snapshots) <= records + 2 * PAGE
    assert await backfill_state(dsn, tenant) == ("done", "bulk")


@pytest.mark.timeout(600)
async def test_a_killed_backfill_of_10000_records_resumes(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    await kill_during_backfill(10_000, emulator, kafka_bootstrap, topic_names, fresh_database, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_a_killed_backfill_of_100000_records_resumes(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    await kill_during_backfill(100_000, emulator, kafka_bootstrap, topic_names, fresh_database, tmp_path)
