"""The admin API tests' one set-up: a migrated database and the API running in-process on it; for
the connect flow, the emulator process and two orgs of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.emulator import EmulatorProcess
from services.common.db import migrate
from services.common.salesforce import env_secrets
from tests.integration.admin_api.connecting import PUBLIC_URL, Connecting, Org, browser, new_org
from tests.integration.admin_api.harness import Api, serving


@pytest.fixture
async def migrated(fresh_database: str) -> str:
    await migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def api(migrated: str) -> AsyncIterator[Api]:
    async with serving(migrated) as started:
        yield started


@pytest.fixture
def orgs(emulator: EmulatorProcess) -> tuple[Org, Org]:
    return new_org(emulator), new_org(emulator)


@pytest.fixture
async def connecting(migrated: str, emulator: EmulatorProcess, orgs: tuple[Org, Org]) -> AsyncIterator[Connecting]:
    secrets = env_secrets({org.secret_env: org.client_secret for org in orgs})
    async with (
        serving(migrated, secrets=secrets, public_url=PUBLIC_URL, salesforce_ca_file=emulator.ca_cert) as api,
        browser(emulator) as http,
    ):
        yield Connecting(api, emulator, http, await api.token(name="connector"))
