"""Pause and resume through the real services: a paused tenant's changes are kept and flow on resume
in order, while a tenant sharing every topic and partition with it syncs as usual.

Two tenants, each with an org of its own, share every service process and topic. Alpha is paused
both ways (the row the admin API writes); then both tenants' users edit both sides, several edits
per record. Beta must converge while alpha holds every one of its edits back: no app edit of alpha
reaches Salesforce and no Salesforce edit reaches its app, and its changes wait undecided in
``held_inputs`` (nothing of them is decided, so no output waits in ``held_outputs``). After the
resume every record of alpha must hold its last edit on both sides (a change decided out of order
would leave an older value), with nothing held and no dead letter.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import asyncpg
import pytest

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.common.pauses import EVERY_PAIR, Way, pause, resume
from services.common.topics import TopicNames
from tests.e2e.pipeline.harness import TenantSpec, converged, dead_letters, problems_of, running, synced
from tests.e2e.pipeline.world import Tenant

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CAP = 5_000
EDITS = 40


async def _held(dsn: str, tenant: str) -> tuple[int, int]:
    """How many of the tenant's changes and outputs are held."""
    conn = await asyncpg.connect(dsn)
    try:
        counts = [
            int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant))
            for table in ("held_inputs", "held_outputs")
        ]
        return counts[0], counts[1]
    finally:
        await conn.close()


async def _paused(dsn: str, tenant: str, paused: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if paused:
            await pause(conn, tenant, [EVERY_PAIR], tuple(Way), "test", "pause test")
        else:
            await resume(conn, tenant, None, tuple(Way))
    finally:
        await conn.close()


def _leaks(tenant: Tenant, app_rows: dict[str, dict[str, object]], accounts: dict[str, dict[str, object]]) -> list[str]:
    """Alpha's edits that reached the other side although it was paused."""
    leaked = []
    for record in tenant.records:
        for side, column, value in record.edits:
            other = (
                accounts.get(record.crm_id or "", {}).get(tenant.fields[column])
                if side == "app"
                else app_rows.get(record.app_id or "", {}).get(column)
            )
            if other == value:
                leaked.append(f"{side} edit of {column} on app={record.app_id} crm={record.crm_id}")
    return leaked


async def test_a_paused_tenant_keeps_its_changes_in_order_while_its_neighbour_syncs(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    specs = [TenantSpec("alpha", "org-alpha", CAP), TenantSpec("beta", "org-beta", CAP)]
    async with running(emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs) as run:
        await synced(run, 5)
        alpha, beta = run.tenants
        await _paused(fresh_database, "alpha", True)

        rng = random.Random(7)
        for _ in range(EDITS):
            await alpha.edit(rng)
            await beta.edit(rng)

        # Beta converges while alpha's changes are held, and none of alpha's edits crosses over.
        deadline = time.monotonic() + 180
        while True:
            beta_problems, _ = await problems_of(beta)
            changes, outputs = await _held(fresh_database, "alpha")
            if not beta_problems and changes >= EDITS:
                break
            assert time.monotonic() < deadline, f"beta: {beta_problems[:5]}; alpha holds {changes} changes"
            await asyncio.sleep(1)
        assert outputs == 0, "alpha's changes were decided while it was paused both ways"
        assert _leaks(alpha, await alpha.app.rows(), await alpha.crm.accounts()) == []
        alpha_problems, _ = await problems_of(alpha)
        assert alpha_problems, "alpha converged while paused"

        await _paused(fresh_database, "alpha", False)
        assert not await converged(run, "after alpha resumed")
        assert await _held(fresh_database, "alpha") == (0, 0)
        assert await dead_letters(run) == []
