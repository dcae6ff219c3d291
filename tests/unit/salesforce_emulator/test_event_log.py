"""The per-org event log: replay order, channels, retention, purge, persistence and faults."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from eventbus.v1 import pubsub_api_pb2 as pb

from services.salesforce_emulator import cdc, schema
from services.salesforce_emulator.changes import CommittedTransaction, RecordChange
from services.salesforce_emulator.event_log import EventLog, consumer_event_entry, replay_bytes, replay_int

pytestmark = pytest.mark.unit

ORG = "00D5g000004ABCDEAQ"
OTHER = "00D5g000009ZYXWEAQ"
OBJECTS = {o.name: o for o in schema.STANDARD_OBJECTS}


def schema_for(org_id: str) -> Mapping[str, schema.ObjectDef]:
    return OBJECTS


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def commit(log: EventLog, *changes: RecordChange, org_id: str = ORG) -> None:
    log.publish(CommittedTransaction(org_id, "tx", 1, 1, "005", "", changes))


def create(entity: str, n: int) -> RecordChange:
    return RecordChange(entity, "CREATE", (f"id{n}",), {"Name": f"n{n}", "LastName": f"n{n}"})


def test_replay_ids_are_eight_byte_big_endian() -> None:
    assert replay_bytes(18098167) == b"\x00\x00\x00\x00\x01\x14\x27\xf7"
    assert replay_int(replay_bytes(2**63 + 5)) == 2**63 + 5
    assert replay_int(b"\x01") is None


def test_events_get_increasing_replay_ids_per_org_and_land_on_their_channels() -> None:
    log = EventLog(schema_for)
    commit(log, create("Account", 1), create("Contact", 2))
    commit(log, create("Account", 3))
    commit(log, create("Account", 9), org_id=OTHER)

    assert [e.replay for e in log.events(ORG)] == [1, 2, 3]
    assert [e.replay for e in log.read_after(ORG, "/data/AccountChangeEvent", 0, 10)] == [1, 3]
    assert [e.replay for e in log.read_after(ORG, "/data/ContactChangeEvent", 0, 10)] == [2]
    assert [e.replay for e in log.read_after(ORG, "/data/ChangeEvents", 1, 10)] == [2, 3]
    assert [e.replay for e in log.read_after(OTHER, "/data/ChangeEvents", 0, 10)] == [1]
    assert log.head(ORG) == 3


def test_read_after_respects_the_limit() -> None:
    log = EventLog(schema_for)
    commit(log, *(create("Account", n) for n in range(10)))

    assert [e.replay for e in log.read_after(ORG, "/data/AccountChangeEvent", 4, 3)] == [5, 6, 7]
    assert log.read_after(ORG, "/data/AccountChangeEvent", 10, 3) == []
    assert log.read_after(ORG, "/data/AccountChangeEvent", 0, 0) == []


def test_each_event_schema_is_registered() -> None:
    log = EventLog(schema_for)
    commit(log, create("Account", 1))

    (event,) = log.events(ORG)
    assert event.schema_id == cdc.change_event_schema(schema.ACCOUNT).schema_id
    assert log.schema_json(event.schema_id) == cdc.change_event_schema(schema.ACCOUNT).schema_json


def test_resume_point_moves_to_the_head_only_when_the_channel_is_drained() -> None:
    log = EventLog(schema_for)
    commit(log, create("Account", 1), create("Contact", 2), create("Contact", 3))

    assert log.resume_point(ORG, "/data/AccountChangeEvent", 0) == 0
    assert log.resume_point(ORG, "/data/AccountChangeEvent", 1) == 3
    assert log.resume_point(ORG, "/data/ContactChangeEvent", 2) == 2


def test_retention_expires_old_events_and_raises_the_floor() -> None:
    clock = Clock()
    log = EventLog(schema_for, retention_seconds=72 * 3600, clock=clock)
    commit(log, create("Account", 1), create("Account", 2))
    clock.now += 72 * 3600 - 1
    commit(log, create("Account", 3))
    assert log.can_resume_after(ORG, 0)

    clock.now += 2

    assert not log.can_resume_after(ORG, 1)
    assert log.can_resume_after(ORG, 2)
    assert log.floor(ORG) == 2
    assert [e.replay for e in log.read_after(ORG, "/data/AccountChangeEvent", 0, 10)] == [3]


def test_purge_before_drops_older_events() -> None:
    clock = Clock()
    log = EventLog(schema_for, clock=clock)
    commit(log, create("Account", 1))
    clock.now += 10
    commit(log, create("Account", 2))

    purged = log.purge_before(ORG, int((clock.now - 5) * 1000))

    assert purged == 1
    assert [e.replay for e in log.events(ORG)] == [2]
    assert log.floor(ORG) == 1
    assert not log.can_resume_after(ORG, 0)
    assert log.can_resume_after(ORG, 1)
    assert not log.can_resume_after(ORG, 3)  # never issued
    assert log.purge_before(ORG, 0) == 0


def test_data_file_keeps_events_schemas_and_floor_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    clock = Clock()
    log = EventLog(schema_for, path=path, clock=clock)
    commit(log, create("Account", 1), create("Contact", 2))
    clock.now += 1
    commit(log, create("Account", 3))
    log.purge_before(ORG, int(clock.now * 1000))
    before = log.events(ORG)
    log.close()

    reopened = EventLog(schema_for, path=path, clock=clock)
    commit(reopened, create("Account", 4))

    assert reopened.events(ORG)[:-1] == before
    assert [e.replay for e in reopened.events(ORG)] == [3, 4]
    assert reopened.floor(ORG) == 2
    assert reopened.schema_json(before[0].schema_id) is not None
    reopened.close()


def test_gap_and_overflow_helpers_publish_header_only_events() -> None:
    log = EventLog(schema_for)
    log.inject_gap(ORG, "Account", ["001a", "001b"], "GAP_DELETE")
    log.inject_overflow(ORG, "Contact")

    gap, overflow = log.events(ORG)
    account = cdc.change_event_schema(schema.ACCOUNT)
    contact = cdc.change_event_schema(schema.CONTACT)
    gap_header = account.decode(gap.payload)["ChangeEventHeader"]
    overflow_header = contact.decode(overflow.payload)["ChangeEventHeader"]
    assert (gap_header["changeType"], gap_header["recordIds"], gap_header["sequenceNumber"]) == (
        "GAP_DELETE",
        ["001a", "001b"],
        1,
    )
    assert (overflow_header["changeType"], overflow_header["recordIds"]) == ("GAP_OVERFLOW", [])
    assert "/data/ContactChangeEvent" in overflow.channels
    with pytest.raises(ValueError, match="gap"):
        log.inject_gap(ORG, "Account", ["001a"], "UPDATE")


def test_append_stores_published_events_on_their_channel() -> None:
    log = EventLog(schema_for)
    commit(log, create("Account", 1))

    replays = log.append(ORG, "/event/Order__e", [("e1", "sid", b"\x01"), ("e2", "sid", b"\x02")])

    assert replays == [2, 3]
    assert [e.event_id for e in log.read_after(ORG, "/event/Order__e", 0, 5)] == ["e1", "e2"]
    assert log.read_after(ORG, "/data/ChangeEvents", 1, 5) == []


def test_consumer_event_entry_is_the_protobuf_encoding() -> None:
    payload = bytes(range(256)) * 3
    entry = consumer_event_entry("evt-1", "a01VpgrsZNJdn-7KStJcxQ", payload, 300)

    response = pb.FetchResponse.FromString(entry)

    (event,) = response.events
    assert event == pb.ConsumerEvent(
        event=pb.ProducerEvent(id="evt-1", schema_id="a01VpgrsZNJdn-7KStJcxQ", payload=payload),
        replay_id=replay_bytes(300),
    )
    assert entry == pb.FetchResponse(events=[event]).SerializeToString()


async def test_watchers_wake_on_publish_from_another_thread_and_on_drop() -> None:
    log = EventLog(schema_for)
    with log.watch(ORG) as watcher:
        watcher.clear()
        thread = threading.Thread(target=commit, args=(log, create("Account", 1)))
        thread.start()
        assert await watcher.wait(5)
        thread.join()

        watcher.clear()
        assert not await watcher.wait(0.05)

        assert log.drop_streams(ORG) == 1
        assert await watcher.wait(5)
        assert watcher.dropped
    assert log.drop_streams(ORG) == 0
    await asyncio.sleep(0)
