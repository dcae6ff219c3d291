"""Reconciliation through the real services: what no event reported is found and repaired.

A tenant in sync is reconciled first: nothing may differ (a value compared wrongly would be
"repaired" on every run). Then, while the tenant is paused, Salesforce changes with Account
deselected from Change Data Capture, so no event will ever report them: one record edited, one
deleted, one created. Account is selected again and the tenant resumed; the stream has nothing to
deliver. A reconcile asked for as an operator would (a job row; cdc-ingest claims it) must count
each difference in its windows and bring all three to the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.common.jobs import Job, job_of, request_job
from services.common.pauses import EVERY_PAIR, Way, pause, resume
from services.common.topics import TopicNames
from tests.e2e.pipeline.harness import TenantSpec, eventually, running, synced

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def reconciled(conn: Any, tenant: str) -> Job:
    """A reconcile of the tenant's partners, asked for and followed to its end."""
    asked = await request_job(conn, tenant, "reconcile", "partners", "Account", "operator", "test")
    ended: Job | None = None

    async def ends() -> bool:
        nonlocal ended
        ended = await job_of(conn, tenant, asked.id)
        return ended is not None and ended.status in ("succeeded", "failed")

    assert await eventually(ends, within=120), f"reconcile job {asked.id} did not end: {ended}"
    assert ended is not None
    assert ended.status == "succeeded", ended.error
    return ended


def differences(job: Job) -> tuple[int, int, int]:
    return job.result["missingInDuplex"], job.result["valuesDiffer"], job.result["missingInSalesforce"]


async def test_a_reconcile_finds_and_repairs_what_no_event_reported(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    specs = [TenantSpec("alpha", "org-reconcile", 5_000)]
    # The test's edits are reconciled at once: none is left out as possibly still in flight.
    settled = {"cdc-ingest": {"CDC_INGEST_RECONCILE_SETTLE_SECONDS": "0"}}
    async with running(
        emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs, overrides=settled
    ) as run:
        await synced(run, 3)
        (alpha,) = run.tenants
        alpha.link(await alpha.app.rows())
        edited, deleted = [r for r in alpha.records if r.crm_id is not None][:2]
        assert edited.crm_id is not None
        assert deleted.crm_id is not None
        conn = await asyncpg.connect(fresh_database)
        try:
            clean = await reconciled(conn, "alpha")
            assert differences(clean) == (0, 0, 0), clean.result
            assert clean.done == clean.estimated == clean.result["salesforceRecords"] == 6
            assert (clean.result["windows"], clean.result["windowsDiffering"]) == (1, 0)

            await pause(conn, "alpha", [EVERY_PAIR], tuple(Way), "test", "reconcile test")
            run.org_admin("PUT", "alpha", "/objects/Account", {"cdc_enabled": False})
            await alpha.crm.update(edited.crm_id, {"Description": "changed without an event"})
            await alpha.crm.delete(deleted.crm_id)
            (created,) = await alpha.crm.create([{"Name": "created without an event"}])
            run.org_admin("PUT", "alpha", "/objects/Account", {"cdc_enabled": True})
            await resume(conn, "alpha", None, tuple(Way))

            repaired = await reconciled(conn, "alpha")
            assert differences(repaired) == (1, 1, 1), repaired.result
            assert repaired.result["windowsDiffering"] == 1
            (window,) = repaired.result["differingWindows"]
            assert (window["salesforce"]["count"], window["duplex"]["count"]) == (6, 5)
            assert {(r["salesforceId"], r["why"]) for r in repaired.result["differingRecords"]} == {
                (created, "missing in Duplex"),
                (edited.crm_id, "values differ"),
                (deleted.crm_id, "missing in Salesforce"),
            }

            async def app_repaired() -> bool:
                rows = await alpha.app.rows()
                notes = rows.get(edited.app_id or "", {}).get("notes")
                names = {row["name"] for row in rows.values()}
                return bool(
                    notes == "changed without an event"
                    and deleted.app_id not in rows
                    and "created without an event" in names
                )

            assert await eventually(app_repaired, within=60), await alpha.app.rows()
            # Once repaired, the two sides agree again.
            again = await reconciled(conn, "alpha")
            assert differences(again) == (0, 0, 0), again.result
        finally:
            await conn.close()
