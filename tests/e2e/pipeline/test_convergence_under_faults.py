"""Convergence under faults: every part of Duplex fails in turn while both sides keep editing.

Three tenants, each with its own emulated Salesforce org and its own partners app database, run
through one set of services (cdc-ingest, mapping, conflict-resolver, writer, governor), each an OS
process. Both sides edit at random the whole time while the test, one fault after another:
kills each service with SIGKILL and restarts it, restarts the Kafka broker and PostgreSQL, makes
Salesforce answer 503s and lock errors, expires every token, exhausts the org's API limit, injects
CDC gap events and expires the replay ids (events purged, streams dropped), and deletes records.

After the faults stop, the test waits for every record to hold, on both sides, the values the
policies prescribe (the newest edit for newest-wins fields, the owning side's last edit for
one-way fields), then checks: no lost change, no duplicate record on either side, no echo loop
(nothing more is written once converged), and no tenant over its daily API cap (counted by the
emulator per Sforce-Call-Options client). It prints the counts it checked.

One allowance, for what no one can know: a Salesforce edit whose change event was purged before
cdc-ingest read it (replay expiry) reaches Duplex only as the record read back, without the edit's
own time, so a newest-wins field edited on both sides then may end on either side's last edit;
both sides must still agree (see `problems_of`). The test lists every such field.

On failure it prints, for a few records, the sync log and every mapped change with its values.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.common.topics import Topic, TopicNames
from tests.e2e.pipeline.harness import (
    SERVICE_NAMES,
    Run,
    TenantSpec,
    converged,
    dead_letters,
    duplex_calls,
    edit_until,
    end_offsets,
    running,
    synced,
)
from tests.e2e.pipeline.world import ACCOUNT

# About 5 minutes, most of it the faults' own pace (each is followed by a while of normal running).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SEED_PER_SIDE = 12
CAPS = (3_000, 10_000, 10_000)
EDIT_INTERVAL = 0.25  # seconds between one tenant's edits
SETTLE = 6.0  # seconds of normal running after each fault


async def faults(run: Run, rng: random.Random) -> None:
    """One fault after another, each followed by a while of normal running."""

    # DUPLEX_FAULTS=kill,kafka narrows the run to faults whose names contain one of the words
    # (to find which fault a failure needs); "none" keeps only the edits.
    chosen = [w.strip() for w in os.environ.get("DUPLEX_FAULTS", "").split(",") if w.strip()]

    async def step(name: str, action: Callable[[], Awaitable[None]]) -> None:
        if chosen and not any(word.lower() in name.lower() for word in chosen):
            await asyncio.sleep(SETTLE)
            return
        started = time.monotonic()
        await action()
        run.faults.append(name)
        print(f"fault: {name} ({time.monotonic() - started:.1f}s)", flush=True)
        await asyncio.sleep(SETTLE)

    for name in SERVICE_NAMES:

        async def crash(name: str = name) -> None:
            run.services.kill(name)
            await asyncio.sleep(1)
            await run.services.restart(name)

        await step(f"kill -9 {name}, restart", crash)
    await step("restart the Kafka broker", lambda: run.kafka.restart())
    await step("restart PostgreSQL", lambda: run.postgres.restart())

    async def outage() -> None:
        await run.each_org("PATCH", "/faults", {"unavailable_ratio": 0.25, "lock_ratio": 0.25, "seed": 11})
        await asyncio.sleep(SETTLE)
        await run.each_org("PATCH", "/faults", {"unavailable_ratio": 0, "lock_ratio": 0})

    await step("Salesforce: 25% 503s and 25% UNABLE_TO_LOCK_ROW", outage)
    await step("Salesforce: every token expired", lambda: run.each_org("POST", "/tokens/expire"))

    async def exhausted() -> None:
        for tenant in run.tenants:
            used = run.emulator.admin("GET", f"/orgs/{run.orgs[tenant.name]}/usage").json()["used"]
            await asyncio.to_thread(run.org_admin, "PATCH", tenant.name, "/faults", {"api_limit": used})
        await asyncio.sleep(SETTLE)
        await run.each_org("PATCH", "/faults", {"api_limit": None})

    await step("Salesforce: API limit exhausted", exhausted)

    async def gaps() -> None:
        for tenant in run.tenants:
            ids = [r.crm_id for r in rng.sample([r for r in tenant.records if r.editable], 3)]
            await asyncio.to_thread(
                run.org_admin, "POST", tenant.name, "/events/gap", {"entity": "Account", "record_ids": ids}
            )

    await step("CDC: gap events", gaps)

    async def replay_expired() -> None:
        await run.each_org("POST", "/events/purge", {"older_than_seconds": 0})
        await run.each_org("POST", "/streams/drop")

    await step("CDC: replay ids expired (events purged, streams dropped)", replay_expired)

    async def deletes() -> None:
        for tenant in run.tenants:
            for origin in ("app", "crm"):
                doomed = rng.choice([r for r in tenant.records if r.editable and r.origin == origin])
                await tenant.delete(doomed)

    await step("deletes on both sides", deletes)


async def test_every_record_converges_after_every_part_fails_in_turn(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("DUPLEX_FAULT_SEED", random.randrange(1 << 30)))
    print(f"\nfault test seed {seed} (DUPLEX_FAULT_SEED={seed} to repeat)", flush=True)
    rng = random.Random(seed)
    run_id = os.urandom(3).hex()
    # Each tenant its own org.
    specs = [TenantSpec(f"conv{i}-{run_id}", f"conv{i}-{run_id}", cap) for i, cap in enumerate(CAPS)]
    async with running(emulator, kafka_server, postgres_server, topic_names, fresh_database, tmp_path, specs) as run:
        # 1. Records on both sides, then the initial sync (backfill and live changes).
        await synced(run, SEED_PER_SIDE)

        # 2. Both sides edit while every part fails in turn.
        stop = asyncio.Event()
        editors = [
            asyncio.create_task(edit_until(stop, t, random.Random(rng.random()), EDIT_INTERVAL)) for t in run.tenants
        ]
        try:
            await faults(run, rng)
        finally:
            stop.set()
            await asyncio.gather(*editors)
        crashed = [name for name, alive in run.services.status().items() if not alive]
        crashed += [f"partners-app of {t}" for t, app in run.apps.items() if not all(app.status().values())]
        assert not crashed, f"processes that exited during the faults: {crashed}"

        # 3. Convergence, then nothing more.
        started = time.monotonic()
        unordered = await converged(run, "convergence")
        converged_after = time.monotonic() - started
        writes = [Topic.CRM_WRITES, Topic.APP_UPDATES]
        before = await end_offsets(run, writes)
        await asyncio.sleep(10)
        after = await end_offsets(run, writes)
        assert after == before, f"still writing after convergence (echo loop?): {after - before} more writes"

        # 4. Budgets, counted by the emulator.
        for tenant in run.tenants:
            calls = duplex_calls(run, tenant)
            assert calls <= tenant.cap, f"{tenant.name}: {calls} API calls over its cap {tenant.cap}"

        records = sum(len(t.records) for t in run.tenants)
        print(
            f"faults: {len(run.faults)} ({', '.join(run.faults)})\n"
            f"tenants: {len(run.tenants)}; records checked: {records} "
            f"({sum(r.deleted for t in run.tenants for r in t.records)} deleted, "
            f"{sum(t.created_late for t in run.tenants)} created during the faults); "
            f"edits: {sum(t.edits for t in run.tenants)}; field values compared: {records * len(ACCOUNT.fields) * 2}\n"
            f"converged {converged_after:.1f}s after the last fault; writes after convergence: {after - before}\n"
            f"fields edited on both sides whose Salesforce edit never came as an event (replay expiry),"
            f" agreed on the last edit of one side: {len(unordered)}\n"
            + "".join(f"  {u}\n" for u in unordered)
            + f"dead letters (each with its reason): {await dead_letters(run)}\n"
            + "\n".join(f"{t.name}: {duplex_calls(run, t)} API calls by Duplex, cap {t.cap}" for t in run.tenants),
            flush=True,
        )
