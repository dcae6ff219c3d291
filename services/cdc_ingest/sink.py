"""Publishing to crm-changes: a batch is done only when Kafka acknowledged every record (acks=all).

A batch goes out through :class:`~services.common.kafka.Sender`, in record batches built per
partition (each key where Kafka's default partitioner puts it, so one record's changes keep their
order), and is acknowledged as a whole: about a fifth of what a faststream publish per change
cost, paid on every change ingested.

A change larger than the producer's maximum request size (``KAFKA_MAX_REQUEST_SIZE``) is found
before anything is sent; it is returned, and the rest of the batch goes out. Sent again it would
be refused again, so failing the batch would repeat it for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from aiokafka.errors import MessageSizeTooLargeError

from services.cdc_ingest.contract import RecordChanged
from services.common.codec import record_key
from services.common.dlq import ERROR_CLASS, ERROR_REASON, FAILED_AT, SERVICE
from services.common.errors import RecordTooLargeError
from services.common.kafka import ServiceKafka
from services.common.topics import Topic

# Where a dead letter's payload was too large to keep: its size.
PAYLOAD_DROPPED = "duplex-payload-dropped-bytes"


class ChangeSink(Protocol):
    # The largest record the producer sends, in bytes.
    max_request_size: int

    async def publish(self, changes: Sequence[RecordChanged]) -> list[RecordChanged]:
        """Return once every change is durably on crm-changes, but those too large to send (returned)."""

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        """An event that cannot be turned into a change, kept with where it came from."""


class KafkaSink:
    def __init__(self, kafka: ServiceKafka, *, max_request_size: int) -> None:
        self._kafka = kafka
        self._changes = kafka.sender(Topic.CRM_CHANGES)
        self._dlq_topic = kafka.topic(kafka.topic_names.dlq_of(Topic.CRM_CHANGES))
        self.max_request_size = max_request_size

    async def publish(self, changes: Sequence[RecordChanged]) -> list[RecordChanged]:
        pending = [(change, record_key(change.tenant_id, change.object_type, change.record_id)) for change in changes]
        too_large: list[RecordChanged] = []
        while True:
            try:
                await self._changes.publish_all(pending)
            except RecordTooLargeError as error:  # nothing was sent: the rest goes without it
                too_large.append(pending.pop(error.index)[0])
                continue
            return too_large

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        headers = {
            ERROR_REASON: reason[:1000],
            ERROR_CLASS: "InvalidEvent",
            FAILED_AT: datetime.now(UTC).isoformat(),
            SERVICE: self._kafka.service_name,
            "duplex-tenant": tenant_id,
            **{f"duplex-original-{name}": value for name, value in origin.items()},
        }
        try:
            await self._kafka.broker.publish(payload, self._dlq_topic, key=tenant_id.encode(), headers=headers)
        except MessageSizeTooLargeError:
            # The headers still say where the event is and why it was refused.
            headers[PAYLOAD_DROPPED] = str(len(payload))
            await self._kafka.broker.publish(b"", self._dlq_topic, key=tenant_id.encode(), headers=headers)
