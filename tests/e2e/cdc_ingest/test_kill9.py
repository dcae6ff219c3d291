"""cdc-ingest as its own process, killed with SIGKILL during a stream of changes: nothing lost."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
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


# Calls the writer may be ahead of what crm-changes has shown: the stream keeps flowing (changes
# in flight at any moment) but cannot be written out long before cdc-ingest reads it, so a kill
# triggered by what was read always lands while changes are still being written.
AHEAD = 2
BATCH = 200


def create_accounts(
    org: Org, total: int, ids: list[str], seen: Callable[[], int], done: threading.Event, stop: threading.Event
) -> None:
    """sObject Collections, ``BATCH`` records per call (one transaction each), at most ``AHEAD``
    calls ahead of what has been read from crm-changes."""
    sf = org.salesforce()
    try:
        for start in range(0, total, BATCH):
            deadline = time.monotonic() + 300
            while len(ids) - seen() >= AHEAD * BATCH:
                if stop.is_set() or time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            records = [
                {"attributes": {"type": "Account"}, "Name": f"Stream {i:05d}"}
                for i in range(start, min(total, start + BATCH))
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
                done, stop = threading.Event(), threading.Event()
                writer = threading.Thread(
                    target=create_accounts,
                    args=(org, total, ids, lambda: len(reader.changes), done, stop),
                    daemon=True,
                )
                writer.start()
                try:
                    await reader.until(lambda changes: len(changes) >= total // 3, within=120)
                    # Mid-stream, or the test proves nothing: changes were still being written
                    # and cdc-ingest had not published them all.
                    writing_at_kill = writer.is_alive() and not done.is_set()
                    seen_at_kill, written_at_kill = len(reader.changes), len(ids)
                    process.send_signal(signal.SIGKILL)
                    assert writing_at_kill, "the writer had finished before the kill"
                    assert seen_at_kill < total, f"killed after all {total} changes were published"
                    assert process.wait(timeout=10) == -signal.SIGKILL
                    process = start_service(
                        emulator, kafka_bootstrap, topic_names, dsn, secrets, log, governor=governor
                    )
                    # Reading on is what lets the writer go on (it keeps at most AHEAD calls ahead).
                    await reader.until(
                        lambda changes: done.is_set() and set(ids) <= {c.record_id for c in changes}, within=300
                    )
                finally:
                    stop.set()
                    writer.join(timeout=30)
                assert len(ids) == total
                # Written on after the kill, so some of the stream went through the restarted process.
                assert written_at_kill < total
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
