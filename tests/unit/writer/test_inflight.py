"""What the writer holds in flight: a command is settled, and its offset released, only once all its writes are."""

from __future__ import annotations

import pytest

from services.writer.batching import Operation, RecordWrite
from services.writer.commands import Delivery
from services.writer.inflight import InFlight

pytestmark = pytest.mark.unit

P = ("crm-writes", 0)


def delivery(offset: int, *, backfill: bool = False) -> Delivery:
    return Delivery(
        token=str(offset),
        command_id=f"cmd-{offset}",
        tenant_id="acme",
        partition=P,
        offset=offset,
        backfill=backfill,
        origin_commit_time=None,
        key=None,
        headers=(),
        timestamp_ms=None,
    )


def folded(*tokens: str) -> RecordWrite:
    """One write to one record, carrying the commands ``tokens`` (coalesced, oldest first)."""
    *earlier, latest = tokens
    return RecordWrite(
        command_id=latest,
        tenant_id="acme",
        crm_object="Account",
        operation=Operation.UPSERT,
        link_id="l1",
        fields={"Name": "Acme"},
        version=1,
        external_id_field="Duplex_Id__c",
        external_id_value="x1",
        command_ids=tuple(earlier),
    )


def test_a_command_stays_in_flight_until_every_write_of_it_settled() -> None:
    inflight = InFlight()
    live, backfill = delivery(0), delivery(1, backfill=True)
    inflight.received(live, 2)
    inflight.received(backfill, 1)
    inflight.received(delivery(2), 0)  # nothing to write: nothing to wait for
    write = folded("0", "1")

    assert inflight.deliveries_of(write) == [live, backfill]
    assert inflight.latest_delivery(write) == backfill
    assert not inflight.is_backfill(write)

    inflight.settled(live)
    assert inflight.deliveries_of(write) == [live, backfill]  # one of its two writes is still out
    assert inflight.committable([P]) == {P: 0}

    inflight.settled(live)
    assert inflight.deliveries_of(write) == [backfill]
    assert inflight.is_backfill(write)
    assert inflight.committable([P]) == {P: 1}

    inflight.settled(backfill)
    assert inflight.unfinished() == 0
    assert inflight.committable([P]) == {P: 3}
    assert inflight.committable([("crm-writes", 1)]) == {}
    inflight.committed({P: 3})
    assert inflight.committable([P]) == {}


def test_a_revoked_partition_releases_nothing_when_its_writes_settle_later() -> None:
    inflight = InFlight()
    late = delivery(5)
    inflight.received(late, 1)
    inflight.forget([P])

    inflight.settled(late)

    assert inflight.committable([P]) == {}
    assert inflight.unfinished() == 0
