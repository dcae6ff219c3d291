"""The console in a real browser: Debian's Chromium (installed by ``make setup``; Playwright never
downloads one) against the admin service serving on a real port with a migrated database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from devstack.install import CHROMIUM
from services.admin.auth import Role
from tests.integration.admin.conftest import SAMPLE_TEXT, migrated  # noqa: F401 (fixture)
from tests.integration.admin_api.harness import Api, serving

# Set to a folder to keep a screenshot of each page a test visits (docs/console/ is made this way).
SCREENSHOTS = os.environ.get("DUPLEX_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # As root (CI), Chromium's sandbox cannot start; the pages are the test's own.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        await launched.close()


@dataclass
class Console:
    api: Api
    base: str
    page: Page

    async def sign_in(self, token: str, *, here: bool = False) -> None:
        """Sign in with ``token``, on the sign-in page the browser is on (``here``) or a new one."""
        if not here:
            await self.page.goto(f"{self.base}/console/sign-in")
        await self.page.get_by_label("API token or OpenID Connect access token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()

    async def shot(self, name: str) -> None:
        if SCREENSHOTS:
            await self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture
async def console(migrated: str, browser: Browser) -> AsyncIterator[Console]:  # noqa: F811
    async with serving(migrated) as api:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        setup = await api.token(Role.ADMIN, name="console set-up")
        assert (await api.apply(setup, SAMPLE_TEXT)).status_code == 201
        try:
            yield Console(api, f"http://127.0.0.1:{api.running.port}", page)
        finally:
            await context.close()
