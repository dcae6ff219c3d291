"""Two cdc-ingest replicas (processes) sharing four tenants through Postgres leases: a replica that
joins gets its share, a replica killed without releasing its leases is taken over once they expire,
the dead replica can no longer move a checkpoint, and no change is lost on the way."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from services.cdc_ingest.settings import CdcIngestSettings
from services.cdc_ingest.store import LeaseLostError, Store
from tests.integration.cdc_ingest.harness import (
    ChangeReader,
    Harness,
    Org,
    checkpoint_of,
    governor_process,
    in_thread,
    start_service,
    wait_backfilled,
    wait_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

A, B = "replica-a", "replica-b"
TENANTS = 4
# Short leases so that the takeover is quick; renewed several times per TTL, as in production.
LEASE = {"lease_ttl_seconds": "3", "lease_renew_seconds": "0.5"}
CHANNEL = CdcIngestSettings.model_fields["channel"].default


@dataclass(frozen=True)
class Lease:
    holder: str
    expires_at: datetime
    # The database's clock when the lease was read: leases expire by that clock.
    read_at: datetime


async def live_leases(dsn: str) -> dict[str, Lease]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT tenant_id, holder, expires_at, now() AS read_at FROM tenant_leases WHERE expires_at > now()"
        )
    finally:
        await connection.close()
    return {row["tenant_id"]: Lease(row["holder"], row["expires_at"], row["read_at"]) for row in rows}


def holders(leases: dict[str, Lease]) -> dict[str, str]:
    return {tenant: lease.holder for tenant, lease in leases.items()}


async def leases_until(
    dsn: str,
    done: Callable[[dict[str, Lease]], bool],
    what: str,
    *,
    within: float = 30.0,
    check: Callable[[dict[str, Lease]], None] | None = None,
) -> dict[str, Lease]:
    """Poll the live leases until ``done``; ``check`` is asserted on every reading on the way."""
    deadline = time.monotonic() + within
    while True:
        leases = await live_leases(dsn)
        if check is not None:
            check(leases)
        if done(leases):
            return leases
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: leases stayed {holders(leases)}")
        await asyncio.sleep(0.1)


async def create_everywhere(orgs: list[Org], label: str) -> list[str]:
    """One Account in every org at once; their ids."""
    results = await asyncio.gather(
        *(in_thread(org.salesforce().Account.create, {"Name": f"{label} {i}"}) for i, org in enumerate(orgs))
    )
    return [result["id"] for result in results]


async def wait_all_published(reader: ChangeReader, ids: list[str], within: float = 30.0) -> None:
    await reader.until(lambda changes: set(ids) <= {c.record_id for c in changes}, within=within)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


async def test_replicas_share_tenants_and_take_over_a_killed_one_without_losing_changes(
    cdc: Harness, tmp_path: Path
) -> None:
    dsn = cdc.dsn
    started = time.monotonic()
    configured = [await cdc.tenant(["Account"]) for _ in range(TENANTS)]
    tenants = [tenant.id for tenant in configured]
    orgs = [tenant.org for tenant in configured]
    secrets = {name: value for tenant in configured for name, value in tenant.secrets.items()}
    logs = {replica: tmp_path / f"{replica}.log" for replica in (A, B)}

    def log_tails() -> str:
        return "\n".join(f"--- {name}:\n{path.read_text()[-2000:]}" for name, path in logs.items() if path.exists())

    written: list[str] = []
    with governor_process(dsn, tmp_path / "governor.log") as governor:
        async with cdc.reader() as reader:

            def start(replica: str) -> subprocess.Popen[bytes]:
                return start_service(
                    cdc.emulator,
                    cdc.kafka_bootstrap,
                    cdc.topic_names,
                    dsn,
                    secrets,
                    logs[replica],
                    governor=governor,
                    replica_id=replica,
                    **LEASE,
                )

            replica_a = start(A)
            replica_b: subprocess.Popen[bytes] | None = None
            try:
                # Alone, A's fair share is every tenant.
                await leases_until(dsn, lambda ls: holders(ls) == dict.fromkeys(tenants, A), "A alone", within=60)
                for tenant in tenants:
                    await wait_backfilled(dsn, tenant, 1)
                written += await create_everywhere(orgs, "A alone")
                await wait_all_published(reader, written)

                replica_b = start(B)
                # A hands two tenants back (stopping their workers first), B takes them.
                split = await leases_until(
                    dsn,
                    lambda ls: len(ls) == TENANTS and Counter(holders(ls).values()) == {A: 2, B: 2},
                    "B joined",
                )
                written += await create_everywhere(orgs, "B joined")
                # The split is stable: nobody takes a live lease, nobody hands back below its share.
                steady_until = time.monotonic() + 2.0
                await leases_until(
                    dsn,
                    lambda _: time.monotonic() > steady_until,
                    "steady",
                    check=lambda ls: _same_holders(holders(ls), holders(split)),
                )
                await wait_all_published(reader, written)

                # A dies without releasing anything.
                replica_a.send_signal(signal.SIGKILL)
                assert replica_a.wait(timeout=10) == -signal.SIGKILL
                orphaned = {t: lease for t, lease in (await live_leases(dsn)).items() if lease.holder == A}
                assert len(orphaned) == 2, holders(orphaned)
                written += await create_everywhere(orgs, "A dead")

                def not_before_expiry(leases: dict[str, Lease]) -> None:
                    for tenant, lease in leases.items():
                        if tenant in orphaned and lease.holder != A:
                            assert lease.read_at >= orphaned[tenant].expires_at, f"{tenant} taken before expiry"

                killed = time.monotonic()
                await leases_until(
                    dsn,
                    lambda ls: holders(ls) == dict.fromkeys(tenants, B),
                    "B takes over",
                    within=15,
                    check=not_before_expiry,
                )
                takeover = time.monotonic() - killed
                written += await create_everywhere(orgs, "B alone")
                await wait_all_published(reader, written)

                # A, were it only paused, can no longer move what B relies on.
                pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
                try:
                    fenced_out = Store(pool, A)
                    forged = 2**63 - 1
                    for tenant in orphaned:
                        with pytest.raises(LeaseLostError):
                            await fenced_out.save_checkpoint(tenant, CHANNEL, forged.to_bytes(8, "big"), None)
                        # B may move it meanwhile, as it streams; A's forged position never lands.
                        assert await checkpoint_of(dsn, tenant) < forged
                        assert not await fenced_out.try_acquire(tenant, 3.0)
                    assert await fenced_out.renew(list(orphaned), 3.0) == []
                finally:
                    await pool.close()
                # While B, the holder, checkpoints every tenant past the last change.
                for tenant, record_id in zip(tenants, written[-TENANTS:], strict=True):
                    await wait_checkpoint(dsn, tenant, reader.of(record_id)[-1].source_position.replay_id)
            except BaseException:
                print(log_tails())
                raise
            finally:
                stop(replica_a)
                if replica_b is not None:
                    stop(replica_b)

    by_tenant = {t: [c for c in reader.changes if c.tenant_id == t] for t in tenants}
    for tenant, org_changes in by_tenant.items():
        assert org_changes, f"nothing from {tenant}"
    creates = {c.record_id for c in reader.changes if c.kind == 1}  # CREATE
    assert set(written) <= creates, f"{len(set(written) - creates)} of {len(written)} creates lost"
    print(f"takeover after the kill: {takeover:.1f} s; whole test {time.monotonic() - started:.1f} s")


def _same_holders(now: dict[str, str], split: dict[str, str]) -> None:
    assert now == split, f"leases moved while both replicas were live: {split} -> {now}"
