"""A record read by REST that holds a value no change can carry is refused alone, as the stream
refuses an event: the read dead-letters a pointer to it, logs why, and publishes the others."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
from duplex.change.v1 import record_changed_pb2

from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rejection import UndecodableError
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.typed import FieldInfo
from services.common.change import ChangeKind

pytestmark = pytest.mark.unit

TYPES = {
    "Id": FieldInfo("Id", "id"),
    "SystemModstamp": FieldInfo("SystemModstamp", "datetime"),
    "NumberOfEmployees": FieldInfo("NumberOfEmployees", "int"),
}


def row(n: int, employees: object) -> dict[str, Any]:
    return {
        "attributes": {"type": "Account"},
        "Id": f"001{n:015d}",
        "SystemModstamp": f"2026-03-01T12:00:0{n}.000+0000",
        "NumberOfEmployees": employees,
    }


ROWS = [row(1, 12), row(2, 10**30), row(3, 14)]


class Rest:
    async def fields(self, entity: str, *, refresh: bool = False) -> dict[str, FieldInfo]:
        return TYPES

    async def query(
        self, soql: str, *, all_rows: bool = False, backfill: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        for found in ROWS:
            yield found


class Sink:
    max_request_size = 1 << 20

    def __init__(self) -> None:
        self.sent: list[record_changed_pb2.RecordChanged] = []
        self.dead_letters: list[tuple[bytes, dict[str, str]]] = []

    async def publish(
        self, changes: Sequence[record_changed_pb2.RecordChanged]
    ) -> list[record_changed_pb2.RecordChanged]:
        self.sent.extend(changes)
        return []

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        self.dead_letters.append((payload, origin))


class SyncLog:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def log_event(self, tenant_id: str, event: str, **fields: Any) -> None:
        self.rows.append({"event": event, **fields})


def reader(sink: Sink, sync_log: SyncLog) -> RecordReader:
    return RecordReader(
        tenant_id="acme",
        rest=cast(SalesforceRest, Rest()),
        publisher=Publisher("acme", sink, sync_log),
        page_size=10,
    )


def test_a_row_beyond_what_a_change_carries_is_undecodable_not_a_crash() -> None:
    with pytest.raises(UndecodableError) as undecodable:
        reader(Sink(), SyncLog()).row_change("Account", ROWS[1], TYPES, ChangeKind.SNAPSHOT, "poll")

    assert undecodable.value.stage == "record"
    assert "int64" in undecodable.value.error


async def test_the_paged_read_refuses_that_record_alone() -> None:
    sink, sync_log = Sink(), SyncLog()

    published = await reader(sink, sync_log).read_window("Account", None, "poll")

    assert published == 2
    assert [c.record_id for c in sink.sent] == [ROWS[0]["Id"], ROWS[2]["Id"]]
    assert sink.dead_letters == [(b"", {"object": "Account", "record-id": ROWS[1]["Id"], "source": "poll"})]
    (logged,) = sync_log.rows
    assert (logged["event"], logged["code"], logged["record_id"]) == (
        "cdc.unreadable_record",
        "UNREADABLE_RECORD",
        ROWS[1]["Id"],
    )
    assert "int64" in logged["message"]
