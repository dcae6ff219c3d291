"""A console user's journey against the real services: a record Salesforce rejected is found in the
sync log, its mapping fixed on the pair's page and the record retried from its timeline, in Chromium.

Every service runs as a process, with Kafka, PostgreSQL, the Salesforce emulator, the example app and
the admin service serving the console. The tenant's partners pair first has no rule for the name,
which Salesforce requires of an Account (stored directly, as in tests/e2e/pipeline/test_retry_rejected.py:
the admin API refuses such a version). A partner created in the app is rejected with
REQUIRED_FIELD_MISSING. Signed in as an admin (the role that may save a configuration), the user
finds the rejection by its status, opens the record's timeline, adds the missing rule on the pair's
page (Plan, Save: a new version), presses Retry, and the Account is created once with the partner's
values; searched by its new Salesforce id, the record's timeline tells the whole story.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.admin.auth import Role
from services.admin.config_store import ConfigStore
from services.common.settings import KafkaSettings
from services.common.tenant_config import parse_tenant_config
from services.common.topics import TopicNames
from tests.e2e.console.conftest import sign_in
from tests.e2e.pipeline.harness import TenantSpec, eventually, running
from tests.e2e.pipeline.world import tenant_document
from tests.integration.admin_api.harness import serving
from tests.integration.console.conftest import SCREENSHOTS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TENANT = "alpha"
PARTNER = {"name": "Console Retry Ltd", "phone": "+1 555 0177", "notes": "created before the name was mapped"}


async def timeline(page: Page) -> list[tuple[str, str, str]]:
    """The timeline's entries, oldest first: event, status, text."""
    found: list[list[str]] = await page.locator("ol.timeline > li").evaluate_all(
        "items => items.map(i => [i.dataset.event, (i.querySelector('.badge') || {}).textContent || '', i.innerText])"
    )
    return [(event, status, text) for event, status, text in found]


def landed(entries: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The ``record.created`` entry after the retry request (the write's outcome says so even when
    Salesforce's echo of the create linked the id first), if the timeline has it in that order."""
    events = [event for event, _, _ in entries]
    if events.count("record.resend_requested") != 1:
        return None
    retried = events.index("record.resend_requested")
    rejected = [i for i, event in enumerate(events) if event == "write.rejected"]
    if not rejected or max(rejected) > retried:
        return None
    return next((e for e in entries[retried + 1 :] if e[0] == "record.created"), None)


async def test_an_admin_finds_a_rejected_record_fixes_its_mapping_and_retries_it_in_the_console(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
    page: Page,
) -> None:
    specs = [TenantSpec(TENANT, "org-console-retry", 5_000)]
    # Mapping reads the tenant's version on every batch: the retry is asked for right after the
    # save, and must be mapped by the saved version (by default it may be up to a second late).
    fresh = {"mapping": {"MAPPING_CONFIG_CHECK_SECONDS": "0"}}
    kafka = KafkaSettings(bootstrap_servers=kafka_server.bootstrap_servers, topic_prefix=topic_names.prefix)
    async with (
        running(
            emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs, overrides=fresh
        ) as run,
        serving(fresh_database, kafka=kafka) as api,
    ):
        (alpha,) = run.tenants
        broken = copy.deepcopy(tenant_document(TENANT, emulator, "org-console-retry-client", 5_000))
        pair = broken["spec"]["objects"][0]
        pair["fields"] = [f for f in pair["fields"] if f["app"] != "name"]
        await ConfigStore(api.db).apply([parse_tenant_config(broken)], "retry journey")
        stored = await ConfigStore(api.db).get(TENANT)
        assert stored is not None
        broken_version = stored.version
        await run.services.start()
        await run.apps[TENANT].start()
        expect.set_options(timeout=20_000)
        base = f"http://127.0.0.1:{api.running.port}/console"
        await sign_in(page, base, await api.token(Role.ADMIN, name="mapping admin"), TENANT)

        # 1. The app creates a partner; Salesforce refuses the Account without its Name.
        app_id = await alpha.app.create(PARTNER)

        async def rejected() -> bool:
            return bool(
                await api.db.fetchval(
                    "SELECT count(*) FROM sync_log s JOIN links l USING (tenant_id, link_id) WHERE s.tenant_id = $1"
                    " AND l.app_record_id = $2 AND s.event = 'write.rejected' AND s.service = 'conflict-resolver'",
                    TENANT,
                    app_id,
                )
            )

        assert await eventually(rejected, within=120), "Salesforce did not reject the partner"
        link_id = await api.db.fetchval(
            "SELECT link_id FROM links WHERE tenant_id = $1 AND app_record_id = $2", TENANT, app_id
        )
        assert await alpha.crm.accounts() == {}

        # 2. In the sync log, filtered by status: the rejection, Salesforce's code, the record's timeline.
        await page.goto(f"{base}/tenants/{TENANT}")
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Sync log").click()
        await expect(page.get_by_role("heading", name=f"Sync log of {TENANT}")).to_be_visible()
        await page.get_by_label("rejected").check()
        await page.get_by_role("button", name="Search").click()
        rows = page.locator("table.log tbody tr")
        rejection = rows.filter(has=page.locator("td[data-label=Service]", has_text="conflict-resolver"))
        await expect(rejection).to_have_count(1)
        await expect(rejection.locator("td[data-label=Event]")).to_have_text("write.rejected")
        await expect(rejection.locator("td[data-label=Code]")).to_have_text("REQUIRED_FIELD_MISSING")
        # The create had no Salesforce id: the row names the record by its link.
        await rejection.get_by_role("link", name=link_id).click()
        await expect(page.get_by_role("heading", name=f"Record {link_id}")).to_be_visible()
        timeline_url = page.url
        links = page.locator("section", has=page.get_by_role("heading", name="Links")).locator("tbody tr")
        await expect(links.first.locator("td")).to_have_text(["partners", app_id, "not created yet", link_id])
        shown = page.locator("ol.timeline > li[data-event='write.rejected']").filter(has_text="conflict-resolver")
        await expect(shown.locator("ul.sf-errors")).to_contain_text("REQUIRED_FIELD_MISSING")
        await expect(shown.locator("ul.sf-errors")).to_contain_text("Name")
        await expect(page.get_by_role("heading", name="Retry")).to_be_visible()

        # 3. The mapping fixed on the pair's page: the rule added through the form, planned, saved.
        async def described() -> bool:
            # The page offers the fields of the org's describe, which cdc-ingest stores on its own time.
            return bool(
                await api.db.fetchval(
                    "SELECT count(*) FROM crm_schema_objects WHERE tenant_id = $1 AND object_name = 'Account'"
                    " AND describe IS NOT NULL",
                    TENANT,
                )
            )

        assert await eventually(described, within=60), "cdc-ingest did not describe Account"
        await page.goto(f"{base}/tenants/{TENANT}")
        await page.locator("tr[data-pair=partners]").get_by_role("link", name="partners").click()
        await expect(page.get_by_role("heading", name="partners: partners ⇄ Account")).to_be_visible()
        await expect(page.locator("tr[data-rule=name]")).to_have_count(0)
        await page.get_by_label("App field", exact=True).fill("name")
        await page.get_by_label("Salesforce field", exact=True).select_option("Name")
        await page.get_by_label("Transform of the new rule").select_option("string")
        await page.get_by_role("button", name="Add rule").click()
        added = page.locator("tr[data-rule=name]")
        await expect(added).to_contain_text("added")
        await expect(added.locator("td[data-label=Salesforce]")).to_have_text("Name")
        await page.get_by_role("button", name="Plan", exact=True).click()
        await expect(page.locator(".plan-lines")).to_have_text("partners: rule name: added")
        await page.get_by_role("button", name="Save", exact=True).click()
        await expect(page.get_by_role("status")).to_have_text(f"saved as version {broken_version + 1}")
        saved = await ConfigStore(api.db).get(TENANT)
        assert saved is not None
        assert saved.version == broken_version + 1
        (partners,) = saved.config.spec.objects
        assert [(f.app, f.salesforce) for f in partners.fields if f.app == "name"] == [("name", "Name")]

        # 4. Retry from the timeline: the Account is created, once, with the partner's values.
        await page.goto(timeline_url)
        await page.get_by_role("button", name="Retry").click()
        await expect(page.get_by_role("status")).to_have_text(
            "the app was asked to publish the record again (partners)"
        )
        await expect(page.locator("ol.timeline > li").last).to_have_attribute("data-event", "record.resend_requested")

        async def linked() -> bool:
            return bool((await alpha.app.rows())[app_id]["salesforce_id"])

        assert await eventually(linked, within=120), await page.locator("main").inner_text()
        account_id = (await alpha.app.rows())[app_id]["salesforce_id"]
        accounts = await alpha.crm.accounts()
        assert list(accounts) == [account_id]
        account: dict[str, Any] = accounts[account_id]
        assert (account["Name"], account["Phone"], account["Description"], account["Duplex_Id__c"]) == (
            PARTNER["name"],
            PARTNER["phone"],
            PARTNER["notes"],
            f"dx-{link_id}",
        )

        # 5. Searched by its new Salesforce id, the record's whole story: rejected, retried, created.
        await page.goto(f"{base}/tenants/{TENANT}/sync-log")
        await page.get_by_label("Record", exact=True).fill(account_id)
        await page.get_by_role("button", name="Search").click()
        await expect(rows.locator("td[data-label=Event]", has_text="record.resend_requested")).to_have_count(1)
        await expect(rows.locator("td[data-label=Code]", has_text="REQUIRED_FIELD_MISSING")).not_to_have_count(0)
        await page.goto(f"{base}/tenants/{TENANT}/records/{account_id}")
        await expect(page.get_by_role("heading", name=f"Record {account_id}")).to_be_visible()
        await expect(links.first.locator("td")).to_have_text(["partners", app_id, account_id, link_id])

        async def told() -> bool:
            # The write's outcome may be settled after the app learnt the id from Salesforce's echo.
            await page.reload()
            return landed(await timeline(page)) is not None

        assert await eventually(told, within=60), await timeline(page)
        success = landed(await timeline(page))
        assert success is not None
        assert success[1] == "succeeded", success
        assert "by conflict-resolver" in success[2], success
        assert [e for e, _, _ in await timeline(page)].count("record.created") <= 1
        # Nothing is left to retry: the latest write succeeded.
        await page.get_by_role("button", name="Retry").click()
        await expect(page.get_by_role("alert")).to_have_text(
            f"record '{account_id}' has nothing to retry: its latest write to Salesforce succeeded"
        )
        assert list(await alpha.crm.accounts()) == [account_id]
        if SCREENSHOTS:
            await page.goto(f"{base}/tenants/{TENANT}/records/{account_id}")
            await page.screenshot(path=str(Path(SCREENSHOTS) / "retry-timeline.png"), full_page=True)
