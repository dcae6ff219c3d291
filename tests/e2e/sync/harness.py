"""Shared by the mapping/conflict-resolver tests: a tenant, its stored config, and topic helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from duplex.change.v1 import record_changed_pb2
from faststream.kafka import KafkaBroker
from google.protobuf.message import Message

from services.admin.config_store import ConfigStore
from services.common.change import Change, ChangeKind, Side
from services.common.contract import to_proto
from services.common.db import migrate
from services.common.kafka import make_broker
from services.common.settings import KafkaSettings
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from services.common.values import Value

TENANT = "acme"
CLIENT = "duplex-acme"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

CONFIG: dict[str, Any] = {
    "apiVersion": "duplex.dev/v1",
    "kind": "Tenant",
    "metadata": {"name": TENANT},
    "spec": {
        "salesforce": {
            "instanceUrl": "https://acme.my.salesforce.com",
            "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
            "dailyApiCap": 5000,
            "callOptionsClient": CLIENT,
        },
        "objects": [
            {
                "name": "partners",
                "app": {"object": "partners"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "conflictPolicy": "newest_wins",
                "deletePolicy": "propagate",
                "fields": [
                    {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": 40}},
                    {"app": "phone", "salesforce": "Phone", "conflictPolicy": "app_unless_blank"},
                    {
                        "app": "status",
                        "salesforce": "Status__c",
                        "conflictPolicy": "crm_wins",
                        "transform": {"type": "picklist", "valueMap": {"active": "Active", "closed": "Closed"}},
                    },
                ],
            },
            {
                "name": "contacts",
                "app": {"object": "contacts"},
                "salesforce": {"object": "Contact", "externalIdField": "Duplex_Id__c"},
                "fields": [
                    {"app": "last_name", "salesforce": "LastName"},
                    {
                        "app": "partner_id",
                        "salesforce": "AccountId",
                        "transform": {"type": "reference"},
                        "reference": {"object": "partners", "onUnresolved": "hold"},
                    },
                ],
            },
        ],
    },
}


async def prepare_database(dsn: str, config: dict[str, Any] | None = None) -> None:
    """Migrate ``dsn`` and store the tenant's configuration (default :data:`CONFIG`)."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(config or CONFIG)], "test")
    finally:
        await conn.close()


def record_changed(
    side: Side,
    obj: str,
    rid: str,
    fields: dict[str, Value],
    *,
    event_id: str,
    kind: ChangeKind = ChangeKind.UPDATE,
    at: int = 0,
    client: str = "",
    external_id: str = "",
) -> record_changed_pb2.RecordChanged:
    return to_proto(
        Change(
            event_id=event_id,
            tenant_id=TENANT,
            side=side,
            object_type=obj,
            record_id=rid,
            kind=kind,
            fields=fields,
            at=T0 + timedelta(seconds=at),
            changed=frozenset(fields),
            origin_client=client,
            external_id=external_id,
        )
    )


@asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[KafkaBroker]:
    broker = make_broker(KafkaSettings(bootstrap_servers=bootstrap), service_name="test-upstream")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def publish(broker: KafkaBroker, names: TopicNames, topic: Topic, event: Message, key: bytes) -> None:
    await broker.publish(event, names(topic), key=key)


class TopicReader:
    """Reads every record of one topic from the beginning, incrementally."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 12) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.records: list[ConsumerRecord[Any, Any]] = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> list[ConsumerRecord[Any, Any]]:
        batch = await self._consumer.getmany(timeout_ms=100)
        new = [r for rs in batch.values() for r in rs]
        self.records.extend(new)
        return new

    async def until(self, count: int, within: float = 30.0) -> list[ConsumerRecord[Any, Any]]:
        deadline = time.monotonic() + within
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.records)} records, expected {count}")
            await self.poll()
        return self.records

    async def catch_up(self, within: float = 30.0) -> list[ConsumerRecord[Any, Any]]:
        """Everything up to the topic's end offsets as of now."""
        ends = await self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + within
        for tp, end in ends.items():
            while await self._consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{tp} not read up to {end} within {within} s")
                await self.poll()
        return self.records

    async def settle(self, quiet: float = 1.5) -> list[ConsumerRecord[Any, Any]]:
        """Everything, once nothing new arrived for ``quiet`` seconds."""
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            if await self.poll():
                last = time.monotonic()
            await asyncio.sleep(0.05)
        return self.records


def decode(records: list[ConsumerRecord[Any, Any]], message_type: type[Message]) -> list[Any]:
    out = []
    for r in records:
        m = message_type()
        m.ParseFromString(r.value)
        out.append(m)
    return out
