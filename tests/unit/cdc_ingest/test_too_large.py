"""A change too large for a Kafka record is refused for that record only: the rest of its batch is
published, a pointer goes to the dead-letter topic, the sync log says which record and by how much."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from duplex.change.v1 import record_changed_pb2

from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.sink import PAYLOAD_DROPPED, KafkaSink
from services.common.change import Change, ChangeKind, Side
from services.common.contract import to_proto
from services.common.errors import RecordTooLargeError
from services.common.kafka import ServiceKafka
from services.common.topics import TopicNames, load_topic_table
from tests.fixtures.telemetry import local_telemetry

pytestmark = pytest.mark.unit

RecordChanged = record_changed_pb2.RecordChanged
NAMES = TopicNames(load_topic_table(), prefix="t.")
LIMIT = 2_000


class Producer:
    """Sender's size check (nothing of a batch is sent when one record is over the limit) and the
    producer's own for dead letters (refused at send, before anything is queued)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []
        self.dead_letters: list[tuple[bytes, dict[str, str]]] = []

    def _check(self, size: int) -> None:
        if size > LIMIT:
            raise MessageSizeTooLargeError(f"The message is {size} bytes")

    async def publish_all(self, events: Sequence[tuple[RecordChanged, bytes]]) -> None:
        for index, (change, _) in enumerate(events):
            if change.ByteSize() > LIMIT:
                raise RecordTooLargeError(index, f"{change.ByteSize()} bytes")
        self.sent.extend((change.record_id, key) for change, key in events)

    async def publish_dead_letter(self, payload: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        self._check(len(payload))
        self.dead_letters.append((payload, dict(headers)))


def sink_over(producer: Producer) -> KafkaSink:
    kafka = SimpleNamespace(
        sender=lambda topic: producer,
        topic=NAMES,
        topic_names=NAMES,
        service_name="cdc-ingest",
        broker=SimpleNamespace(publish=producer.publish_dead_letter),
    )
    return KafkaSink(cast(ServiceKafka, kafka), max_request_size=LIMIT)


class SyncLog:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def log_event(self, tenant_id: str, event: str, **fields: Any) -> None:
        self.rows.append({"tenant_id": tenant_id, "event": event, **fields})


def change(record_id: str, description: str) -> RecordChanged:
    message = to_proto(
        Change(
            event_id=f"e-{record_id}",
            tenant_id="acme",
            side=Side.CRM,
            object_type="Account",
            record_id=record_id,
            kind=ChangeKind.UPDATE,
            fields={"Description": description},
            at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    message.source_position.channel = "/data/ChangeEvents"
    message.source_position.replay_id = (9).to_bytes(8, "big")
    return message


async def test_an_oversized_change_is_refused_alone_with_a_pointer_and_a_sync_log_row() -> None:
    producer, log = Producer(), SyncLog()
    telemetry = local_telemetry("cdc-ingest")
    publisher = Publisher("acme", sink_over(producer), log, telemetry.metrics)
    big = change("001B", "x" * 5_000)
    await publisher.publish([change("001A", "small"), big, change("001C", "small too")], "stream")

    assert [record_id for record_id, _ in producer.sent] == ["001A", "001C"]
    [(payload, headers)] = producer.dead_letters
    assert payload == b""
    assert headers["duplex-tenant"] == "acme"
    assert headers["duplex-original-record-id"] == "001B"
    assert headers["duplex-original-replay-id"] == (9).to_bytes(8, "big").hex()
    assert headers["duplex-original-limit"] == str(LIMIT)
    [row] = log.rows
    assert (row["tenant_id"], row["event"], row["code"], row["record_id"]) == (
        "acme",
        "cdc.record_too_large",
        "RECORD_TOO_LARGE",
        "001B",
    )
    assert row["detail"] | {"size": 0} == {
        "object": "Account",
        "record_id": "001B",
        "size": 0,
        "limit": LIMIT,
        "channel": "/data/ChangeEvents",
        "replay-id": (9).to_bytes(8, "big").hex(),
    }
    assert row["detail"]["size"] == big.ByteSize() > LIMIT
    registry = telemetry.metrics.registry
    labels = {"tenant": "acme", "source": "stream"}
    assert registry.get_sample_value("duplex_cdc_events_ingested_total", labels) == 2
    assert registry.get_sample_value("duplex_cdc_events_rejected_total", {"tenant": "acme", "reason": "too_large"}) == 1


async def test_a_dead_letter_too_large_to_keep_is_kept_as_a_pointer() -> None:
    producer = Producer()
    await sink_over(producer).dead_letter(
        b"\x00" * 5_000, tenant_id="acme", reason="undecodable", origin={"replay-id": "09"}
    )
    [(payload, headers)] = producer.dead_letters
    assert (payload, headers[PAYLOAD_DROPPED], headers["duplex-original-replay-id"]) == (b"", "5000", "09")
