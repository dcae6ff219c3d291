"""A console user's journey against the real services: every service a process, Kafka, PostgreSQL,
the Salesforce emulator, the example app, and the admin service serving the console to Chromium.

Signed in as an operator, the user watches a partner created in the app arrive in Salesforce (the
sync log, searched by the record's Salesforce id, shows it created; its timeline shows each
decision), pauses the pair both ways from the tenant page (an app edit then waits, held, and the
page says so), resumes it (the edit reaches Salesforce), and runs a reconcile that finds nothing to
repair.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.admin.auth import Role
from services.common.settings import KafkaSettings
from services.common.topics import TopicNames
from tests.e2e.console.conftest import sign_in
from tests.e2e.pipeline.harness import TenantSpec, eventually, running, synced
from tests.integration.admin_api.harness import serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_an_operator_watches_pauses_resumes_and_reconciles_in_the_console(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
    page: Page,
) -> None:
    specs = [TenantSpec("alpha", "org-console", 5_000)]
    settled = {"cdc-ingest": {"CDC_INGEST_RECONCILE_SETTLE_SECONDS": "0"}}
    kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap_servers, topic_prefix=topic_names.prefix)
    async with (
        running(
            emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs, overrides=settled
        ) as run,
        serving(fresh_database, kafka=kafka) as api,
    ):
        await synced(run, 1)
        expect.set_options(timeout=15_000)
        (alpha,) = run.tenants
        base = f"http://127.0.0.1:{api.running.port}/console"
        await sign_in(page, base, await api.token(Role.OPERATOR))

        # A partner created in the app arrives in Salesforce; the sync log finds it by its Salesforce id.
        app_id = await alpha.app.create({"name": "Console journey", "phone": "+1 555 0100", "notes": None})

        async def linked() -> bool:
            return bool((await alpha.app.rows())[app_id]["salesforce_id"])

        assert await eventually(linked, within=60)
        crm_id = (await alpha.app.rows())[app_id]["salesforce_id"]
        await page.goto(f"{base}/tenants/alpha/sync-log")
        await page.get_by_label("Record").fill(crm_id)
        await page.get_by_label("Record").press("Enter")
        # (record.created may come later: Salesforce's echo of the create can overtake the write's outcome.)
        await expect(page.locator("main table")).to_contain_text("create from the app: name accepted")
        # Its timeline, by the Salesforce id (the rows above may name it by its link id).
        await page.goto(f"{base}/tenants/alpha/records/{crm_id}")
        await expect(page.get_by_role("heading", level=1)).to_contain_text(crm_id)
        await expect(page.locator("main")).to_contain_text("change.resolved")

        # Paused both ways from the tenant page: an app edit waits, held, and the page says so.
        await page.goto(f"{base}/tenants/alpha")
        row = page.locator("tr[data-pair=partners]")
        await row.get_by_label("Direction to pause for partners").select_option("both")
        await row.get_by_role("button", name="Pause partners").click()
        await expect(page.get_by_role("status")).to_have_text("paused partners, both ways")
        await alpha.app.update(app_id, {"notes": "edited while paused"})

        async def held() -> bool:
            await page.reload()
            return await page.get_by_text("Held while paused both ways").count() > 0

        assert await eventually(held, within=60), await page.locator("main").inner_text()
        assert (await alpha.crm.accounts())[crm_id]["Description"] is None

        # Resumed: the edit reaches Salesforce.
        await page.locator("tr[data-pair=partners]").get_by_role("button", name="Resume partners").click()
        await expect(page.get_by_role("status")).to_have_text("resumed partners, both ways")

        async def arrived() -> bool:
            return bool((await alpha.crm.accounts())[crm_id]["Description"] == "edited while paused")

        assert await eventually(arrived, within=60), (await alpha.crm.accounts())[crm_id]

        # A reconcile finds the two sides in agreement.
        await page.locator("tr[data-pair=partners]").get_by_label("Job for partners").select_option("reconcile")
        await page.locator("tr[data-pair=partners]").get_by_role("button", name="Run now").click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text("reconcile of partners")
        await expect(page.locator(".status-succeeded")).to_be_visible(timeout=90_000)
        await expect(page.locator("dl.result")).to_contain_text("valuesDiffer")
        await expect(page.locator("dl.result dt:has-text('valuesDiffer') + dd")).to_have_text("0")
        await expect(page.locator("dl.result dt:has-text('missingInDuplex') + dd")).to_have_text("0")
