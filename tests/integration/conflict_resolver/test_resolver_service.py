"""The conflict-resolver as it runs (services.conflict_resolver.app.run) through the real broker and
database: mapped changes in, write commands out, their outcomes back in; bad input dead-lettered."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.writer.v1 import write_records_pb2
from pydantic import SecretStr

from services.common.codec import link_key
from services.common.dlq import ERROR_REASON
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.topics import Topic, TopicNames
from services.conflict_resolver.app import run
from services.conflict_resolver.settings import ResolverSettings
from tests.e2e.sync.harness import TENANT, TopicReader, decode, prepare_database, producer, publish
from tests.integration.conflict_resolver.test_resolver_batches import mapped
from tests.unit.conflict_resolver.test_resolver_handlers import settled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def crm_record_id(dsn: str, link_id: str, within: float = 30.0) -> str:
    """The link's Salesforce id once the resolver stored one."""
    deadline = time.monotonic() + within
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < deadline:
            found = await conn.fetchval(
                "SELECT crm_record_id FROM link_states WHERE tenant_id = $1 AND link_id = $2", TENANT, link_id
            )
            if found is not None:
                return str(found)
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"link {link_id} got no Salesforce id within {within} s")


async def test_mapped_changes_become_write_commands_whose_outcomes_come_back(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix),
        postgres=PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2),
    )
    create = mapped("c1", "L1", {"name": "Acme"}, at=0, kind=record_changed_pb2.CHANGE_KIND_CREATE)
    no_link = mapped("bad-1", "", {"name": "x"}, at=1)
    async with (
        producer(kafka_bootstrap) as upstream,
        run(settings) as running,
        TopicReader(kafka_bootstrap, topic_names(Topic.CRM_WRITES)) as writes,
        TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES_DLQ), partitions=3) as dead,
    ):
        assert await running.health.is_ready()
        assert await running.health.is_live()
        await publish(upstream, topic_names, Topic.MAPPED_CHANGES, create, link_key(TENANT, "L1"))
        await publish(upstream, topic_names, Topic.MAPPED_CHANGES, no_link, link_key(TENANT, "none"))

        (command,) = decode(await writes.until(1), write_records_pb2.WriteRecords)
        assert command.operation == write_records_pb2.OPERATION_UPSERT
        assert [r.link_id for r in command.records] == ["L1"]
        (reason,) = [dict(r.headers)[ERROR_REASON] for r in await dead.until(1)]
        assert b"link_id" in reason

        created = settled(command, record_id="001L1", created=True)
        await publish(upstream, topic_names, Topic.WRITE_OUTCOMES, created, link_key(TENANT, "L1"))
        assert await crm_record_id(fresh_database, "L1") == "001L1"
        assert running.halt.error is None
