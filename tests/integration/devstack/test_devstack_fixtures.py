"""The session's broker and database as tests get them, including the restarts fault tests rely on."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from devstack.kafka import KafkaServer
from devstack.postgres import PostgresServer
from services.common.topics import Topic, TopicNames

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"tenant/object/record")
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    """Every record of ``topic`` from the beginning, once ``expected`` have arrived (or 30 s passed)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                values += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return values


async def test_topic_names_gives_every_table_topic_under_a_test_prefix(
    topic_names: TopicNames, kafka_bootstrap: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic_names(topic) for topic in Topic])
    finally:
        await admin.close()

    assert topic_names.prefix.startswith("test-")
    partitions = {entry["topic"]: len(entry["partitions"]) for entry in described if entry["error_code"] == 0}
    assert partitions == {topic_names(topic): spec.partitions for topic, spec in topic_names.table.topics.items()}


async def test_the_broker_keeps_its_data_across_a_restart_and_a_crash(
    kafka_server: KafkaServer, topic_names: TopicNames
) -> None:
    topic = topic_names(Topic.APP_CHANGES)
    sent = [f"change-{n}".encode() for n in range(10)]
    await produce(kafka_server.bootstrap_servers, topic, sent)
    port, pid = kafka_server.ports.broker, kafka_server.pid

    await kafka_server.restart()

    assert kafka_server.ports.broker == port
    assert kafka_server.pid != pid
    assert sorted(await read_all(kafka_server.bootstrap_servers, topic, len(sent))) == sorted(sent)

    await asyncio.to_thread(kafka_server.kill)
    assert not kafka_server.running
    await asyncio.to_thread(kafka_server.start)
    await kafka_server.wait_ready()

    assert sorted(await read_all(kafka_server.bootstrap_servers, topic, len(sent))) == sorted(sent)


async def test_the_database_keeps_committed_rows_after_a_crash(
    postgres_server: PostgresServer, fresh_database: str
) -> None:
    connection = await asyncpg.connect(fresh_database)
    await connection.execute("CREATE TABLE notes (id integer PRIMARY KEY); INSERT INTO notes VALUES (1), (2)")
    await connection.close()

    await asyncio.to_thread(postgres_server.kill)
    assert not postgres_server.running
    await asyncio.to_thread(postgres_server.start)
    await postgres_server.wait_ready()

    connection = await asyncpg.connect(fresh_database)
    try:
        assert await connection.fetchval("SELECT count(*) FROM notes") == 2
    finally:
        await connection.close()


async def test_fresh_database_is_a_new_empty_database(fresh_database: str, postgres_dsn: str) -> None:
    connection = await asyncpg.connect(fresh_database)
    try:
        name = await connection.fetchval("SELECT current_database()")
        tables = await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()

    assert name.startswith("test_")
    assert tables == 0
    assert fresh_database != postgres_dsn
