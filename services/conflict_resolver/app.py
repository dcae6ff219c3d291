"""Composition root: settings in, the conflict-resolver (a FastStream app) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_settled_pb2
from faststream import FastStream
from google.protobuf.message import Message

from services.common.db import create_pool
from services.common.errors import InvalidEvent
from services.common.kafka import ServiceKafka, make_kafka
from services.common.telemetry import Telemetry
from services.common.topics import Topic, TopicNames, load_topic_table
from services.conflict_resolver.handlers import ConfigVersions, Resolver
from services.conflict_resolver.settings import ResolverSettings

ChangeMapped = change_mapped_pb2.ChangeMapped
WriteSettled = write_settled_pb2.WriteSettled


@dataclass
class ResolverApp:
    app: FastStream
    kafka: ServiceKafka


def build_app(settings: ResolverSettings, *, telemetry: Telemetry | None = None) -> ResolverApp:
    topic_names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
    kafka = make_kafka(settings.kafka, service_name=settings.service_name, topic_names=topic_names, telemetry=telemetry)
    crm_writes = kafka.sender(Topic.CRM_WRITES)
    app_updates = kafka.sender(Topic.APP_UPDATES)
    holder: dict[str, Any] = {}

    async def publish_crm(events: Sequence[tuple[Message, bytes]]) -> None:
        await crm_writes.publish_all(events)

    async def publish_app(events: Sequence[tuple[Message, bytes]]) -> None:
        await app_updates.publish_all(events)

    # The pool lives from start-up to shutdown; the stack closes it after the broker stopped.
    resources = AsyncExitStack()

    async def open_pool() -> None:
        pool = await resources.enter_async_context(create_pool(settings.postgres))
        holder["resolver"] = Resolver(
            pool,
            ConfigVersions(settings.config_cache_size),
            publish_crm=publish_crm,
            publish_app=publish_app,
            service_name=settings.service_name,
            metrics=telemetry.metrics if telemetry else None,
        )

    async def close_pool() -> None:
        holder.pop("resolver", None)
        await resources.aclose()

    async def on_mapped(events: Sequence[ChangeMapped]) -> Mapping[int, InvalidEvent]:
        refused: dict[int, InvalidEvent] = await holder["resolver"].on_mapped_batch(events)
        return refused

    async def on_settled(events: Sequence[WriteSettled]) -> Mapping[int, InvalidEvent]:
        refused: dict[int, InvalidEvent] = await holder["resolver"].on_settled_batch(events)
        return refused

    kafka.batch_subscriber(Topic.MAPPED_CHANGES, message_type=ChangeMapped, handler=on_mapped)
    kafka.batch_subscriber(Topic.WRITE_OUTCOMES, message_type=WriteSettled, handler=on_settled)

    app = FastStream(kafka.broker, on_startup=[open_pool], after_shutdown=[close_pool])
    return ResolverApp(app, kafka)
