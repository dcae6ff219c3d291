"""The writer as its own process, killed with SIGKILL mid-batch and restarted: no Salesforce record
is duplicated and no write is lost; killed while draining parked commands, it replays none of the
writes it had already applied."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from devstack.emulator import ROOT, EmulatorProcess
from devstack.health import wait_serving
from devstack.ports import pick_free_ports
from services.common.topics import Topic, TopicNames
from tests.integration.writer.harness import (
    SUCCEEDED,
    SUPERSEDED,
    TopicReader,
    command,
    count_accounts,
    outcomes,
    prepare_database,
    secrets_for,
    send,
    soql,
    tenant_document,
    upstream,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RECORDS = 3_000


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=out)


@contextmanager
def governor(dsn: str, log: Path) -> Iterator[str]:
    (port,) = pick_free_ports(1)
    process = spawn(
        "services.rate_limit_governor", {**os.environ, "POSTGRES_DSN": dsn, "GOVERNOR_PORT": str(port)}, log
    )
    try:
        wait_serving(f"127.0.0.1:{port}", log)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def writer_env(
    emulator: EmulatorProcess, bootstrap: str, names: TopicNames, dsn: str, tenant: str, governor: str, **more: str
) -> dict[str, str]:
    return {
        **os.environ,
        **secrets_for(emulator, {tenant: "acme"}),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": names.prefix,
        "POSTGRES_DSN": dsn,
        "WRITER_GOVERNOR_TARGET": governor,
        "WRITER_SALESFORCE_CA_FILE": emulator.ca_cert,
        "WRITER_COMMIT_INTERVAL_MS": "100",
        "TELEMETRY_LOG_LEVEL": "WARNING",
        # The emulator is on 127.0.0.1, which only a development deployment may call.
        "DUPLEX_DEVELOPMENT": "true",
        **more,
    }


async def test_a_writer_killed_mid_batch_duplicates_nothing_and_loses_nothing(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    tenant = f"kill-{uuid.uuid4().hex[:6]}"
    await prepare_database(fresh_database, [tenant_document(tenant, emulator)])
    tag = f"k{uuid.uuid4().hex[:8]}-"
    commands = [command(tenant, [(f"{tag}{i:05d}", {"Name": f"Killed {i}"})]) for i in range(RECORDS)]
    log = tmp_path / "writer.log"

    with governor(fresh_database, tmp_path / "governor.log") as target:
        env = writer_env(emulator, kafka_bootstrap, topic_names, fresh_database, tenant, target)
        writer = spawn("services.writer", env, log)
        try:
            async with (
                upstream(kafka_bootstrap) as broker,
                TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
            ):
                await send(broker, topic_names, commands)
                # Kill it while batches are being written and settled.
                await reader.until(lambda: len(reader.records) >= RECORDS // 4, within=120, what="a quarter")
                writer.send_signal(signal.SIGKILL)
                assert writer.wait(timeout=10) == -signal.SIGKILL
                settled_before_restart = len(reader.records)
                writer = spawn("services.writer", env, log)

                wanted = {c.command_id for c in commands}

                def all_settled() -> bool:
                    return wanted <= {o.command_id for o in outcomes(reader) if o.status == SUCCEEDED}

                await reader.until(all_settled, within=240, what="every command settled")
        finally:
            writer.kill()
            writer.wait(timeout=10)

    assert settled_before_restart < RECORDS, "killed too late to show a restart"
    # No lost write, and no duplicate: exactly one Account per external id.
    assert count_accounts(emulator, tag) == RECORDS, log.read_text()[-3000:]
    names = soql(emulator, f"SELECT Name FROM Account WHERE Duplex_Id__c = '{tag}00042'")["records"]
    assert [r["Name"] for r in names] == ["Killed 42"]


async def _applied_and_parked(dsn: str) -> tuple[set[str], int]:
    conn = await asyncpg.connect(dsn)
    try:
        applied = {r["link_id"] for r in await conn.fetch("SELECT link_id FROM writer_applied_versions")}
        return applied, int(await conn.fetchval("SELECT count(*) FROM writer_parked_commands"))
    finally:
        await conn.close()


async def test_a_writer_killed_while_draining_parked_commands_replays_nothing_it_applied(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    tenant = f"park-{uuid.uuid4().hex[:6]}"
    await prepare_database(fresh_database, [tenant_document(tenant, emulator)])
    tag = f"p{uuid.uuid4().hex[:8]}-"
    commands = [command(tenant, [(f"{tag}{i:05d}", {"Name": f"Parked {i}"})]) for i in range(RECORDS)]
    log = tmp_path / "writer.log"

    with governor(fresh_database, tmp_path / "governor.log") as target:
        env = writer_env(
            emulator,
            kafka_bootstrap,
            topic_names,
            fresh_database,
            tenant,
            target,
            WRITER_MAX_PENDING_PER_TENANT="400",
            WRITER_PARK_AFTER_SECONDS="1",
        )
        writer = spawn("services.writer", env, log)
        # A slow org: commands arrive far faster than 200-record calls settle them, so most are parked.
        faults = f"/orgs/{emulator.info['org_id']}/faults"
        emulator.admin("PATCH", faults, {"latency_ms": 700})
        try:
            async with (
                upstream(kafka_bootstrap) as broker,
                TopicReader(kafka_bootstrap, topic_names, Topic.WRITE_OUTCOMES) as reader,
            ):
                await send(broker, topic_names, commands)
                await reader.until(lambda: len(reader.records) >= RECORDS // 3, within=120, what="a third")
                writer.send_signal(signal.SIGKILL)
                assert writer.wait(timeout=10) == -signal.SIGKILL
                killed_at_ms = time.time() * 1000
                applied, parked = await _applied_and_parked(fresh_database)
                writer = spawn("services.writer", env, log)

                wanted = {c.command_id for c in commands}

                def all_settled() -> bool:
                    done = {o.command_id for o in outcomes(reader) if o.status in {SUCCEEDED, SUPERSEDED}}
                    return wanted <= done

                await reader.until(all_settled, within=240, what="every command settled")
                # A parked row is deleted just after its outcome is published: give the writer that
                # moment before stopping it (rows still there after it are left behind for good).
                deadline = time.monotonic() + 30
                # Only the database can tell.
                while (await _applied_and_parked(fresh_database))[1] and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            emulator.admin("PATCH", faults, {"latency_ms": 0})
            writer.kill()
            writer.wait(timeout=10)
        _, left = await _applied_and_parked(fresh_database)

    assert 0 < len(applied) < RECORDS, "killed too late to show a restart"
    assert parked > 0, "nothing was parked when the writer was killed"
    assert left == 0, "parked commands left behind"
    after_restart = [
        o
        for record, o in zip(reader.records, outcomes(reader), strict=True)
        if record.timestamp > killed_at_ms and o.status == SUCCEEDED
    ]
    written_again = sorted({o.link_id for o in after_restart} & applied)
    assert written_again == [], f"{len(written_again)} applied writes sent again, e.g. {written_again[:3]}"
    assert count_accounts(emulator, tag) == RECORDS, log.read_text()[-3000:]
