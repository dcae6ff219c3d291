"""Convergence under concurrent faults, with tenants sharing an org and two replicas of each consumer.

Four tenants: three share one org, each syncing its own Salesforce object (Account and two custom
objects), and a fourth has an org of its own. mapping, conflict-resolver and writer run as two
replicas each (two processes in one consumer group, so every kill moves partitions), cdc-ingest
and the governor as one. While both sides of every tenant edit at random, faults drawn from a
seeded schedule overlap: process faults (SIGKILL of one replica, or of both replicas of a
service, the second while the group rebalances after the first; a Kafka broker restart; a
PostgreSQL restart) come one at a time, and under them Salesforce faults on one org at a time
(25 % 503s and lock errors, every token expired, CDC gap events) and a garbage record on
app-changes. Meanwhile one tenant of the shared org has its daily cap lowered to what it has used
plus a little, so its cap binds until the faults are over, while its org-mates keep syncing.

Then every record must hold, on both sides, what its fields' policies allow given the edits made
(:func:`tests.e2e.pipeline.harness.problems_of`: one edit at a time per tenant, so the newest
edit for newest-wins fields and the owning side's last edit for one-way fields), with no
duplicate, nothing written for 10 s after (no echo loop), no tenant over its cap while it bound,
and the dead-letter topics holding exactly the injected garbage.

``DUPLEX_FAULT_SEED`` repeats a run's schedule (the seed is printed). The 90-second schedule runs in
``make test``; the 15-minute soak under ``-m slow``. A failure lists, for a few failing records, the
sync log, the mapped changes and each command and outcome, and names the folder of the service logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from duplex.writer.v1.write_records_pb2 import WriteRecords

from devstack.emulator import EmulatorProcess
from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.admin.config_store import ConfigStore
from services.common.codec import decode_event
from services.common.dlq import ERROR_REASON
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from tests.e2e.pipeline.harness import (
    CONSUMERS,
    DEAD_LETTERS,
    Run,
    TenantSpec,
    converged,
    dead_letters,
    duplex_calls,
    edit_until,
    end_offsets,
    read_topic,
    running,
    synced,
)
from tests.e2e.pipeline.world import ACCOUNT, partner_object, retrying, tenant_document

pytestmark = [pytest.mark.e2e]

SEED_PER_SIDE = 8
CAP = 3_000
EDIT_INTERVAL = 0.5  # seconds between one tenant's edits
# How many calls the capped tenant may make beyond what it had used when its cap was lowered.
CAP_HEADROOM = 10
WARNINGS = "SELECT count(*) FROM sync_log WHERE tenant_id = $1 AND event = 'budget.warning'"
GARBAGE = b"\x08\x96\x01 not a RecordChanged"
GARBAGE_REASON = "app_changes_dlq: not a valid duplex.change.v1.RecordChanged"


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float  # seconds after the faults began
    name: str
    action: Callable[[], Awaitable[None]]
    # Process faults run one at a time: a service cannot start while the broker restarts.
    process: bool


def schedule(run: Run, rng: random.Random, duration: float) -> list[Fault]:
    """The faults of one run, at random moments of ``duration`` seconds (``rng`` decides all)."""
    assert run.replicas is not None
    replicas = {1: run.services, 2: run.replicas}

    # Every draw is made here, before the run: the seed then repeats the schedule, whatever the timing.
    def kill(name: str, replica: int) -> Fault:
        down = rng.uniform(0.5, 3)

        async def action() -> None:
            replicas[replica].kill(name)
            await asyncio.sleep(down)
            await replicas[replica].restart(name)

        return Fault(0, f"kill -9 {name} #{replica}", action, True)

    def kill_both(name: str) -> Fault:
        down, rejoining = rng.uniform(0.5, 2), rng.uniform(0.5, 3)

        async def action() -> None:
            replicas[1].kill(name)
            await asyncio.sleep(down)
            restarting = asyncio.create_task(replicas[1].restart(name))
            # The group rebalances as the first comes back: the second dies in the middle of it.
            await asyncio.sleep(rejoining)
            replicas[2].kill(name)
            await restarting
            await replicas[2].restart(name)

        return Fault(0, f"kill -9 both {name} replicas, the second during the rebalance", action, True)

    def on_org(name: str, work: Callable[[str, random.Random], Awaitable[None]]) -> Fault:
        tenant, own = rng.choice(run.tenants).name, random.Random(rng.random())

        async def action() -> None:
            await work(tenant, own)

        return Fault(0, f"{name} on the org of {tenant}", action, False)

    async def outage(tenant: str, own: random.Random) -> None:
        faults = {"unavailable_ratio": 0.25, "lock_ratio": 0.25, "seed": own.randrange(1000)}
        await asyncio.to_thread(run.org_admin, "PATCH", tenant, "/faults", faults)
        await asyncio.sleep(own.uniform(3, 8))
        await asyncio.to_thread(run.org_admin, "PATCH", tenant, "/faults", {"unavailable_ratio": 0, "lock_ratio": 0})

    async def tokens(tenant: str, _: random.Random) -> None:
        await asyncio.to_thread(run.org_admin, "POST", tenant, "/tokens/expire")

    async def gaps(tenant: str, own: random.Random) -> None:
        side = next(t for t in run.tenants if t.name == tenant)
        ids = [r.crm_id for r in own.sample([r for r in side.records if r.editable], 2)]
        body = {"entity": side.crm.crm.name, "record_ids": ids}
        await asyncio.to_thread(run.org_admin, "POST", tenant, "/events/gap", body)

    async def deletes(tenant: str, own: random.Random) -> None:
        side = next(t for t in run.tenants if t.name == tenant)
        for origin in ("app", "crm"):
            await side.delete(own.choice([r for r in side.records if r.editable and r.origin == origin]))

    async def garbage() -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=run.kafka.bootstrap_servers)
            await producer.start()
            try:
                key = f"{run.tenants[0].name}/partners/garbage".encode()
                await producer.send_and_wait(run.names(Topic.APP_CHANGES), GARBAGE, key=key)
            finally:
                await producer.stop()

        # The broker may be restarting meanwhile (a process fault): the app's producer retries.
        await retrying("garbage on app-changes", send)

    rounds = max(1, round(duration / 60))
    faults = [
        *(kill(rng.choice(CONSUMERS), rng.choice((1, 2))) for _ in range(2 * rounds)),
        *(kill_both(rng.choice(CONSUMERS)) for _ in range(rounds)),
        *(kill(name, 1) for name in rng.sample(("cdc-ingest", "rate-limit-governor"), 1) for _ in range(rounds)),
        Fault(0, "restart the Kafka broker", lambda: run.kafka.restart(), True),
        Fault(0, "restart PostgreSQL", lambda: run.postgres.restart(), True),
        *(on_org("25% 503s and lock errors", outage) for _ in range(2 * rounds)),
        *(on_org("every token expired", tokens) for _ in range(rounds)),
        *(on_org("CDC gap events", gaps) for _ in range(rounds)),
        *(on_org("deletes on both sides", deletes) for _ in range(rounds)),
        Fault(0, "garbage on app-changes", garbage, False),
    ]
    return sorted((dataclasses.replace(f, at=rng.uniform(0, duration)) for f in faults), key=lambda f: f.at)


async def inflict(run: Run, faults: list[Fault]) -> None:
    """Each fault at its moment; process faults wait for the one before them to finish."""
    began = time.monotonic()
    one_at_a_time = asyncio.Lock()

    async def start(fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.at - (time.monotonic() - began)))
        if fault.process:
            async with one_at_a_time:
                await fault.action()
        else:
            await fault.action()
        run.faults.append(fault.name)
        print(f"fault at {fault.at:5.1f}s, done at {time.monotonic() - began:5.1f}s: {fault.name}", flush=True)

    await asyncio.gather(*(start(f) for f in faults))


async def set_cap(run: Run, spec: TenantSpec, cap: int) -> None:
    conn = await asyncpg.connect(run.services.config.dsn)
    try:
        document = tenant_document(spec.name, run.emulator, f"{spec.org}-client", cap, spec.crm)
        await ConfigStore(conn).apply([parse_tenant_config(document)], "fault test: cap")
    finally:
        await conn.close()


async def unexplained_letters(run: Run) -> list[str]:
    """Dead letters that neither the injected garbage nor a deleted record explains.

    A write of an edit made just before the record's deletion on the other side reaches Salesforce
    after it: ENTITY_IS_DELETED, dead-lettered, is the right outcome for that write alone.
    """
    deleted = {r.crm_id for t in run.tenants for r in t.records if r.deleted}
    found = []
    for topic in DEAD_LETTERS:
        for record in await read_topic(run, topic):
            reason = dict(record.headers).get(ERROR_REASON, b"").decode()
            if topic is Topic.APP_CHANGES_DLQ and record.value == GARBAGE:
                continue
            if topic is Topic.CRM_WRITES_DLQ and reason.startswith("ENTITY_IS_DELETED"):
                command = decode_event(WriteRecords, record.value)
                if all(w.record_id in deleted for w in command.records):
                    continue
            found.append(f"{topic.value}: {reason}")
    return found


async def count(dsn: str, query: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query, *args))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "duration",
    [
        pytest.param(90.0, marks=[pytest.mark.timeout(1200)]),
        pytest.param(900.0, marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
async def test_every_record_converges_under_concurrent_faults_across_shared_orgs_and_replicas(
    emulator: EmulatorProcess,
    kafka_server: KafkaServer,
    postgres_server: PostgresServer,
    topic_names: TopicNames,
    fresh_database: str,
    tmp_path: Path,
    duration: float,
) -> None:
    seed = int(os.environ.get("DUPLEX_FAULT_SEED", random.randrange(1 << 30)))
    print(f"\nconcurrent fault test seed {seed} (DUPLEX_FAULT_SEED={seed} to repeat)", flush=True)
    rng = random.Random(seed)
    run_id = os.urandom(3).hex()
    shared, alone = f"shared-{run_id}", f"alone-{run_id}"
    # Caps well inside a developer org's allocation (backfills may not touch a cap's last 20 %).
    specs = [
        TenantSpec(f"acct-{run_id}", shared, CAP, ACCOUNT),
        TenantSpec(f"one-{run_id}", shared, CAP, partner_object("Partner_One__c")),
        TenantSpec(f"two-{run_id}", shared, CAP, partner_object("Partner_Two__c")),
        TenantSpec(f"solo-{run_id}", alone, CAP, ACCOUNT),
    ]
    capped = specs[1]
    overrides = {"writer": {"WRITER_PARK_AFTER_SECONDS": "5"}}
    async with running(
        emulator,
        kafka_server,
        postgres_server,
        topic_names,
        fresh_database,
        tmp_path,
        specs,
        replicas=True,
        overrides=overrides,
    ) as run:
        assert run.replicas is not None
        # 1. Records on both sides, then the initial sync.
        await synced(run, SEED_PER_SIDE)

        # 2. Both sides edit while the faults overlap; a third of the way in, one cap binds.
        stop = asyncio.Event()
        editors = [
            asyncio.create_task(edit_until(stop, t, random.Random(rng.random()), EDIT_INTERVAL)) for t in run.tenants
        ]
        capped_tenant = next(t for t in run.tenants if t.name == capped.name)
        faults = asyncio.create_task(inflict(run, schedule(run, rng, duration)))
        try:
            await asyncio.sleep(duration / 3)
            lowered = duplex_calls(run, capped_tenant) + CAP_HEADROOM
            # PostgreSQL may be restarting (one of the faults) just then.
            await retrying(f"lowering the cap of {capped.name}", lambda: set_cap(run, capped, lowered))
            print(f"cap of {capped.name} lowered to {lowered}", flush=True)
        finally:
            # However this ends, the schedule runs out: a fault left half done (or still to come)
            # would restart the session's broker or database under the tests after this one.
            try:
                await faults
            finally:
                stop.set()
                await asyncio.gather(*editors)
        crashed = [name for name, alive in run.services.status().items() if not alive]
        crashed += [f"{name} #2" for name, alive in run.replicas.status().items() if not alive]
        assert not crashed, f"processes that exited during the faults: {crashed}"

        # 3. The cap held while it bound, and the capped tenant's writes were parked meanwhile.
        capped_calls = duplex_calls(run, capped_tenant)
        warned = await count(
            fresh_database,
            "SELECT count(*) FROM sync_log WHERE tenant_id = $1 AND event = 'budget.warning'",
            capped.name,
        )
        parked = await count(
            fresh_database, "SELECT count(*) FROM writer_parked_commands WHERE tenant_id = $1", capped.name
        )
        await set_cap(run, capped, CAP)

        # 4. Convergence, then nothing more.
        started = time.monotonic()
        unordered = await converged(run, "convergence", within=300)
        converged_after = time.monotonic() - started
        writes = [Topic.CRM_WRITES, Topic.APP_UPDATES]
        before = await end_offsets(run, writes)
        await asyncio.sleep(10)
        after = await end_offsets(run, writes)
        letters = await dead_letters(run)
        unexplained = await unexplained_letters(run)

    assert after == before, f"still writing after convergence (echo loop?): {after - before} more writes"
    assert capped_calls <= lowered, f"{capped.name}: {capped_calls} API calls over its lowered cap {lowered}"
    assert warned >= 1, f"{capped.name}'s cap never came close to binding"
    assert parked >= 1, f"{capped.name}'s writes were not parked while its cap bound"
    assert not unexplained, f"dead letters no injected input explains: {unexplained}"
    assert sum(letter.startswith(GARBAGE_REASON) for letter in letters) == 1, letters
    assert not unordered, unordered  # no replay expiry here: every edit arrives as an event
    records = sum(len(t.records) for t in run.tenants)
    print(
        f"seed {seed}; faults: {len(run.faults)} ({'; '.join(run.faults)})\n"
        f"tenants: {len(run.tenants)} on 2 orgs; records checked: {records} "
        f"({sum(r.deleted for t in run.tenants for r in t.records)} deleted, "
        f"{sum(t.created_late for t in run.tenants)} created during the faults); "
        f"edits: {sum(t.edits for t in run.tenants)}\n"
        f"{capped.name}: {capped_calls} API calls under its lowered cap {lowered}\n"
        f"converged {converged_after:.1f}s after the last fault; dead letters: {letters}",
        flush=True,
    )
