"""Batching, coalescing and failure classification of the writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.writer.batching import (
    COLLECTION_LIMIT,
    Batcher,
    Ingestion,
    Operation,
    RecordWrite,
    Transport,
    calls_needed,
    coalesce,
)
from services.writer.errors import Failure, classify

pytestmark = pytest.mark.unit

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def write(n: int, op: Operation = Operation.UPSERT, link: str | None = None, **fields: object) -> RecordWrite:
    return RecordWrite(
        command_id=f"c{n}",
        tenant_id="acme",
        crm_object="Account",
        operation=op,
        link_id=link or f"l{n}",
        fields=fields or {"Name": f"n{n}"},  # type: ignore[arg-type]
        version=n,
        external_id_field="Duplex_Id__c",
        external_id_value=f"x-{link or n}",
    )


def test_ten_thousand_writes_take_fifty_calls_over_rest() -> None:
    batcher = Batcher(ingestion=Ingestion.REST)
    for n in range(10_000):
        batcher.add(write(n), T0)

    batches = batcher.drain()

    assert [len(b.writes) for b in batches] == [COLLECTION_LIMIT] * 50
    assert calls_needed(batches) == 50
    assert len(batcher) == 0


def test_bulk_takes_over_above_the_threshold_when_automatic() -> None:
    automatic = Batcher(bulk_threshold=2000)
    forced_rest = Batcher(bulk_threshold=2000, ingestion=Ingestion.REST)
    for n in range(10_000):
        automatic.add(write(n), T0)
        forced_rest.add(write(n), T0)

    bulk = automatic.drain()

    assert [(b.transport, len(b.writes)) for b in bulk] == [(Transport.BULK, 10_000)]
    assert calls_needed(bulk) < calls_needed(forced_rest.drain())


def test_ten_updates_to_one_record_in_a_window_cost_one_write() -> None:
    batcher = Batcher()
    for n in range(10):
        batcher.add(write(n, link="same", Name=f"v{n}", Phone=str(n) if n == 3 else None), T0)

    [batch] = batcher.drain()
    [only] = batch.writes

    assert only.fields == {"Name": "v9", "Phone": None}
    assert only.all_command_ids == tuple(f"c{n}" for n in range(10))
    assert only.version == 9


@pytest.mark.parametrize(
    ("first", "second", "result"),
    [
        (Operation.CREATE, Operation.UPDATE, Operation.UPSERT),
        (Operation.UPSERT, Operation.UPDATE, Operation.UPSERT),
        (Operation.UPDATE, Operation.UPDATE, Operation.UPDATE),
        (Operation.UPDATE, Operation.DELETE, Operation.DELETE),
        (Operation.UPSERT, Operation.DELETE, Operation.DELETE),
        (Operation.DELETE, Operation.UPSERT, Operation.UPSERT),
    ],
)
def test_coalesced_operation(first: Operation, second: Operation, result: Operation) -> None:
    merged = coalesce(write(1, first, link="r"), write(2, second, link="r"))

    assert merged.operation is result
    assert merged.all_command_ids == ("c1", "c2")


def test_a_partial_batch_waits_for_its_window() -> None:
    batcher = Batcher(window=timedelta(milliseconds=200))
    batcher.add(write(1), T0)

    assert batcher.due(T0 + timedelta(milliseconds=100)) == []
    assert batcher.next_deadline() == T0 + timedelta(milliseconds=200)
    [batch] = batcher.due(T0 + timedelta(milliseconds=200))
    assert len(batch.writes) == 1


def test_a_full_batch_goes_at_once_and_the_rest_keeps_waiting() -> None:
    batcher = Batcher(window=timedelta(seconds=5))
    for n in range(COLLECTION_LIMIT + 5):
        batcher.add(write(n), T0)

    [batch] = batcher.due(T0)

    assert len(batch.writes) == COLLECTION_LIMIT
    assert len(batcher) == 5


def test_groups_never_mix_operations_or_objects() -> None:
    batcher = Batcher()
    batcher.add(write(1, Operation.UPSERT), T0)
    batcher.add(write(2, Operation.DELETE), T0)
    batcher.add(RecordWrite("c3", "acme", "Contact", Operation.UPSERT, "l3", {}, 1, "Duplex_Id__c", "x3"), T0)
    batcher.add(RecordWrite("c4", "other", "Account", Operation.UPSERT, "l4", {}, 1, "Duplex_Id__c", "x4"), T0)

    batches = batcher.drain()

    assert len(batches) == 4
    assert {(b.tenant_id, b.crm_object, b.operation) for b in batches} == {
        ("acme", "Account", Operation.UPSERT),
        ("acme", "Account", Operation.DELETE),
        ("acme", "Contact", Operation.UPSERT),
        ("other", "Account", Operation.UPSERT),
    }


def test_batches_are_ordered_by_parent_to_reduce_lock_contention() -> None:
    batcher = Batcher(parent_fields={"Account": "ParentId"})
    for n, parent in enumerate(["p3", "p1", "p2", "p1", "p3"]):
        batcher.add(write(n, ParentId=parent), T0)

    [batch] = batcher.drain()

    assert [w.fields["ParentId"] for w in batch.writes] == ["p1", "p1", "p2", "p3", "p3"]


@pytest.mark.parametrize(
    ("code", "http", "failure"),
    [
        ("UNABLE_TO_LOCK_ROW", 400, Failure.RETRYABLE),
        ("ALL_OR_NONE_OPERATION_ROLLED_BACK", 400, Failure.RETRYABLE),
        ("PROCESSING_HALTED", 400, Failure.RETRYABLE),
        ("SERVER_UNAVAILABLE", 503, Failure.RETRYABLE),
        ("", 502, Failure.RETRYABLE),
        ("REQUEST_LIMIT_EXCEEDED", 403, Failure.RETRYABLE),
        ("INVALID_SESSION_ID", 401, Failure.REAUTHENTICATE),
        ("INVALID_FIELD", 400, Failure.PERMANENT),
        ("REQUIRED_FIELD_MISSING", 400, Failure.PERMANENT),
        ("INSUFFICIENT_ACCESS_OR_READONLY", 400, Failure.PERMANENT),
        ("STRING_TOO_LONG", 400, Failure.PERMANENT),
        ("DUPLICATE_VALUE", 400, Failure.PERMANENT),
        ("MALFORMED_ID", None, Failure.PERMANENT),
    ],
)
def test_failures_are_classified(code: str, http: int | None, failure: Failure) -> None:
    assert classify(code, http) is failure


def test_a_steady_trickle_fills_whole_batches() -> None:
    # One write every 2 ms: the group never goes quiet for the 200 ms window, so nothing partial
    # is sent; each batch leaves full.
    batcher = Batcher(window=timedelta(milliseconds=200), max_wait=timedelta(seconds=2))
    sent = []
    for n in range(1_000):
        now = T0 + timedelta(milliseconds=2 * n)
        batcher.add(write(n), now)
        sent += batcher.due(now)

    assert [len(b.writes) for b in sent] == [COLLECTION_LIMIT] * 5
    assert len(batcher) == 0


def test_a_partial_batch_leaves_when_its_group_goes_quiet() -> None:
    batcher = Batcher(window=timedelta(milliseconds=200))
    batcher.add(write(1), T0)
    batcher.add(write(2), T0 + timedelta(milliseconds=150))

    assert batcher.due(T0 + timedelta(milliseconds=300)) == []  # the second write restarted the window
    assert batcher.next_deadline() == T0 + timedelta(milliseconds=350)
    [batch] = batcher.due(T0 + timedelta(milliseconds=350))
    assert len(batch.writes) == 2


def test_max_wait_bounds_how_long_a_trickle_can_hold_a_write() -> None:
    batcher = Batcher(window=timedelta(milliseconds=200), max_wait=timedelta(seconds=1))
    sent: list[tuple[int, int]] = []
    for n in range(10):  # one write every 150 ms: never quiet for 200 ms, never full
        now = T0 + timedelta(milliseconds=150 * n)
        batcher.add(write(n), now)
        sent += [(n, len(b.writes)) for b in batcher.due(now)]

    # At 1,050 ms the oldest write has waited more than a second: everything held leaves.
    assert sent == [(7, 8)]
    assert len(batcher) == 2


def test_an_older_write_folded_after_a_newer_one_reports_the_fields_it_did_not_keep() -> None:
    batcher = Batcher(ingestion=Ingestion.REST)
    assert batcher.add(write(5, link="l", Name="newer"), T0) == frozenset()
    # A replay of version 3 carrying only a field the newer write has: nothing is lost.
    assert batcher.add(write(3, link="l", Name="older"), T0) == frozenset()
    # Version 4 carrying a field the newer write does not: taken for a replay, its Phone is left out.
    assert batcher.add(write(4, link="l", Phone="555"), T0) == frozenset({"Phone"})
    [batch] = batcher.due(T0 + timedelta(seconds=10))
    assert [dict(w.fields) for w in batch.writes] == [{"Name": "newer"}]
