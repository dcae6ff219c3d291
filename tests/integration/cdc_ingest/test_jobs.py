"""cdc-ingest runs the tenant's jobs (services/cdc_ingest/jobs.py) against the emulator process, real
Kafka and real PostgreSQL: a poll asked for now, a reconcile, one left running by a previous owner,
and those it cannot do, each ending with its state."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from services.common.jobs import Job, job_of, request_job
from tests.integration.cdc_ingest.harness import Harness, in_thread, sync_log, wait_backfilled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


async def ended(dsn: str, tenant: str, job_id: int, within: float = 60) -> Job:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while True:
            job = await job_of(conn, tenant, job_id)
            assert job is not None
            if job.status in ("succeeded", "failed"):
                return job
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_jobs_run_on_the_serving_replica_and_end_with_their_state(cdc: Harness) -> None:
    # Case is not selected for CDC: it is polled, and only once an hour.
    tenant = await cdc.tenant(["Account", "Case"], org_objects={"Case": {"cdc_enabled": False}}, poll_seconds=3600)
    sf = tenant.org.salesforce()
    conn = await asyncpg.connect(cdc.dsn)
    try:
        # Left running by a previous owner: taken up again.
        interrupted = await request_job(conn, tenant.id, "reconcile", "case", "Case", "operator", "test")
        await conn.execute("UPDATE jobs SET status = 'running', started_at = now() WHERE id = $1", interrupted.id)
        async with cdc.reader() as reader, cdc.running(tenant, cdc.settings(reconcile_settle_seconds=0)):
            await wait_backfilled(cdc.dsn, tenant.id, 2)
            first = await ended(cdc.dsn, tenant.id, interrupted.id)
            assert first.status == "succeeded", first.error
            # Duplex holds no state of these records (no conflict-resolver here): each is missing.
            assert first.result["missingInDuplex"] == first.result["published"] == first.done == 0

            case = (await in_thread(sf.Case.create, {"Subject": "Printer on fire"}))["id"]
            poll = await request_job(conn, tenant.id, "poll", "case", "Case", "operator", "test")
            polled = await ended(cdc.dsn, tenant.id, poll.id)
            assert polled.status == "succeeded", polled.error
            assert polled.result["published"] >= 1
            await reader.until(lambda _: bool(reader.of(case)), within=30)

            reconcile = await request_job(conn, tenant.id, "reconcile", "case", "Case", "operator", "test")
            compared = await ended(cdc.dsn, tenant.id, reconcile.id)
            assert compared.status == "succeeded", compared.error
            assert (compared.done, compared.estimated) == (1, 1)
            assert (compared.result["missingInDuplex"], compared.result["published"]) == (1, 1)
            assert compared.result["differingRecords"] == [{"salesforceId": case, "why": "missing in Duplex"}]

            streamed = await request_job(conn, tenant.id, "poll", "account", "Account", "operator", "test")
            refused = await ended(cdc.dsn, tenant.id, streamed.id)
            assert refused.status == "failed"
            assert refused.error is not None
            assert refused.error.startswith("Account is streamed by Change Data Capture")
            gone = await request_job(conn, tenant.id, "backfill", "leads", "Lead", "operator", "test")
            error = (await ended(cdc.dsn, tenant.id, gone.id)).error
            assert error is not None
            assert error.startswith("object pair leads is not in the configuration this worker serves")
    finally:
        await conn.close()
    failures = [r for r in await sync_log(cdc.dsn, tenant.id) if r["event"] == "job.failed"]
    assert [(r["code"], r["detail"]["kind"]) for r in failures] == [("JOB_FAILED", "poll"), ("JOB_FAILED", "backfill")]
