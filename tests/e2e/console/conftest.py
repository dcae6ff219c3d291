"""What the console's end-to-end journeys share: Chromium (the integration tests' browser, one per
session) and a fresh page of it per test, signed in by :func:`sign_in`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.integration.console.conftest import browser  # noqa: F401 (fixture)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:  # noqa: F811
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    opened = await context.new_page()
    opened.set_default_timeout(20_000)
    try:
        yield opened
    finally:
        await context.close()


async def sign_in(page: Page, base: str, token: str, tenant: str = "alpha") -> None:
    """Signed in at ``base`` (the console's root URL) with ``token``: ``tenant``'s card is shown."""
    await page.goto(f"{base}/sign-in")
    await page.get_by_label("API token or OpenID Connect access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(f"li.card[data-tenant={tenant}]")).to_contain_text("Errors, 24 h")
