"""The console's configuration history: versions, compare, the current document and restore, in Chromium."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from services.admin.auth import Role
from tests.integration.admin.conftest import sample_with
from tests.integration.admin_api.harness import bearer
from tests.integration.console.conftest import Console

pytestmark = pytest.mark.integration

CAP = "spec.salesforce.dailyApiCap"
# The first pair's (partners') direction, where a schedule can follow.
PARTNERS_DIRECTION = "      direction: both\n      conflictPolicy: newest_wins\n"


async def versions(console: Console) -> list[int]:
    rows = await console.api.db.fetch("SELECT version FROM config_history WHERE tenant_id = 'acme' ORDER BY version")
    return [r["version"] for r in rows]


async def current_cap(console: Console) -> int:
    shown = await console.api.http.get("/api/v1/tenants/acme", headers=bearer(await console.api.token()))
    assert shown.status_code == 200, shown.text
    cap: int = shown.json()["document"]["spec"]["salesforce"]["dailyApiCap"]
    return cap


async def apply_cap(console: Console, cap: int, *, scheduled: bool = False) -> None:
    """The sample with another daily cap; ``scheduled``: and with the partners reconciled daily."""
    text = sample_with("dailyApiCap: 5000", f"dailyApiCap: {cap}")
    if scheduled:
        text = text.replace(PARTNERS_DIRECTION, f"{PARTNERS_DIRECTION}      schedule: {{reconcile: daily}}\n", 1)
    applied = await console.api.apply(await console.api.token(name="ci deploy"), text)
    assert applied.status_code == 200, applied.text


async def test_history_lists_the_versions_and_compares_two(console: Console) -> None:
    page = console.page
    await apply_cap(console, 6000, scheduled=True)
    await console.sign_in(await console.api.token(Role.VIEWER, name="auditor"))
    await page.goto(f"{console.base}/console/tenants/acme")
    await page.get_by_role("link", name="History", exact=True).click()

    await expect(page.get_by_role("heading", name="Configuration history of acme")).to_be_visible()
    newest, oldest = page.locator("tr[data-version='2']"), page.locator("tr[data-version='1']")
    await expect(newest).to_contain_text("current")
    await expect(newest).to_contain_text("ci deploy (token ")
    await expect(oldest).to_contain_text("console set-up (token ")
    await expect(oldest.get_by_role("link", name="Restore version 1…")).to_be_visible()
    # The current document, folded away until asked for.
    document = page.locator("details.document")
    await expect(document.locator("pre")).not_to_be_visible()
    await document.get_by_text("Current document (version 2) as YAML").click()
    await expect(document.locator("pre")).to_contain_text("dailyApiCap: 6000")
    await console.shot("history")

    # The two newest are picked already; compare them the other way round.
    await expect(page.get_by_label("Compare from version 1")).to_be_checked()
    await expect(page.get_by_label("Compare to version 2")).to_be_checked()
    await page.get_by_label("Compare from version 2").check()
    await page.get_by_label("Compare to version 1").check()
    await page.get_by_role("button", name="Compare").click()

    await expect(page).to_have_url(f"{console.base}/console/tenants/acme/diff?from=2&to=1")
    await expect(page.get_by_role("heading", name="Version 2 → version 1 of acme")).to_be_visible()
    change = page.locator(f"tr[data-path='{CAP}']")
    await expect(change.locator("td")).to_have_text(["changed", "6000", "5000"])
    # A mapping or list is shown as YAML, on one line when it is short.
    schedule = page.locator("tbody tr", has_text="spec.objects[0].schedule")
    await expect(schedule.locator("td")).to_have_text(["removed", "{reconcile: daily}", "(absent)"])
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.get_by_text("The same as a unified diff of the YAML documents").click()
    await expect(page.locator("details.document pre")).to_contain_text("-    dailyApiCap: 6000")
    await console.shot("diff")

    # What the API refuses is a problem page with the API's words.
    response = await page.goto(f"{console.base}/console/tenants/acme/diff?from=9&to=1")
    assert response is not None
    assert response.status == 404
    await expect(page.get_by_role("alert")).to_have_text("tenant 'acme' has no version 9")


async def test_restoring_needs_a_confirmation_and_makes_a_new_version(console: Console) -> None:
    page = console.page
    await apply_cap(console, 6000)
    await console.sign_in(await console.api.token(Role.ADMIN, name="release admin"))
    await page.goto(f"{console.base}/console/tenants/acme/history")
    await page.get_by_role("link", name="Restore version 1…").click()

    await expect(page.get_by_role("heading", name="Restore version 1 of acme?")).to_be_visible()
    change = page.locator(f"tr[data-path='{CAP}']")
    await expect(change.locator("td")).to_have_text(["changed", "6000", "5000"])
    await console.shot("restore")
    # Without the box ticked the browser does not send the form.
    await page.get_by_role("button", name="Restore version 1").click()
    await expect(page).to_have_url(f"{console.base}/console/tenants/acme/versions/1/restore")
    assert await page.get_by_role("checkbox").evaluate("box => box.validity.valueMissing")
    # Nor does the console restore a form sent without it.
    unconfirmed = await page.request.post(
        f"{console.base}/console/tenants/acme/versions/1/restore", form={}, headers={"origin": console.base}
    )
    assert unconfirmed.status == 400
    assert "restoring needs a confirmation" in await unconfirmed.text()
    assert await versions(console) == [1, 2]

    await page.get_by_label("Replace the current configuration (version 2) with version 1's document").check()
    await page.get_by_role("button", name="Restore version 1").click()

    await expect(page.get_by_role("status")).to_have_text("restored version 1 as version 3")
    await expect(page.locator("tr[data-version='3']")).to_contain_text("release admin (token ")
    assert await versions(console) == [1, 2, 3]
    assert await current_cap(console) == 5000
    audit = await console.api.db.fetchval(
        "SELECT detail->>'restoredFrom' FROM audit_log WHERE action = 'config.restored'"
    )
    assert audit == "1"


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
async def test_only_an_admin_may_restore(console: Console, role: Role) -> None:
    page = console.page
    await apply_cap(console, 6000)
    token = await console.api.token(role)
    before = await console.api.snapshot()
    await console.sign_in(token)
    await page.goto(f"{console.base}/console/tenants/acme/versions/1/restore")
    # What restoring would change is shown, but not offered...
    await expect(page.locator(f"tr[data-path='{CAP}'] td")).to_have_text(["changed", "6000", "5000"])
    await expect(page.get_by_role("button", name="Restore version 1")).to_have_count(0)
    await expect(page.get_by_role("checkbox")).to_have_count(0)
    await expect(page.get_by_text("Only admins can restore a version.")).to_be_visible()
    # ... and the form sent anyway is the API's to refuse.
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/versions/1/restore",
        form={"confirm": "yes"},
        headers={"origin": console.base},
    )
    assert refused.status == 403
    assert f"the {role.value} role may not change configuration" in await refused.text()
    assert await console.api.snapshot() == before
    assert await current_cap(console) == 6000


async def test_history_and_diff_are_readable_on_a_narrow_window(console: Console) -> None:
    page = console.page
    await page.set_viewport_size({"width": 390, "height": 800})
    await apply_cap(console, 6000)
    await console.sign_in(await console.api.token(Role.ADMIN))
    for path in ("history", "diff?from=1&to=2", "versions/1/restore"):
        await page.goto(f"{console.base}/console/tenants/acme/{path}")
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px window"
        await console.shot(f"narrow-{path.split('?')[0].replace('/', '-')}")
    await expect(page.get_by_role("button", name="Restore version 1")).to_be_in_viewport()
