"""The console's dead letters page in Chromium, against a real broker: entries listed with their
reasons and payloads, replayed and discarded (a selection, or every pending one of a topic), a
discard without a reason refused, a viewer offered neither and refused on replay anyway, each answer
shown on the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Browser, expect

from services.admin.auth import Role
from services.common.change import Side
from services.common.dlq import ERROR_CLASS, ERROR_REASON, FAILED_AT, SERVICE
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames
from tests.e2e.sync.harness import producer, record_changed
from tests.integration.admin.conftest import SAMPLE_TEXT
from tests.integration.admin_api.harness import serving
from tests.integration.console.conftest import Console

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOO_LONG = "STRING_TOO_LONG: Name: 41 characters, at most 40"
FAILED = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


@pytest.fixture
async def kafka_console(
    migrated: str, browser: Browser, kafka_bootstrap: str, topic_names: TopicNames
) -> AsyncIterator[Console]:
    """The console over an admin API with Kafka (dead letters and retries need it), on fresh topics."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    async with serving(migrated, kafka=kafka) as api:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        setup = await api.token(Role.ADMIN, name="console set-up")
        assert (await api.apply(setup, SAMPLE_TEXT)).status_code == 201
        try:
            yield Console(api, f"http://127.0.0.1:{api.running.port}", page)
        finally:
            await context.close()


def _headers(reason: str, minutes: int) -> dict[str, str]:
    return {
        ERROR_REASON: reason,
        ERROR_CLASS: "InvalidEvent",
        SERVICE: "mapping",
        FAILED_AT: (FAILED + timedelta(minutes=minutes)).isoformat(timespec="milliseconds"),
    }


@pytest.fixture
async def dead_letters(kafka_bootstrap: str, topic_names: TopicNames) -> None:
    """app_changes_dlq:0:0 to 0:2 (the last one not a message at all), crm_changes_dlq:0:0, and
    another tenant's, which acme's page never shows."""
    async with producer(kafka_bootstrap) as upstream:
        app_dlq, crm_dlq = topic_names(Topic.APP_CHANGES_DLQ), topic_names(Topic.CRM_CHANGES_DLQ)
        for n in (1, 2):
            change = record_changed(Side.APP, "partners", f"p-{n}", {"name": "x" * 41}, event_id=f"poison-{n}")
            await upstream.publish(
                change.SerializeToString(),
                app_dlq,
                key=f"acme/partners/p-{n}".encode(),
                partition=0,
                headers=_headers(TOO_LONG, n),
            )
        await upstream.publish(
            b"\x08", app_dlq, key=b"acme/partners/p-3", partition=0, headers=_headers("undecodable: truncated", 3)
        )
        change = record_changed(Side.CRM, "Account", "001000000000009AAA", {"Name": "Acme"}, event_id="crm-9")
        await upstream.publish(
            change.SerializeToString(),
            crm_dlq,
            key=b"acme/Account/001000000000009AAA",
            partition=0,
            headers=_headers("QUARANTINED: pair partners is in quarantine", 4),
        )
        await upstream.publish(
            b"\x08", app_dlq, key=b"other/partners/o-1", partition=0, headers=_headers("not acme's", 5)
        )


async def states(console: Console) -> dict[str, str]:
    rows = await console.api.db.fetch("SELECT dlq_topic, dlq_partition, dlq_offset, action FROM dead_letter_actions")
    return {f"{r['dlq_topic']}:{r['dlq_partition']}:{r['dlq_offset']}": r["action"] for r in rows}


@pytest.mark.usefixtures("dead_letters")
async def test_listed_with_reasons_replayed_and_discarded(kafka_console: Console) -> None:
    console, page = kafka_console, kafka_console.page
    await console.sign_in(await console.api.token(Role.OPERATOR, name="night shift"))
    await page.goto(f"{console.base}/console/tenants/acme")
    await page.locator(".subnav").get_by_role("link", name="Dead letters").click()
    await expect(page.get_by_role("heading", name="Dead letters of acme")).to_be_visible()

    rows = page.locator("table.letters tbody tr")
    await expect(rows).to_have_count(4)
    first = page.locator("tr[data-id='app_changes_dlq:0:0']")
    await expect(first.locator("td[data-label=Reason]")).to_contain_text(TOO_LONG)
    await expect(first.locator("td[data-label=Topic]")).to_have_text("app_changes")
    await expect(first.locator("td[data-label=State]")).to_have_text("pending")
    await first.get_by_text("Payload").click()
    await expect(first.locator("pre")).to_contain_text('"record_id": "p-1"')
    await expect(page.locator("tr[data-id='app_changes_dlq:0:2']")).to_contain_text("it did not decode")
    await console.shot("dead-letters")

    # Replay one: the API's answer after the redirect, and the entry's new state.
    await first.get_by_label("Select app_changes_dlq:0:0").check()
    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.get_by_role("status")).to_have_text("replayed 1: app_changes_dlq:0:0")
    await expect(first.locator("td[data-label=State]")).to_contain_text("replayed by night shift (token")
    assert await states(console) == {"app_changes_dlq:0:0": "replayed"}

    # Discarding without a reason is refused, and nothing changes; the tick stays.
    second = page.locator("tr[data-id='app_changes_dlq:0:1']")
    await second.get_by_label("Select app_changes_dlq:0:1").check()
    await page.get_by_role("button", name="Discard selected").click()
    await expect(page.get_by_role("alert")).to_contain_text("Reason for discarding: String should have at least 1")
    await expect(page.get_by_label("Reason for discarding")).to_have_attribute("aria-invalid", "true")
    await expect(second.get_by_label("Select app_changes_dlq:0:1")).to_be_checked()
    await expect(second.locator("td[data-label=State]")).to_have_text("pending")
    assert await states(console) == {"app_changes_dlq:0:0": "replayed"}

    await page.get_by_label("Reason for discarding").fill("test data")
    await page.get_by_role("button", name="Discard selected").click()
    await expect(page.get_by_role("status")).to_have_text("discarded 1: app_changes_dlq:0:1")
    await expect(second.locator("td[data-label=State]")).to_contain_text("discarded")
    await expect(second.locator("td[data-label=State]")).to_contain_text("“test data”")

    # A discarded entry is not replayed: the API's 409, shown on the page.
    await second.get_by_label("Select app_changes_dlq:0:1").check()
    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "discarded, so not replayed: app_changes_dlq:0:1; nothing was replayed"
    )

    # Every pending entry of one topic at once.
    await page.get_by_role("button", name="Replay all pending of crm_changes").click()
    await expect(page.get_by_role("status")).to_have_text("replayed 1: crm_changes_dlq:0:0")
    assert await states(console) == {
        "app_changes_dlq:0:0": "replayed",
        "app_changes_dlq:0:1": "discarded",
        "crm_changes_dlq:0:0": "replayed",
    }

    # The filters the API offers narrow the listing, and an action keeps them.
    await page.get_by_label("State").select_option("pending")
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await expect(page.get_by_role("button", name="Replay all pending of app_changes")).to_be_visible()
    await page.get_by_role("button", name="Replay all pending of app_changes").click()
    await expect(page.get_by_role("status")).to_have_text("replayed 1: app_changes_dlq:0:2")
    await expect(page.get_by_label("State")).to_have_value("pending")
    await expect(page.get_by_text("No dead letter matches these filters.")).to_be_visible()


@pytest.mark.usefixtures("dead_letters")
async def test_a_viewer_sees_them_but_may_not_replay(kafka_console: Console) -> None:
    console, page = kafka_console, kafka_console.page
    await console.sign_in(await console.api.token(Role.VIEWER))
    response = await page.goto(f"{console.base}/console/tenants/acme/dead-letters?record=p-2")
    assert response is not None
    assert response.status == 200
    await expect(page.locator("table.letters tbody tr")).to_have_count(1)
    # A viewer is offered nothing to tick and no button that acts...
    await expect(page.get_by_text("Only operators and admins can replay or discard dead letters.")).to_be_visible()
    await expect(page.get_by_role("checkbox")).to_have_count(0)
    for name in ("Replay selected", "Discard selected", "Replay all pending of app_changes"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    # ... and the form sent anyway is the API's to refuse, on the listing.
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/dead-letters/replay",
        form={"id": "app_changes_dlq:0:1", "view": "record=p-2"},
        headers={"origin": console.base},
    )
    assert refused.status == 403
    answer = await refused.text()
    assert "the viewer role may not control sync runs" in answer
    assert "Dead letters of acme" in answer
    assert await states(console) == {}

    # A form posted from another site is refused before the API is asked.
    await console.sign_in(await console.api.token(Role.OPERATOR))
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/dead-letters/replay",
        form={"id": "app_changes_dlq:0:1"},
        headers={"origin": "https://elsewhere.example"},
    )
    assert refused.status == 403
    assert await states(console) == {}


@pytest.mark.usefixtures("dead_letters")
async def test_readable_on_a_narrow_window(kafka_console: Console) -> None:
    console, page = kafka_console, kafka_console.page
    await page.set_viewport_size({"width": 390, "height": 800})
    await console.sign_in(await console.api.token(Role.OPERATOR))
    await page.goto(f"{console.base}/console/tenants/acme/dead-letters")
    await page.locator("tr[data-id='app_changes_dlq:0:0']").get_by_text("Payload").click()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px window"
    await console.shot("narrow-dead-letters")
    await expect(page.get_by_role("button", name="Replay selected")).to_be_visible()
