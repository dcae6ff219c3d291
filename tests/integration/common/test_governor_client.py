"""The governor client (a CallBudget) against a real governor on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from services.admin.config_store import ConfigStore
from services.common.db import migrate
from services.common.governor_client import BudgetUnavailable, GovernorBudget, GovernorUnavailable, UnknownTenant
from services.common.settings import PostgresSettings
from services.common.tenant_config import parse_tenant_config
from services.rate_limit_governor.app import run
from services.rate_limit_governor.settings import GovernorSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def tenant(name: str, cap: int) -> Any:
    return parse_tenant_config(
        {
            "apiVersion": "duplex.dev/v1",
            "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {
                "salesforce": {
                    "instanceUrl": f"https://{name}.my.salesforce.com",
                    "auth": {
                        "mode": "client_credentials",
                        "clientId": "id",
                        "clientSecret": {"secretRef": {"env": "X"}},
                    },
                    "dailyApiCap": cap,
                }
            },
        }
    )


@pytest.fixture
async def database(fresh_database: str) -> str:
    await migrate(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        # 86,400 a day refills one call a second: a denied call is worth asking again a second later.
        await ConfigStore(conn).apply([tenant("steady", 86_400), tenant("tiny", 5)], "test")
    finally:
        await conn.close()
    return fresh_database


@asynccontextmanager
async def governed(dsn: str, **options: Any) -> AsyncIterator[GovernorBudget]:
    settings = GovernorSettings(port=0, postgres=PostgresSettings(dsn=dsn), burst=3)
    async with run(settings) as governor:
        budget, channel = GovernorBudget.connect(f"127.0.0.1:{governor.port}", **options)
        try:
            yield budget
        finally:
            await channel.close(None)


async def test_a_denied_acquire_waits_until_not_before_then_gets_its_call(database: str) -> None:
    async with governed(database, max_wait=timedelta(seconds=10)) as budget:
        for _ in range(3):
            await budget.acquire("steady", 1)
        started = time.monotonic()
        await budget.acquire("steady", 1)
        waited = time.monotonic() - started

    assert 0.3 < waited < 5


async def test_past_the_bounded_wait_it_says_when_to_come_back_at_most_a_minute_later(database: str) -> None:
    async with governed(database, max_wait=timedelta(seconds=2)) as budget:
        for _ in range(3):  # the burst; then 5 a day refill one call every 4.8 hours
            await budget.acquire("tiny", 1)
        started = time.monotonic()
        with pytest.raises(BudgetUnavailable) as raised:
            await budget.acquire("tiny", 1)

    assert time.monotonic() - started < 1  # the cap frees nothing for hours: no point waiting
    assert raised.value.reason == "spreading calls over the day"
    # Hours away as the governor sees it, but a raised cap must not wait that long: ask again within a minute.
    assert time.time() + 50 < raised.value.not_before.timestamp() <= time.time() + 60


async def test_a_waiting_acquire_can_be_cancelled(database: str) -> None:
    async with governed(database, max_wait=timedelta(seconds=30)) as budget:
        for _ in range(3):
            await budget.acquire("steady", 1)
        waiting = asyncio.create_task(budget.acquire("steady", 5))
        await asyncio.sleep(0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_reported_usage_by_others_reduces_what_is_granted(database: str) -> None:
    async with governed(database) as budget:
        await budget.report("steady", used=8_995, limit=10_000)  # 90 % share: 5 calls left
        state = await budget.budget("steady")
        for _ in range(3):
            await budget.acquire("steady", 1)
        with pytest.raises(BudgetUnavailable) as raised:
            await budget.acquire("steady", 3)

    assert state.remaining == 5
    assert state.warning
    assert raised.value.reason == "org allocation exhausted"


async def test_without_a_governor_no_call_is_allowed(database: str) -> None:
    async with governed(database) as budget:
        with pytest.raises(UnknownTenant):
            await budget.acquire("nobody", 1)
    down, channel = GovernorBudget.connect("127.0.0.1:1", rpc_timeout=1.0)
    try:
        with pytest.raises(GovernorUnavailable):
            await down.acquire("steady", 1)
        await down.report("steady", 1, 100)  # dropped with a warning, never raised
    finally:
        await channel.close(None)
