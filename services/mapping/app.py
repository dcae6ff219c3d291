"""Composition root: settings in, the mapping service (a FastStream app) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from duplex.change.v1 import record_changed_pb2
from faststream import FastStream
from google.protobuf.message import Message

from services.common.db import create_pool
from services.common.errors import InvalidEvent
from services.common.kafka import ServiceKafka, make_kafka
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.mapping.config_cache import ConfigCache
from services.mapping.mapper import Mapper
from services.mapping.settings import MappingSettings

RecordChanged = record_changed_pb2.RecordChanged


@dataclass
class MappingApp:
    app: FastStream
    kafka: ServiceKafka


def build_app(settings: MappingSettings, *, telemetry: Telemetry | None = None) -> MappingApp:
    topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry)
    mapped_changes = kafka.sender(Topic.MAPPED_CHANGES)
    holder: dict[str, Any] = {}

    async def publish(events: Sequence[tuple[Message, bytes]]) -> None:
        await mapped_changes.publish_all(events)

    # The pool lives from start-up to shutdown; the stack closes it after the broker stopped.
    resources = AsyncExitStack()

    async def open_pool() -> None:
        pool = await resources.enter_async_context(create_pool(settings.postgres))
        holder["mapper"] = Mapper(
            pool, ConfigCache(settings.config_check_seconds), publish, service_name=settings.service_name
        )

    async def close_pool() -> None:
        holder.pop("mapper", None)
        await resources.aclose()

    async def on_changes(events: Sequence[RecordChanged]) -> Mapping[int, InvalidEvent]:
        refused: dict[int, InvalidEvent] = await holder["mapper"].handle_batch(events)
        return refused

    # Both sides' changes go through the same handler, in batches; each topic is its own
    # subscription so that a burst on one side does not wait behind the other's partitions.
    kafka.batch_subscriber(Topic.APP_CHANGES, message_type=RecordChanged, handler=on_changes)
    kafka.batch_subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, handler=on_changes)

    app = FastStream(kafka.broker, on_startup=[open_pool], after_shutdown=[close_pool])
    return MappingApp(app, kafka)
