"""Publishing to crm-changes: a batch is done only when Kafka acknowledged every record (acks=all).

Records are handed to the producer one after another (so their order per key is the order
given) and then awaited together, so a batch of 100 costs about one round trip, not 100.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from services.cdc_ingest.contract import RecordChanged
from services.common.codec import record_key
from services.common.dlq import ERROR_CLASS, ERROR_REASON, FAILED_AT, SERVICE
from services.common.kafka import ServiceKafka
from services.common.topics import Topic


class ChangeSink(Protocol):
    async def publish(self, changes: Sequence[RecordChanged]) -> None:
        """Return once every change is durably on crm-changes."""

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        """An event that cannot be turned into a change, kept with where it came from."""


class KafkaSink:
    def __init__(self, kafka: ServiceKafka) -> None:
        self._kafka = kafka
        self._changes = kafka.publisher(Topic.CRM_CHANGES)
        self._dlq_topic = kafka.topic(kafka.topic_names.dlq_of(Topic.CRM_CHANGES))

    async def publish(self, changes: Sequence[RecordChanged]) -> None:
        futures: list[asyncio.Future[Any]] = []
        for change in changes:
            key = record_key(change.tenant_id, change.object_type, change.record_id)
            futures.append(await self._changes.publish(change, key=key, no_confirm=True))
        if futures:
            await asyncio.gather(*futures)

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        headers = {
            ERROR_REASON: reason[:1000],
            ERROR_CLASS: "InvalidEvent",
            FAILED_AT: datetime.now(UTC).isoformat(),
            SERVICE: self._kafka.service_name,
            "duplex-tenant": tenant_id,
            **{f"duplex-original-{name}": value for name, value in origin.items()},
        }
        await self._kafka.broker.publish(payload, self._dlq_topic, key=tenant_id.encode(), headers=headers)
