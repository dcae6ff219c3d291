"""Composition root: settings in, the mapping service (a FastStream app) out."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from duplex.change.v1 import record_changed_pb2
from faststream import FastStream
from faststream.params import NoCast
from google.protobuf.message import Message

from services.common.db import create_pool
from services.common.kafka import AFTER_EFFECTS, ServiceKafka, make_kafka
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
    mapped_changes = kafka.publisher(Topic.MAPPED_CHANGES)
    holder: dict[str, Any] = {}

    async def publish(event: Message, key: bytes) -> None:
        await mapped_changes.publish(event, key=key)

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

    # Both sides' changes go through the same handler; each topic is its own subscription so that
    # a burst on one side does not wait behind the other's partitions.
    @kafka.subscriber(Topic.APP_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def on_app_change(event: NoCast[RecordChanged]) -> None:
        await holder["mapper"].handle(event)

    @kafka.subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
    async def on_crm_change(event: NoCast[RecordChanged]) -> None:
        await holder["mapper"].handle(event)

    app = FastStream(kafka.broker, on_startup=[open_pool], after_shutdown=[close_pool])
    return MappingApp(app, kafka)
