"""The console's sign-in, tenant cards, tenant page, run-now, pause and resume, in Chromium."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import expect

from services.admin.auth import Role
from tests.integration.admin.conftest import migrated  # noqa: F401 (fixture)
from tests.integration.admin_api.harness import serving
from tests.integration.console.conftest import Console

pytestmark = pytest.mark.integration


async def test_signing_in_and_the_tenant_cards(console: Console) -> None:
    page = console.page
    # Signed out, a page sends the browser to the sign-in page and back after it.
    await page.goto(f"{console.base}/console/tenants/acme")
    await expect(page).to_have_url(f"{console.base}/console/sign-in?next=/console/tenants/acme")
    await console.sign_in("dpx_not-a-real-token", here=True)
    await expect(page.get_by_role("alert")).to_have_text("that credential is invalid, expired or revoked")

    now = datetime.now(UTC)
    ledger = {(now - timedelta(minutes=m)).isoformat(): 2_300 for m in (1, 90)}
    await console.api.db.execute(
        "INSERT INTO governor_budgets (tenant_id, state) VALUES ('acme', $1::jsonb)", json.dumps({"ledger": ledger})
    )
    await console.sign_in(await console.api.token(Role.OPERATOR, name="night shift"), here=True)
    await expect(page).to_have_url(f"{console.base}/console/tenants/acme")
    await page.get_by_role("link", name="Tenants").click()
    card = page.locator("li.card[data-tenant=acme]")
    await expect(card.get_by_role("link", name="acme")).to_be_visible()
    await expect(card).to_contain_text("not connected")
    await expect(card).to_contain_text("4,600 of 5,000 — under 10 % left")
    await expect(
        card.get_by_role("img", name="API calls of the daily cap: 4,600 of 5,000 used, 8% left (low)")
    ).to_be_visible()
    await expect(page.get_by_text("night shift (operator)")).to_be_visible()
    await console.shot("tenants")

    # The keyboard reaches the skip link first.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("status")).to_have_text("signed out")
    await page.goto(f"{console.base}/console/tenants")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_the_last_sync_each_way_with_its_lag_on_the_card_and_the_tenant_page(console: Console) -> None:
    page = console.page
    now = datetime.now(UTC)
    resolved = {"writes": {"app": {"kind": "update", "fields": ["name"]}}}
    rows = [
        # Two hours ago, logged before lags were: an hour with no lag.
        ("writer", "write.succeeded", now - timedelta(hours=2), {"count": 5}),
        ("writer", "write.succeeded", now - timedelta(minutes=3, seconds=10), {"count": 2, "lag_ms": 1_200}),
        (
            "conflict-resolver",
            "change.resolved",
            now - timedelta(minutes=4, seconds=10),
            {**resolved, "lag_ms": 42_000},
        ),
    ]
    for service, event, at, detail in rows:
        await console.api.db.execute(
            "INSERT INTO sync_log (at, tenant_id, service, event, detail) VALUES ($1, 'acme', $2, $3, $4::jsonb)",
            at,
            service,
            event,
            json.dumps(detail),
        )
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants")
    card = page.locator("li.card[data-tenant=acme]")
    await expect(card.locator("[data-way=to_crm]")).to_have_text("to Salesforce 3 min ago · lag 1.2 s")
    await expect(card.locator("[data-way=to_app]")).to_have_text("to the app 4 min ago · lag 42 s")

    await card.get_by_role("link", name="acme").click()
    await expect(
        page.get_by_role(
            "img",
            name="Lag to Salesforce: largest lag 1.2 s in the last 24 hours, latest hour with a lag 1.2 s;"
            " 23 hours without one",
        )
    ).to_be_visible()
    await expect(
        page.get_by_role(
            "img",
            name="Lag to the app: largest lag 42 s in the last 24 hours, latest hour with a lag 42 s;"
            " 23 hours without one",
        )
    ).to_be_visible()
    await expect(
        page.get_by_text("Last sync to Salesforce 3 min ago · lag 1.2 s; to the app 4 min ago · lag 42 s.")
    ).to_be_visible()
    await console.shot("tenant-lag")


async def test_run_now_pause_and_resume_from_the_tenant_page(console: Console) -> None:
    page = console.page
    await console.sign_in(await console.api.token(Role.OPERATOR, name="night shift"))
    await page.goto(f"{console.base}/console/tenants/acme")
    await expect(
        page.get_by_role("img", name="API calls per hour: 0 calls in the last 24 hours, most in one hour 0")
    ).to_have_count(0)
    row = page.locator("tr[data-pair=partners]")
    await row.get_by_label("Job for partners").select_option("reconcile")
    await row.get_by_role("button", name="Run now").click()
    await expect(page.get_by_role("heading", name="reconcile of partners")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("reconcile of partners: requested")
    job = await console.api.db.fetchrow("SELECT kind, object_pair, status, requested_by FROM jobs")
    assert (job["kind"], job["object_pair"], job["status"]) == ("reconcile", "partners", "requested")
    assert job["requested_by"].startswith("night shift (token ")
    await console.shot("job")

    await page.get_by_role("link", name="← acme").click()
    await expect(page.locator("section", has=page.get_by_role("heading", name="Jobs"))).to_contain_text("reconcile")
    await row.get_by_label("Direction to pause for partners").select_option("to_app")
    await row.get_by_role("button", name="Pause partners").click()
    await expect(page.get_by_role("status")).to_have_text("paused partners, to the app")
    await expect(row).to_contain_text("paused to_app")
    assert await console.api.db.fetchval("SELECT count(*) FROM sync_pauses WHERE tenant_id = 'acme'") == 1
    await console.shot("tenant")
    await row.get_by_role("button", name="Resume partners").click()
    await expect(page.get_by_role("status")).to_have_text("resumed partners, both ways")
    assert await console.api.db.fetchval("SELECT count(*) FROM sync_pauses WHERE tenant_id = 'acme'") == 0


async def test_what_the_credential_may_not_do_the_console_may_not_either(console: Console) -> None:
    page = console.page
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants/acme")
    # A viewer is offered no run control...
    row = page.locator("tr[data-pair=partners]")
    await expect(row).to_contain_text("not paused")
    await expect(row.get_by_role("button", name="Run now")).to_have_count(0)
    await expect(row.get_by_role("button", name="Pause partners")).to_have_count(0)
    await expect(page.get_by_role("button", name="Pause every pair")).to_have_count(0)
    await expect(page.get_by_text("Only operators and admins can run jobs, pause or resume syncing.")).to_be_visible()
    # ... and the form sent anyway is the API's to refuse.
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/jobs",
        form={"kind": "poll", "objectPair": "partners"},
        headers={"origin": console.base},
    )
    assert refused.status == 403
    assert "the viewer role may not control sync runs" in await refused.text()
    assert await console.api.db.fetchval("SELECT count(*) FROM jobs") == 0

    # A tenant out of scope is not found, as over the API.
    await console.sign_in(await console.api.token(Role.ADMIN, ["other"]))
    response = await page.goto(f"{console.base}/console/tenants/acme")
    assert response is not None
    assert response.status == 404
    await expect(page.get_by_role("alert")).to_have_text("no tenant 'acme'")

    # A form posted from another site is refused, however valid the session.
    refused = await page.request.post(
        f"{console.base}/console/tenants/acme/pause",
        form={"direction": "both"},
        headers={"origin": "https://elsewhere.example"},
    )
    assert refused.status == 403
    assert "not sent from this console" in await refused.text()


async def test_readable_on_a_narrow_window(console: Console) -> None:
    page = console.page
    await page.set_viewport_size({"width": 390, "height": 800})
    await console.sign_in(await console.api.token(Role.ADMIN))
    await page.goto(f"{console.base}/console/tenants/acme")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px window"
    await expect(page.locator("tr[data-pair=partners]").get_by_role("button", name="Run now")).to_be_visible()


async def test_a_credential_no_token_looks_like_is_refused_not_a_server_error(console: Console) -> None:
    await console.sign_in("dpx_“pasted”\u00a0token")
    await expect(console.page.get_by_role("alert")).to_have_text("that credential is invalid, expired or revoked")


async def test_behind_a_proxy_that_ends_tls_the_public_origin_is_this_servers(migrated: str) -> None:  # noqa: F811
    async with serving(migrated, public_url="https://duplex.example") as api:
        token = await api.token(Role.VIEWER)
        form = {"credential": token, "next": "/console/tenants"}
        public = await api.http.post("/console/sign-in", data=form, headers={"origin": "https://duplex.example"})
        assert public.status_code == 303, public.text
        # The browser reached it over https: the session cookie is only ever sent back that way.
        assert "secure" in public.headers["set-cookie"].lower()
        elsewhere = await api.http.post("/console/sign-in", data=form, headers={"origin": "https://evil.example"})
        assert elsewhere.status_code == 401
        assert "not sent from this console" in elsewhere.text
