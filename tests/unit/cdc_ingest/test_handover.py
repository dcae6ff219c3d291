"""The backfill's hand-over to the stream: which stream changes a published snapshot already holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from duplex.change.v1 import record_changed_pb2 as pb

from services.cdc_ingest.contract import RecordChanged
from services.cdc_ingest.handover import Snapshots

pytestmark = pytest.mark.unit

READS = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)  # Salesforce's clock as the backfill began reading
OURS = "duplex-acme"


def change(
    record_id: str,
    seconds: float,
    kind: pb.ChangeKind.ValueType = pb.CHANGE_KIND_UPDATE,
    client: str = "",
    entity: str = "Account",
) -> RecordChanged:
    """A change of ``record_id`` committed ``seconds`` after the reads began (before, if negative)."""
    message = RecordChanged(object_type=entity, record_id=record_id, kind=kind, origin_client=client)
    message.origin_commit_time.FromDatetime(READS + timedelta(seconds=seconds))
    return message


def snapshot(record_id: str, entity: str = "Account") -> RecordChanged:
    # A snapshot's own time is the record's SystemModstamp, which the hand-over does not use.
    return change(record_id, -3600, pb.CHANGE_KIND_SNAPSHOT, entity=entity)


def backfilled(*records: str, limit: int = 1000) -> Snapshots:
    subject = Snapshots(OURS, limit=limit)
    subject.reading("Account", READS)
    subject.remember([snapshot(r) for r in records])
    return subject


def test_a_change_committed_before_the_reads_began_of_a_record_a_snapshot_carried_is_covered() -> None:
    subject = backfilled("001A", "001B")

    assert subject.covers(change("001A", -60, pb.CHANGE_KIND_CREATE))
    assert subject.covers(change("001B", -0.001))
    assert not subject.covers(change("001C", -20, pb.CHANGE_KIND_CREATE))  # no snapshot of it (deleted since?)


def test_a_change_committed_once_the_reads_began_is_not_and_from_then_on_nothing_is() -> None:
    subject = backfilled("001A", "001B")

    assert not subject.covers(change("001A", 0))  # may have committed after its record was read
    # The stream delivers in commit order: it is past every read, and forgets them.
    assert not subject.covers(change("001B", -30))


def test_duplexs_own_tagged_echo_always_goes_through() -> None:
    # Only the tagged echo tells the resolver that a write of ours landed.
    subject = backfilled("001A")

    assert not subject.covers(change("001A", -30, client=OURS))
    assert subject.covers(change("001A", -30, client="dataloader"))


def test_without_salesforces_clock_nothing_of_that_object_is_covered() -> None:
    subject = Snapshots(OURS)
    subject.reading("Contact", None)
    subject.remember([snapshot("003A", "Contact")])

    assert not subject.covers(change("003A", -60, entity="Contact"))


def test_each_object_is_covered_up_to_its_own_reads() -> None:
    subject = backfilled("001A")
    subject.reading("Contact", READS - timedelta(seconds=10))
    subject.remember([snapshot("003A", "Contact")])

    assert not subject.covers(change("003A", -5, entity="Contact"))  # after Contact's reads began
    assert subject.covers(change("003A", -15, entity="Contact"))
    assert subject.covers(change("001A", -5))


def test_past_the_limit_records_are_handed_over_the_old_way() -> None:
    subject = backfilled("0010", "0011", "0012", limit=2)

    assert [subject.covers(change(f"001{i}", -10)) for i in range(3)] == [True, True, False]
