"""cdc-ingest as its own process, killed with SIGKILL during a stream of changes: nothing lost."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from pathlib import Path

import pytest

from devstack.emulator import EmulatorProcess
from services.common.topics import TopicNames
from tests.integration.cdc_ingest.harness import (
    Org,
    change_reader,
    configure_tenant,
    create_org,
    governor_process,
    prepare_database,
    secrets_for,
    start_service,
    tenant_document,
    wait_backfilled,
)

pytestmark = pytest.mark.e2e


def create_accounts(org: Org, total: int, ids: list[str], done: threading.Event) -> None:
    """sObject Collections, 200 records per call (one transaction each), as fast as the org takes them."""
    sf = org.salesforce()
    try:
        for start in range(0, total, 200):
            records = [
                {"attributes": {"type": "Account"}, "Name": f"Stream {i:05d}"}
                for i in range(start, min(total, start + 200))
            ]
            results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
            ids.extend(r["id"] for r in results)
    finally:
        done.set()


async def kill_during_stream(
    total: int, emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, dsn: str, tmp_path: Path
) -> None:
    org = create_org(emulator)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await prepare_database(dsn)
    await configure_tenant(dsn, tenant_document(tenant, org, ["Account"]))
    secrets = secrets_for(tenant, org)
    log = tmp_path / "cdc-ingest.log"
    with governor_process(dsn, tmp_path / "governor.log") as governor:
        process = start_service(emulator, kafka_bootstrap, topic_names, dsn, secrets, log, governor=governor)
        try:
            await wait_backfilled(dsn, tenant, 1, within=60)
            async with change_reader(kafka_bootstrap, topic_names) as reader:
                ids: list[str] = []
                done = threading.Event()
                writer = threading.Thread(target=create_accounts, args=(org, total, ids, done), daemon=True)
                writer.start()
                await reader.until(lambda changes: len(changes) >= total // 3, within=120)
                process.send_signal(signal.SIGKILL)
                assert process.wait(timeout=10) == -signal.SIGKILL
                process = start_service(emulator, kafka_bootstrap, topic_names, dsn, secrets, log, governor=governor)
                await asyncio.to_thread(done.wait, 300)
                assert len(ids) == total
                await reader.until(lambda changes: set(ids) <= {c.record_id for c in changes}, within=180)
        finally:
            process.kill()
            process.wait(timeout=10)
    seen = {c.record_id for c in reader.changes if c.kind in (1, 6)}  # CREATE, or SNAPSHOT if re-read
    missing = set(ids) - seen
    assert not missing, f"{len(missing)} changes lost; log: {log.read_text()[-3000:]}"


@pytest.mark.timeout(240)
async def test_kill_9_during_a_stream_loses_nothing(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    await kill_during_stream(2000, emulator, kafka_bootstrap, topic_names, fresh_database, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_kill_9_during_a_stream_of_10000_changes_loses_nothing(
    emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    await kill_during_stream(10_000, emulator, kafka_bootstrap, topic_names, fresh_database, tmp_path)
