"""The console's sync log (filters, pages, CSV), a record's timeline with each decision, and a retry
asked from it, in Chromium."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from services.admin.auth import Role
from services.common import sync_log
from tests.integration.console.conftest import Console
from tests.integration.console.test_dead_letters import kafka_console  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SF_7 = "001000000000007AAA"
BULK = 25


async def link(console: Console, link_id: str, pair: str, app_id: str | None, crm_id: str | None) -> None:
    await console.api.db.execute(
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
        " VALUES ('acme', $1, $2, $3, $4, 'dx-' || $2)",
        pair,
        link_id,
        app_id,
        crm_id,
    )


async def log(console: Console, event: str, service: str = "conflict-resolver", **entry: Any) -> None:
    await sync_log.record(console.api.db, tenant_id="acme", service=service, event=event, **entry)


async def resolved_then_rejected(console: Console, link_id: str) -> None:
    """A change from the app decided field by field, a conflict on one field, and the write to
    Salesforce that followed rejected: the rows the conflict-resolver writes, in that order."""
    await log(
        console,
        "change.resolved",
        link_id=link_id,
        detail={
            "side": "app",
            "kind": "update",
            "fields": {
                "Name": {"outcome": "accepted", "reason": "conflict: app is newer"},
                "Phone": {"outcome": "unchanged", "reason": "same as the synced value"},
            },
            "writes": {"crm": {"operation": "upsert", "fields": ["Name"]}},
            "notes": [],
            "dropped": {},
        },
    )
    await log(
        console,
        "conflict.decided",
        link_id=link_id,
        code="newest_wins",
        message="Name: app wins (conflict: app is newer)",
        detail={"field": "Name", "winner": "app", "outcome": "accepted"},
    )
    await log(
        console,
        "write.rejected",
        link_id=link_id,
        code="REQUIRED_FIELD_MISSING",
        message="Required fields are missing: [LastName]",
        detail={
            "version": 1,
            "rolled_back": ["Name"],
            "errors": [
                {"code": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing", "fields": ["LastName"]}
            ],
        },
    )


async def seed(console: Console) -> None:
    for n in range(BULK):
        await log(console, "change.resolved", record_id=f"bulk-{n}", detail={"side": "crm", "kind": "update"})
    await link(console, "l-7", "partners", "p-7", SF_7)
    await resolved_then_rejected(console, "l-7")
    await log(console, "pair.quarantined", service="mapping", message="partners quarantined", detail={"pair": "x"})


async def shown(console: Console) -> list[int]:
    return [
        int(i or 0)
        for i in await console.page.locator("table.log tbody tr").evaluate_all("rows => rows.map(r => r.dataset.entry)")
    ]


async def test_filters_pages_and_csv(console: Console) -> None:
    page = console.page
    await seed(console)
    ids = [r["id"] for r in await console.api.db.fetch("SELECT id FROM sync_log ORDER BY at DESC, id DESC")]
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants/acme")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Sync log").click()
    await expect(page.get_by_role("heading", name="Sync log of acme")).to_be_visible()

    # Newest first, a page at a time; Older follows the API's cursor, Newest goes back.
    await page.get_by_label("Rows per page").select_option("25")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("table.log tbody tr")
    await expect(rows).to_have_count(25)
    assert await shown(console) == ids[:25]
    await expect(rows.first.locator("td[data-label=Event]")).to_have_text("pair.quarantined")
    await expect(rows.first.locator("td[data-label=Status]")).to_have_text("info")
    await console.shot("sync-log")
    await page.get_by_role("link", name="Older").click()
    await expect(rows).to_have_count(len(ids) - 25)
    assert await shown(console) == ids[25:]
    await expect(page.get_by_role("link", name="Older")).to_have_count(0)
    await expect(page.get_by_label("Rows per page")).to_have_value("25")
    await page.get_by_role("link", name="Newest").click()
    await expect(rows).to_have_count(25)

    # By status: only the rejection.
    await page.get_by_label("rejected").check()
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("td[data-label=Code]")).to_have_text("REQUIRED_FIELD_MISSING")
    await expect(rows.first.locator("td[data-label=Message]")).to_have_text("Required fields are missing: [LastName]")

    # Exported with the same filters, as `duplex log --csv` writes it.
    async with page.expect_download() as download:
        await page.get_by_role("link", name="Download as CSV").click()
    path = await (await download.value).path()
    text = await asyncio.to_thread(Path(path).read_text)
    (header, *lines) = list(csv.reader(io.StringIO(text, newline="")))
    assert header == ["id", "at", "service", "event", "status", "link_id", "record_id", "code", "message", "detail"]
    assert [(line[3], line[5], json.loads(line[9])["version"]) for line in lines] == [("write.rejected", "l-7", 1)]

    # By record, under its Salesforce id: its three rows, each linked to its timeline.
    await page.get_by_label("rejected").uncheck()
    await page.get_by_label("Record", exact=True).fill(SF_7)
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(3)
    await expect(rows.locator("td[data-label=Event]")).to_have_text(
        ["write.rejected", "conflict.decided", "change.resolved"]
    )
    await expect(rows.nth(2).locator("td[data-label=Message]")).to_have_text(
        "update from the app: Name accepted, Phone unchanged"
    )
    await rows.first.get_by_role("link", name="l-7").click()
    await expect(page.get_by_role("heading", name="Record l-7")).to_be_visible()


async def test_a_filter_the_api_refuses_is_shown_on_its_control(console: Console) -> None:
    page = console.page
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants/acme/sync-log")
    await page.get_by_label("Since (UTC)").fill("2026-12-07T10:00")
    await page.get_by_label("Until (UTC)").fill("2026-12-07T09:00")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("alert")).to_have_text("Some filters are not valid; see below.")
    until = page.get_by_label("Until (UTC)")
    await expect(until).to_have_attribute("aria-invalid", "true")
    await expect(until).to_have_accessible_description("must be after since")
    await expect(page.locator("table.log")).to_have_count(0)


async def test_the_timeline_shows_each_decision_in_order(console: Console) -> None:
    page = console.page
    await link(console, "l-7", "partners", "p-7", SF_7)
    await log(console, "change.rejected", service="mapping", record_id="p-7", code="STRING_TOO_LONG", message="x")
    await resolved_then_rejected(console, "l-7")
    await link(console, "l-8", "partners", "p-8", None)
    await log(console, "change.resolved", link_id="l-8", detail={"side": "app", "kind": "create", "fields": {}})
    await console.sign_in(await console.api.token(Role.VIEWER))

    await page.goto(f"{console.base}/console/tenants/acme/records/p-7")
    await expect(page.get_by_role("heading", name="Record p-7")).to_be_visible()
    links = page.locator("section", has=page.get_by_role("heading", name="Links")).locator("tbody tr")
    await expect(links).to_have_count(1)
    await expect(links.first.locator("td")).to_have_text(["partners", "p-7", SF_7, "l-7"])
    entries = page.locator("ol.timeline > li")
    await expect(entries).to_have_count(4)
    events = await entries.evaluate_all("items => items.map(i => i.dataset.event)")
    assert events == ["change.rejected", "change.resolved", "conflict.decided", "write.rejected"]

    resolved = entries.nth(1)
    await expect(resolved).to_contain_text("Change from the app (update).")
    decisions = resolved.get_by_role("table", name="What was decided for each field")
    await expect(decisions.locator("tbody tr").first.locator("th, td")).to_have_text(
        ["Name", "accepted", "conflict: app is newer"]
    )
    await expect(decisions.locator("tbody tr").nth(1).locator("th, td")).to_have_text(
        ["Phone", "unchanged", "same as the synced value"]
    )
    await expect(resolved.get_by_role("listitem")).to_have_text(["To Salesforce: upsert of Name"])
    conflict = entries.nth(2).locator("dl.conflict")
    await expect(conflict.locator("dt")).to_have_text(["Field", "Policy", "Winner", "Outcome"])
    await expect(conflict.locator("dd")).to_have_text(["Name", "newest_wins", "the app", "accepted"])
    rejected = entries.nth(3)
    await expect(rejected).to_contain_text("REQUIRED_FIELD_MISSING Required fields are missing — fields: LastName")
    await expect(rejected).to_contain_text("Rolled back to what Salesforce holds: Name.")
    await rejected.get_by_text("Everything the entry holds").click()
    await expect(rejected.locator("pre")).to_contain_text('"version": 1')
    # A rejected write could be retried, by an operator: a viewer is told so, with no button.
    await expect(page.get_by_role("heading", name="Retry")).to_be_visible()
    await expect(page.get_by_text("Only operators and admins can retry a record.")).to_be_visible()
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    await console.shot("timeline")

    # A record without a rejected write has nothing to retry.
    await page.goto(f"{console.base}/console/tenants/acme/records/p-8")
    await expect(page.locator("ol.timeline > li")).to_have_count(1)
    await expect(page.get_by_role("heading", name="Retry")).to_have_count(0)

    # Unknown records are the API's 404.
    response = await page.goto(f"{console.base}/console/tenants/acme/records/nobody")
    assert response is not None
    assert response.status == 404
    await expect(page.get_by_role("alert")).to_have_text(
        "tenant 'acme' has no record 'nobody' in its links or sync log"
    )


async def test_retry_from_the_timeline_asks_the_api(kafka_console: Console) -> None:  # noqa: F811
    console, page = kafka_console, kafka_console.page
    # pc-1: its latest write rejected, to retry. pc-2: a write succeeded since (the writer applied a
    # later version): nothing to retry. A Salesforce record the app has not created: skipped.
    await link(console, "l-1", "partner_contacts", "pc-1", None)
    await resolved_then_rejected(console, "l-1")
    await link(console, "l-2", "partner_contacts", "pc-2", "003000000000002AAA")
    await resolved_then_rejected(console, "l-2")
    await console.api.db.execute(
        "INSERT INTO writer_applied_versions (tenant_id, link_id, version) VALUES ('acme', 'l-2', 3)"
    )
    await link(console, "l-3", "partners", None, "001000000000003AAA")
    await resolved_then_rejected(console, "l-3")

    # A viewer is offered no Retry, and one sent anyway is the API's to refuse, on the record's page.
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants/acme/records/pc-1")
    await expect(page.get_by_role("heading", name="Retry")).to_be_visible()
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/retries", form={"record": "pc-1"}, headers={"origin": console.base}
    )
    assert refused.status == 403
    answer = await refused.text()
    assert "the viewer role may not control sync runs" in answer
    assert "Record pc-1" in answer

    await console.sign_in(await console.api.token(Role.OPERATOR, name="night shift"))
    await page.goto(f"{console.base}/console/tenants/acme/records/pc-1")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("status")).to_have_text(
        "the app was asked to publish the record again (partner_contacts)"
    )
    last = page.locator("ol.timeline > li").last
    await expect(last).to_have_attribute("data-event", "record.resend_requested")
    await expect(last).to_contain_text("the app was asked to publish the record again")
    logged = await console.api.db.fetch("SELECT link_id FROM sync_log WHERE event = 'record.resend_requested'")
    assert [r["link_id"] for r in logged] == ["l-1"]

    await page.goto(f"{console.base}/console/tenants/acme/records/pc-2")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "record 'pc-2' has nothing to retry: its latest write to Salesforce succeeded"
    )
    await expect(page.locator("ol.timeline > li")).to_have_count(3)

    await page.goto(f"{console.base}/console/tenants/acme/records/001000000000003AAA")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("status")).to_contain_text("not retried in partners: ")
    assert await console.api.db.fetchval("SELECT count(*) FROM sync_log WHERE event = 'record.resend_requested'") == 1


async def test_readable_on_a_narrow_window(console: Console) -> None:
    page = console.page
    await seed(console)
    await page.set_viewport_size({"width": 390, "height": 800})
    await console.sign_in(await console.api.token(Role.VIEWER))
    for path in ("sync-log", f"records/{SF_7}"):
        await page.goto(f"{console.base}/console/tenants/acme/{path}")
        await expect(page.locator("main h1")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px window"
        await console.shot(f"narrow-{path.split('/')[0]}")
