"""mapping and conflict-resolver as separate processes on the real broker and database.

The test plays both outer worlds: internal services (app-changes in, app-updates out) and
Salesforce with the writer (crm-changes in, crm-writes out). Each side echoes Duplex's writes back
tagged with the tenant's client id, as the contract asks. Midway the resolver is killed with
SIGKILL and restarted. Outputs are counted by id (a redelivery after the kill republishes the
same ids), and the test checks: convergence to what the policies prescribe, no field written
more often than it changed, and no echo written back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.writer.v1 import write_records_pb2

from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.topics import Topic, TopicNames
from services.common.values import to_value
from tests.e2e.sync.harness import (
    CLIENT,
    TENANT,
    TopicReader,
    decode,
    prepare_database,
    producer,
    publish,
    record_changed,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[3]
RECORDS = 5
RecordChanged = record_changed_pb2.RecordChanged
WriteRecords = write_records_pb2.WriteRecords


class Service:
    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def services(bootstrap: str, names: TopicNames, dsn: str, logs: Path) -> Iterator[dict[str, Service]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": names.prefix,
        "POSTGRES_DSN": dsn,
        "POSTGRES_POOL_MAX_SIZE": "3",
        "MAPPING_CONFIG_CHECK_SECONDS": "1",
    }
    running = {
        "mapping": Service("services.mapping", env, logs / "mapping.log"),
        "resolver": Service("services.conflict_resolver", env, logs / "resolver.log"),
    }
    for s in running.values():
        s.start()
    try:
        yield running
    finally:
        for s in running.values():
            s.stop()


def app_key(record_id: str) -> bytes:
    return record_key(TENANT, "partners", record_id)


def crm_key(record_id: str) -> bytes:
    return record_key(TENANT, "Account", record_id)


def unique(events: list[Any], key: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for e in events:
        seen.setdefault(getattr(e, key), e)
    return list(seen.values())


async def test_both_sides_converge_without_echoes_through_a_crash(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    await prepare_database(fresh_database)
    async with producer(kafka_bootstrap) as world:
        with services(kafka_bootstrap, topic_names, fresh_database, tmp_path) as running:
            writes_reader = TopicReader(kafka_bootstrap, topic_names(Topic.CRM_WRITES))
            updates_reader = TopicReader(kafka_bootstrap, topic_names(Topic.APP_UPDATES))
            async with writes_reader as writes, updates_reader as updates:
                # 1. Records created on both sides; every event delivered twice.
                for i in range(RECORDS):
                    app = record_changed(
                        Side.APP,
                        "partners",
                        f"a{i}",
                        {"name": f"app {i}", "phone": f"+33 {i}", "status": "active"},
                        event_id=f"app-create-{i}",
                        kind=ChangeKind.CREATE,
                        at=i,
                    )
                    crm = record_changed(
                        Side.CRM,
                        "Account",
                        f"001C{i}",
                        {"Name": f"crm {i}", "Phone": f"+1 {i}", "Status__c": "Closed"},
                        event_id=f"crm-create-{i}",
                        kind=ChangeKind.CREATE,
                        at=i,
                    )
                    for _ in range(2):
                        await publish(world, topic_names, Topic.APP_CHANGES, app, app_key(f"a{i}"))
                        await publish(world, topic_names, Topic.CRM_CHANGES, crm, crm_key(f"001C{i}"))

                # 2. SIGKILL the resolver mid-stream, then restart it.
                await writes.until(1, within=60)
                running["resolver"].kill()
                running["resolver"].start()
                await writes.until(RECORDS, within=60)
                await updates.until(RECORDS, within=60)
                upserts = unique(decode(await writes.settle(), WriteRecords), "command_id")
                creates = unique(decode(await updates.settle(), RecordChanged), "event_id")
                assert len(upserts) == RECORDS
                assert len(creates) == RECORDS
                assert {w.operation for w in upserts} == {write_records_pb2.OPERATION_UPSERT}
                assert {c.kind for c in creates} == {record_changed_pb2.CHANGE_KIND_CREATE}

                # 3. Each side applies Duplex's writes and echoes them back tagged with the client id.
                links: dict[str, str] = {}  # app record id -> link id
                for n, w in enumerate(upserts):
                    rec = w.records[0]
                    fields = {k: to_value(v) for k, v in rec.fields.items()} | {"Duplex_Id__c": rec.external_id_value}
                    echo = record_changed(
                        Side.CRM,
                        "Account",
                        f"001D{n}",
                        fields,
                        event_id=f"crm-echo-{n}",
                        kind=ChangeKind.CREATE,
                        at=50 + n,
                        client=CLIENT,
                    )
                    await publish(world, topic_names, Topic.CRM_CHANGES, echo, crm_key(f"001D{n}"))
                    links[f"001D{n}"] = rec.link_id
                for n, c in enumerate(creates):
                    fields = {k: to_value(v) for k, v in c.fields.items()}
                    echo = record_changed(
                        Side.APP,
                        "partners",
                        f"b{n}",
                        fields,
                        event_id=f"app-echo-{n}",
                        kind=ChangeKind.CREATE,
                        at=50 + n,
                        client=CLIENT,
                        external_id=c.external_id,
                    )
                    await publish(world, topic_names, Topic.APP_CHANGES, echo, app_key(f"b{n}"))
                # An untagged change repeating a synced value is an echo by value.
                same = record_changed(Side.APP, "partners", "a0", {"name": "app 0"}, event_id="app-same", at=60)
                await publish(world, topic_names, Topic.APP_CHANGES, same, app_key("a0"))

                # 4. Concurrent edits of one record on both sides: the newer wins (name: newest_wins),
                #    Salesforce wins status (crm_wins), a blank phone from Salesforce keeps the app's.
                await asyncio.sleep(2)  # the echoes are applied first, as in real life they land first
                # The Salesforce record Duplex created for app record a1.
                a1_crm = next(
                    f"001D{n}" for n, w in enumerate(upserts) if to_value(w.records[0].fields["Name"]) == "app 1"
                )
                edits = [
                    (
                        Topic.APP_CHANGES,
                        app_key("a1"),
                        record_changed(
                            Side.APP,
                            "partners",
                            "a1",
                            {"name": "app edit", "status": "closed"},
                            event_id="app-edit",
                            at=100,
                        ),
                    ),
                    (
                        Topic.CRM_CHANGES,
                        crm_key(a1_crm),
                        record_changed(
                            Side.CRM,
                            "Account",
                            a1_crm,
                            {"Name": "crm edit", "Phone": None},
                            event_id="crm-edit",
                            at=101,
                        ),
                    ),
                ]
                for topic, key, event in edits:
                    await publish(world, topic_names, topic, event, key)
                # Wait for both edits' effects (one app update, at least one Salesforce write), then for quiet.
                await updates.until(len(updates.records) + 1, within=30)
                await writes.until(len(writes.records) + 1, within=30)
                all_writes = unique(decode(await writes.settle(quiet=3), WriteRecords), "command_id")
                all_updates = unique(decode(await updates.settle(quiet=2), RecordChanged), "event_id")

    # No echo was written back: after the creates, only the two edits caused writes.
    new_writes = [w for w in all_writes if w.command_id not in {u.command_id for u in upserts}]
    new_updates = [u for u in all_updates if u.event_id not in {c.event_id for c in creates}]
    app_fields = [(u.record_id, name) for u in new_updates for name in u.fields]
    # No field written more often than it changed: one write per genuine field change.
    assert app_fields == [("a1", "name")]
    # Name changed once on each side. Which edit the resolver sees first is a race between two
    # topics: Salesforce's first (the app's older edit then loses and writes nothing), or the app's
    # first (it goes to Salesforce, then Salesforce's newer value is re-asserted after it).
    crm_names = [to_value(w.records[0].fields["Name"]) for w in new_writes if "Name" in w.records[0].fields]
    assert crm_names in ([], ["app edit", "crm edit"])
    # status (crm_wins) changed once, on the app side only: no conflict, so it goes to Salesforce.
    assert [to_value(w.records[0].fields["Status__c"]) for w in new_writes if "Status__c" in w.records[0].fields] == [
        "Closed"
    ]
    # The blank phone from Salesforce overwrote nothing on either side.
    assert all("Phone" not in w.records[0].fields for w in new_writes)
    assert all("phone" not in u.fields for u in new_updates)
    # Both sides converge on Salesforce's newer name.
    assert [to_value(u.fields["name"]) for u in new_updates] == ["crm edit"]
    assert all(w.records[0].record_id == a1_crm for w in new_writes)
    assert {w.operation for w in new_writes} == {write_records_pb2.OPERATION_UPDATE}
