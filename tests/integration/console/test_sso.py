"""Signing in to the console through an OpenID Connect provider, in Chromium: the authorization code
flow with PKCE against a real provider on another site (tests/fixtures/identity_provider.py), the
console keeping the access token, and the API deciding what it grants as for a pasted one."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from services.admin.auth import Role
from services.admin.oidc import LEEWAY_SECONDS
from tests.fixtures.identity_provider import Client, IdentityProvider, User, identity_provider
from tests.fixtures.keys import new_key
from tests.integration.admin.conftest import SAMPLE_TEXT, migrated  # noqa: F401 (fixture)
from tests.integration.admin_api.harness import Api, serving
from tests.integration.console.test_roles import _SUBMITTERS, SIGN_OUT, TENANT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AUDIENCE = "duplex-admin"
CLIENT = "duplex-console"
USERS = {
    "alice": User("u-alice", "alice@example.test", ["admin"], "*"),
    "victor": User("u-victor", "victor@example.test", ["viewer"], ["acme"]),
    # Signed in at the provider, but its access token is for another API.
    "mallory": User("u-mallory", "mallory@example.test", ["admin"], "*", audience="another-api"),
    # Signed in at the provider, with no Duplex role.
    "nora": User("u-nora", "nora@example.test", ["staff"], "*"),
}
SSO_BUTTON = "Sign in with single sign-on"
CALLBACK = re.compile(r"/console/oidc/callback\?")


@dataclass
class SsoConsole:
    api: Api
    idp: IdentityProvider
    base: str
    page: Page

    async def start(self, path: str = "/console/tenants") -> None:
        """Open ``path`` signed out, and leave for the provider from the sign-in page it leads to."""
        await self.page.goto(f"{self.base}{path}")
        await expect(self.page).to_have_url(re.compile(r"/console/sign-in\?next="))
        await self.page.get_by_role("button", name=SSO_BUTTON).click()
        await expect(self.page.get_by_role("heading", name="Test identity provider")).to_be_visible()

    async def decide(self, user: str, decision: str = "Approve") -> None:
        await self.page.get_by_label("User").select_option(user)
        await self.page.get_by_role("button", name=decision, exact=True).click()

    async def sign_in_as(self, user: str, path: str = "/console/tenants") -> None:
        await self.start(path)
        await self.decide(user)

    async def error(self) -> str:
        alert = self.page.locator("#sign-in-error")
        await expect(alert).to_be_visible()
        return await alert.inner_text()


@asynccontextmanager
async def sso_console(dsn: str, browser: Browser, secret: str | None = None) -> AsyncIterator[SsoConsole]:
    async with identity_provider(AUDIENCE, dict(USERS)) as idp:
        overrides: dict[str, Any] = {"oidc_client_secret": secret} if secret else {}
        async with serving(
            dsn,
            oidc_issuer=idp.issuer,
            oidc_audience=AUDIENCE,
            oidc_jwks_url=f"{idp.issuer}/jwks",
            oidc_client_id=CLIENT,
            **overrides,
        ) as api:
            base = f"http://127.0.0.1:{api.running.port}"
            idp.clients[CLIENT] = Client(CLIENT, f"{base}/console/oidc/callback", secret)
            setup = await api.token(Role.ADMIN, name="console set-up")
            assert (await api.apply(setup, SAMPLE_TEXT)).status_code == 201
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(15_000)
            try:
                yield SsoConsole(api, idp, base, page)
            finally:
                await context.close()


@pytest.fixture
async def sso(migrated: str, browser: Browser) -> AsyncIterator[SsoConsole]:  # noqa: F811
    async with sso_console(migrated, browser) as console:
        yield console


async def test_a_user_signs_in_through_the_provider_and_lands_where_they_were_going(sso: SsoConsole) -> None:
    await sso.start("/console/tenants/acme")
    # The browser went to the provider's own site, with a PKCE challenge and no secret in sight.
    assert sso.page.url.startswith(f"{sso.idp.browser_base}/authorize?")
    assert "code_challenge_method=S256" in sso.page.url
    await sso.decide("alice")

    await expect(sso.page).to_have_url(f"{sso.base}/console/tenants/acme")
    await expect(sso.page.locator("form.who")).to_contain_text("alice@example.test (admin)")
    # A public client: it named itself and proved the flow with its verifier, and used the code once.
    assert [(r["client_id"], r["grant_type"]) for r in sso.idp.token_requests] == [(CLIENT, "authorization_code")]
    cookies = {c["name"]: c for c in await sso.page.context.cookies()}
    assert "duplex_console_sso" not in cookies  # the flow's record is gone
    session = cookies["duplex_console"]
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"
    # The session holds the provider's access token, which the API accepts as it does a pasted one.
    me = await sso.api.http.get("/api/v1/me", headers={"authorization": f"Bearer {session['value']}"})
    assert me.json() == {"name": "alice@example.test", "kind": "oidc", "role": "admin", "tenants": None}

    await sso.page.get_by_role("link", name="Tenants").click()
    await expect(sso.page.get_by_role("link", name="acme", exact=True)).to_be_visible()
    await sso.page.get_by_role("button", name="Sign out").click()
    await expect(sso.page).to_have_url(re.compile(r"/console/sign-in\?done=signed"))
    await sso.page.goto(f"{sso.base}/console/tenants")
    await expect(sso.page).to_have_url(re.compile(r"/console/sign-in\?next="))


async def test_a_confidential_client_authenticates_with_its_secret(
    migrated: str,  # noqa: F811
    browser: Browser,
) -> None:
    async with sso_console(migrated, browser, secret="console-secret:with/odd=chars") as sso:
        await sso.sign_in_as("alice")
        await expect(sso.page).to_have_url(f"{sso.base}/console/tenants")
        await expect(sso.page.locator("form.who")).to_contain_text("alice@example.test (admin)")
        # client_secret_basic: no client_id in the form (the provider refuses the form otherwise).
        assert [sorted(r) for r in sso.idp.token_requests] == [["code", "grant_type", "redirect_uri"]]


async def test_a_viewer_from_the_provider_is_offered_nothing_that_changes_anything(sso: SsoConsole) -> None:
    await sso.sign_in_as("victor", TENANT)
    await expect(sso.page).to_have_url(f"{sso.base}{TENANT}")
    await expect(sso.page.locator("form.who")).to_contain_text("victor@example.test (viewer)")
    assert set(await sso.page.evaluate(_SUBMITTERS, TENANT)) == {SIGN_OUT}


async def test_denying_at_the_provider_shows_its_error(sso: SsoConsole) -> None:
    await sso.start()
    await sso.decide("alice", "Deny")

    assert "did not sign you in (access_denied: The user denied the request)" in await sso.error()
    assert sso.idp.token_requests == []
    assert not any(c["name"] == "duplex_console" for c in await sso.page.context.cookies())


async def test_a_forged_or_reused_state_is_refused(sso: SsoConsole) -> None:
    # Forged: an answer that is not the one this browser's sign-in waits for.
    await sso.start()
    await sso.page.goto(f"{sso.base}/console/oidc/callback?code=stolen&state=forged")
    assert "does not belong to this sign-in (its state differs)" in await sso.error()
    assert sso.idp.token_requests == []

    # Reused: the provider's real answer, a second time after it signed the user in.
    callbacks: list[str] = []
    sso.page.on("request", lambda r: callbacks.append(r.url) if CALLBACK.search(r.url) else None)
    await sso.sign_in_as("alice")
    await expect(sso.page).to_have_url(f"{sso.base}/console/tenants")
    await sso.page.get_by_role("button", name="Sign out").click()
    await expect(sso.page).to_have_url(re.compile(r"/console/sign-in\?done=signed"))
    response = await sso.page.goto(callbacks[-1])
    assert response is not None
    assert response.status == 400
    assert "not started in this browser, or it was already used" in await sso.error()
    assert len(sso.idp.token_requests) == 1
    await sso.page.goto(f"{sso.base}/console/tenants")
    await expect(sso.page).to_have_url(re.compile(r"/console/sign-in\?next="))


async def test_a_code_the_provider_refuses_is_a_clear_error(sso: SsoConsole) -> None:
    sso.idp.tamper_codes = True
    await sso.sign_in_as("alice")

    error = await sso.error()
    assert "refused to complete the sign-in (invalid_grant: Code not valid)" in error
    assert "Traceback" not in await sso.page.content()
    assert not any(c["name"] == "duplex_console" for c in await sso.page.context.cookies())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nonce": "another-sign-in"}, "is not for this sign-in (its nonce differs)"),
        ({"nonce": None}, "is not for this sign-in (its nonce differs)"),
        ({"aud": "another-client"}, "ID token is not valid (Audience doesn't match)"),
        ({"iss": "https://evil.example.test"}, "ID token is not valid (Invalid issuer)"),
        ({"exp": int(time.time()) - 3600}, "ID token is not valid (Signature has expired)"),
        ({"key": new_key()}, "ID token is not valid (Signature verification failed)"),
    ],
    ids=["other nonce", "no nonce", "other audience", "other issuer", "expired", "other key"],
)
async def test_an_id_token_that_does_not_prove_this_sign_in_is_refused(
    sso: SsoConsole, changes: dict[str, Any], message: str
) -> None:
    sso.idp.id_token_key = changes.get("key")
    sso.idp.id_token_changes = {k: v for k, v in changes.items() if k != "key"}
    await sso.sign_in_as("alice")

    assert message in await sso.error()
    assert not any(c["name"] == "duplex_console" for c in await sso.page.context.cookies())


@pytest.mark.parametrize("user", ["mallory", "nora"])
async def test_an_access_token_the_api_refuses_is_a_clear_error(sso: SsoConsole, user: str) -> None:
    await sso.sign_in_as(user)

    assert "Duplex does not accept its access token" in await sso.error()
    assert not any(c["name"] == "duplex_console" for c in await sso.page.context.cookies())


async def test_an_expired_access_token_sends_the_user_back_to_sign_in(sso: SsoConsole) -> None:
    # Past its exp already, but within the API's leeway for a few seconds more: enough to sign in.
    usable = 8
    sso.idp.access_lifetime = usable - LEEWAY_SECONDS
    await sso.sign_in_as("alice")
    signed_in_at = time.monotonic()
    await expect(sso.page).to_have_url(f"{sso.base}/console/tenants")
    await expect(sso.page.locator("form.who")).to_contain_text("alice@example.test")

    deadline = signed_in_at + usable + 20
    while "/console/sign-in" not in sso.page.url:
        assert time.monotonic() < deadline, "the expired session still shows pages"
        await sso.page.wait_for_timeout(250)  # a poll of the condition, not a guess at how long
        await sso.page.reload()
    await expect(sso.page.get_by_role("alert")).to_contain_text("your session has ended")
    # Signing in again through the provider works at once, back to the page the user was on.
    sso.idp.access_lifetime = 300
    await sso.page.get_by_role("button", name=SSO_BUTTON).click()
    await sso.decide("alice")
    await expect(sso.page).to_have_url(f"{sso.base}/console/tenants")
