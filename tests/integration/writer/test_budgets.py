"""The writer under the real rate-limit-governor: caps hold, one tenant's throttling never slows another."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from devstack.emulator import EmulatorProcess
from services.common.settings import PostgresSettings
from services.common.topics import Topic, TopicNames
from services.rate_limit_governor.app import run as run_governor
from services.rate_limit_governor.settings import GovernorSettings
from services.writer.app import run as run_writer
from tests.integration.writer.harness import (
    SUCCEEDED,
    TopicReader,
    api_used,
    command,
    org_id,
    outcomes,
    prepare_database,
    resolver,
    send,
    tenant_document,
    upstream,
    writer_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@asynccontextmanager
async def governed_writer(
    bootstrap: str, names: TopicNames, dsn: str, emulator: EmulatorProcess, tenants: dict[str, str]
) -> AsyncIterator[None]:
    async with run_governor(GovernorSettings(port=0, postgres=PostgresSettings(dsn=dsn))) as governor:
        settings = writer_settings(
            bootstrap,
            names,
            dsn,
            emulator,
            service_name=f"writer-{uuid.uuid4().hex[:8]}",
            governor_target=f"127.0.0.1:{governor.port}",
            governor_max_wait_seconds=2,
            batch_window_ms=200,
        )
        async with run_writer(settings, secrets=resolver(emulator, tenants)):
            yield


def commands(tenant: str, run: str, total: int) -> list[object]:
    return [
        command(tenant, [(f"{run}{n}", {"Name": f"{tenant} {n}"}) for n in range(start, start + 100)])
        for start in range(0, total, 100)
    ]


async def warnings(dsn: str, tenant: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM sync_log WHERE tenant_id = $1 AND event = 'budget.warning'", tenant
            )
        )
    finally:
        await conn.close()


async def test_a_throttled_tenant_stays_under_its_cap_and_never_slows_another(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    await prepare_database(
        fresh_database,
        [
            tenant_document("tiny", emulator, org="acme", cap=6),
            tenant_document("large", emulator, org="globex", cap=100_000),
        ],
    )
    run = f"b{uuid.uuid4().hex[:8]}-"
    tiny_before, large_before = api_used(emulator, "acme"), api_used(emulator, "globex")
    async with (
        governed_writer(kafka_bootstrap, topic_names, fresh_database, emulator, {"tiny": "acme", "large": "globex"}),
        TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
        upstream(kafka_bootstrap) as broker,
    ):
        tiny, large = commands("tiny", run, 3000), commands("large", run, 2000)
        interleaved = [c for pair in zip(tiny, large + [None] * 10, strict=True) for c in pair if c is not None]
        started = time.monotonic()
        await send(broker, topic_names, interleaved)  # type: ignore[arg-type]
        await reader.until(
            lambda: sum(1 for s in outcomes(reader) if s.tenant_id == "large") >= 2000, within=60, what="large"
        )
        large_done = time.monotonic() - started
        # Give the throttled tenant time to try (and be refused) some more.
        await asyncio.sleep(3)
        await reader.poll()
        tiny_calls = api_used(emulator, "acme") - tiny_before
        large_calls = api_used(emulator, "globex") - large_before

    settled = outcomes(reader)
    large_settled = [s for s in settled if s.tenant_id == "large"]
    tiny_settled = [s for s in settled if s.tenant_id == "tiny"]
    assert {s.status for s in large_settled} == {SUCCEEDED}
    assert len(large_settled) == 2000
    assert large_calls <= 11
    assert large_done < 30, large_done
    assert tiny_calls <= 6, tiny_calls
    assert 0 < len(tiny_settled) <= 6 * 200
    assert await warnings(fresh_database, "tiny") == 1
    assert await warnings(fresh_database, "large") == 0


async def test_calls_made_by_other_integrations_reduce_what_is_granted(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, emulator: EmulatorProcess
) -> None:
    await prepare_database(fresh_database, [tenant_document("shared", emulator, org="globex", cap=100_000)])
    org = org_id(emulator, "globex")
    usage = emulator.admin("GET", f"/orgs/{org}/usage").json()
    # Other integrations leave Duplex (90 % share of the org's allocation) 4 calls.
    headroom = 4
    others = int(usage["max"] * 0.9) - usage["used"] - headroom
    emulator.admin("POST", f"/orgs/{org}/usage", {"requests": others})
    before = api_used(emulator, "globex")
    run = f"o{uuid.uuid4().hex[:8]}-"
    try:
        async with (
            governed_writer(kafka_bootstrap, topic_names, fresh_database, emulator, {"shared": "globex"}),
            TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
            upstream(kafka_bootstrap) as broker,
        ):
            await send(broker, topic_names, commands("shared", run, 2000))  # type: ignore[arg-type]
            await reader.until(lambda: len(reader.records) >= 200, within=30, what="first outcomes")
            await asyncio.sleep(3)
            await reader.poll()
            calls = api_used(emulator, "globex") - before
    finally:
        emulator.admin("POST", f"/orgs/{org}/reset")

    # The first call is made before Salesforce has told anyone about the others' usage.
    assert calls <= headroom + 1, calls
    assert len(reader.records) <= (headroom + 1) * 200
    assert await warnings(fresh_database, "shared") == 1
