"""The writer as its own process, killed with SIGKILL mid-batch and restarted: no Salesforce record
is duplicated and no write is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.emulator import ROOT, EmulatorProcess
from devstack.health import wait_serving
from devstack.ports import pick_free_ports
from services.common.topics import Topic, TopicNames
from tests.integration.writer.harness import (
    SUCCEEDED,
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


async def test_a_writer_killed_mid_batch_duplicates_nothing_and_loses_nothing(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    tenant = f"kill-{uuid.uuid4().hex[:6]}"
    await prepare_database(fresh_database, [tenant_document(tenant, emulator)])
    tag = f"k{uuid.uuid4().hex[:8]}-"
    commands = [command(tenant, [(f"{tag}{i:05d}", {"Name": f"Killed {i}"})]) for i in range(RECORDS)]
    log = tmp_path / "writer.log"

    with governor(fresh_database, tmp_path / "governor.log") as target:
        env = {
            **os.environ,
            **secrets_for(emulator, {tenant: "acme"}),
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": topic_names.prefix,
            "POSTGRES_DSN": fresh_database,
            "WRITER_GOVERNOR_TARGET": target,
            "WRITER_SALESFORCE_CA_FILE": emulator.ca_cert,
            "WRITER_COMMIT_INTERVAL_MS": "100",
            "TELEMETRY_LOG_LEVEL": "WARNING",
            # The emulator is on 127.0.0.1, which only a development deployment may call.
            "DUPLEX_DEVELOPMENT": "true",
        }
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
