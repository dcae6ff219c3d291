"""The console's Salesforce connection page, in Chromium: the state, the preflight check, connecting
through the browser against the emulator process (the whole flow: the console, the emulator's
authorize endpoint, the API's callback and back) and revoking."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser, expect

from devstack.emulator import EmulatorProcess
from services.admin.auth import Role
from services.common.salesforce import env_secrets
from tests.integration.admin.conftest import SAMPLE_TEXT
from tests.integration.admin_api.connecting import Org, new_org, salesforce_section, tenant_document
from tests.integration.admin_api.harness import bearer, serving
from tests.integration.console.conftest import Console

pytestmark = pytest.mark.integration


@dataclass
class Emulated:
    """The console of an API whose tenant "acme" is an oauth_pkce tenant of an emulator org."""

    console: Console
    emulator: EmulatorProcess
    org: Org


@pytest.fixture
async def emulated(migrated: str, browser: Browser, emulator: EmulatorProcess) -> AsyncIterator[Emulated]:
    org = new_org(emulator)
    # The org's own connected app sends browsers to another API's callback: this one's is known
    # only once it serves, so the app Duplex uses here is registered then, with a secret chosen now.
    app = dataclasses.replace(org, client_id=f"{org.client_id}-console", client_secret=f"{org.client_secret}-console")
    secrets = env_secrets({app.secret_env: app.client_secret})
    async with serving(migrated, secrets=secrets, salesforce_ca_file=emulator.ca_cert) as api:
        base = f"http://127.0.0.1:{api.running.port}"
        emulator.admin(
            "POST",
            f"/orgs/{org.org_id}/clients",
            {
                "name": "duplex console",
                "client_id": app.client_id,
                "client_secret": app.client_secret,
                "redirect_uris": [f"{base}/api/v1/oauth/callback"],
                "pkce_required": True,
                "require_secret": True,
                "scopes": ["api", "refresh_token"],
            },
        )
        document = tenant_document("acme", salesforce_section(emulator, app))
        admin = await api.token(Role.ADMIN, name="console set-up")
        applied = await api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(admin))
        assert applied.status_code == 201, applied.text
        # The emulator's certificate is from its own CA, which this browser does not know.
        context = await browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=True)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield Emulated(Console(api, base, page), emulator, app)
        finally:
            await context.close()


async def connection_status(console: Console) -> str | None:
    status: str | None = await console.api.db.fetchval(
        "SELECT status FROM salesforce_connections WHERE tenant_id = 'acme'"
    )
    return status


async def test_an_unconnected_tenant_and_its_failing_check(console: Console) -> None:
    page = console.page
    await console.sign_in(await console.api.token(Role.OPERATOR, name="night shift"))
    await page.goto(f"{console.base}/console/tenants/acme")
    await page.get_by_role("link", name="Connection", exact=True).click()

    await expect(page.get_by_role("heading", name="Salesforce connection of acme")).to_be_visible()
    state = page.locator("dl.facts")
    await expect(state).to_contain_text("not connected — It was never connected: connect it.")
    await expect(state).to_contain_text("oauth_pkce")
    # Connecting is an admin's: an operator may check, not connect.
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_have_count(0)
    await expect(page.get_by_text("Only admins can connect or reconnect a tenant.")).to_be_visible()
    # Nothing to revoke yet.
    await expect(page.get_by_role("button", name="Revoke")).to_have_count(0)

    await page.get_by_role("button", name="Check").click()

    result = page.locator("section.check-result")
    await expect(result.get_by_role("heading")).to_have_text(re.compile(r"Check: \d+ of \d+ checks failed"))
    first = result.locator("li").first
    await expect(first).to_contain_text("API access failed")
    await expect(first.locator(".mark")).to_have_text("✗")
    await expect(first.locator(".detail")).to_contain_text("not connected")
    await expect(first.locator(".fix")).to_contain_text("Fix:")
    await expect(result.locator("li.check-ok")).to_have_count(0)
    await console.shot("connection-check")
    audit = await console.api.db.fetchval("SELECT detail->>'ok' FROM audit_log WHERE action = 'connection.checked'")
    assert audit == "false"


async def test_what_the_role_may_not_do_and_a_server_side_tenant(console: Console) -> None:
    page = console.page
    await console.sign_in(await console.api.token(Role.VIEWER))
    await page.goto(f"{console.base}/console/tenants/acme/connection")
    # A viewer is offered neither connecting nor the check...
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_have_count(0)
    await expect(page.get_by_role("button", name="Check")).to_have_count(0)
    await expect(page.get_by_text("Only admins can connect or reconnect a tenant.")).to_be_visible()
    await expect(page.get_by_text("Only operators and admins can run the check.")).to_be_visible()
    # ... and the forms sent anyway are the API's to refuse.
    for action, refusal in (
        ("connect", "the viewer role may not change configuration"),
        ("check", "the viewer role may not control sync runs"),
    ):
        refused = await page.request.post(
            f"{console.base}/console/tenants/acme/connection/{action}", form={}, headers={"origin": console.base}
        )
        assert refused.status == 403
        assert refusal in await refused.text()
    assert await console.api.db.fetchval("SELECT count(*) FROM oauth_authorizations") == 0

    server_side = SAMPLE_TEXT.replace("mode: oauth_pkce", "mode: client_credentials", 1)
    server_side = server_side.replace("      scopes: [api, refresh_token]\n", "", 1)
    applied = await console.api.apply(await console.api.token(), server_side)
    assert applied.status_code == 200, applied.text
    await page.goto(f"{console.base}/console/tenants/acme/connection")
    connect = page.locator("section", has=page.get_by_role("heading", name="Connect", exact=True))
    await expect(connect).to_contain_text(
        "Auth mode client_credentials: services sign in to the org server-side with the tenant's configured"
        " credentials, so there is nothing to connect in a browser."
    )
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_have_count(0)
    await expect(page.locator("dl.facts")).to_contain_text("No service has signed in to the org for it yet.")


async def test_connect_check_and_revoke_in_the_browser(emulated: Emulated) -> None:
    console, org = emulated.console, emulated.org
    page = console.page
    await console.sign_in(await console.api.token(Role.ADMIN, name="org admin"))
    await page.goto(f"{console.base}/console/tenants/acme/connection")
    await expect(page.locator("dl.facts")).to_contain_text("not connected")

    async with page.expect_request(lambda r: "/services/oauth2/authorize" in r.url) as asked:
        await page.get_by_role("button", name="Connect", exact=True).click()
    authorize = urlsplit((await asked.value).url)
    query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert f"{authorize.scheme}://{authorize.netloc}" == emulated.emulator.info["login_url"].rstrip("/")
    assert query["client_id"] == org.client_id
    assert query["redirect_uri"] == f"{console.base}/api/v1/oauth/callback"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"]
    assert query["state"]

    # The emulator approves at once and sends the browser to the API's callback, which links back.
    await expect(page.get_by_role("heading", name="Salesforce connected")).to_be_visible()
    await expect(page.get_by_text(f"Tenant acme is connected to org {org.org_id} as {org.username}.")).to_be_visible()
    await page.get_by_role("link", name="Back to the Duplex console").click()

    await expect(page).to_have_url(f"{console.base}/console/tenants/acme/connection")
    state = page.locator("dl.facts")
    await expect(state).to_contain_text("connected — The tokens work.")
    await expect(state).to_contain_text(org.org_id)
    await expect(state).to_contain_text(org.username)
    await expect(state).to_contain_text("org admin (token ")
    assert await connection_status(console) == "connected"
    await console.shot("connection")

    # The org lacks the fields the sample maps: signing in works, those checks fail with their fixes.
    await page.get_by_role("button", name="Check").click()
    result = page.locator("section.check-result")
    access = result.locator("li", has_text="API access")
    await expect(access.locator(".mark")).to_have_text("✓")
    await expect(access).to_contain_text("API access passed")
    await expect(access.locator(".fix")).to_have_count(0)
    missing = result.locator("li.check-failed", has_text="Partner_Status__c").first
    await expect(missing.locator(".mark")).to_have_text("✗")
    await expect(missing.locator(".fix")).to_contain_text("Fix:")

    # Revoking needs the box ticked, in the browser and at the server.
    await page.get_by_role("button", name="Revoke").click()
    assert await page.get_by_role("checkbox").evaluate("box => box.validity.valueMissing")
    unconfirmed = await page.request.post(
        f"{console.base}/console/tenants/acme/connection/revoke", form={}, headers={"origin": console.base}
    )
    assert unconfirmed.status == 400
    assert "revoking needs a confirmation" in await unconfirmed.text()
    assert await connection_status(console) == "connected"

    await page.get_by_label("Revoke Duplex's access to the org").check()
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text("revoked the Salesforce connection of acme: it is revoked")
    await expect(page.locator("dl.facts")).to_contain_text("revoked — It was revoked through Duplex")
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_be_visible()
    assert await connection_status(console) == "revoked"


async def test_the_connection_page_on_a_narrow_window(console: Console) -> None:
    page = console.page
    await page.set_viewport_size({"width": 390, "height": 800})
    await console.sign_in(await console.api.token(Role.OPERATOR))
    await page.goto(f"{console.base}/console/tenants/acme/connection")
    await page.get_by_role("button", name="Check").click()
    await expect(page.locator("section.check-result li").first).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px window"
    await console.shot("narrow-connection")
