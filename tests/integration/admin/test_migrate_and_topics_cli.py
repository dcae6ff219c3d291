"""``duplex migrate`` and ``duplex topics apply`` against a real PostgreSQL and Kafka broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner

from services.admin.cli import app
from services.common.topics import TopicNames, load_topic_table

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_migrate_applies_once(fresh_database: str) -> None:
    first = runner.invoke(app, ["migrate", "--dsn", fresh_database])
    second = runner.invoke(app, ["migrate", "--dsn", fresh_database])

    assert first.exit_code == 0, first.output
    assert first.output.startswith("applied 0001_tenants_and_config.sql")
    assert (second.exit_code, second.output.strip()) == (0, "nothing to apply")


def test_migrate_without_a_database_is_exit_4() -> None:
    result = runner.invoke(app, ["migrate", "--dsn", "postgresql://nobody:secret@127.0.0.1:1/none"])

    assert result.exit_code == 4
    assert result.stderr.startswith("error: cannot reach the database at 127.0.0.1:1/none: ")
    assert "secret" not in result.output


def test_topics_apply_without_kafka() -> None:
    unreachable = runner.invoke(app, ["topics", "apply", "--bootstrap", "127.0.0.1:1"])
    assert unreachable.exit_code == 4
    assert unreachable.stderr.startswith("error: cannot reach Kafka at 127.0.0.1:1: ")
    assert len(unreachable.stderr.splitlines()) == 1
    unset = runner.invoke(app, ["topics", "apply"], env={"KAFKA_BOOTSTRAP_SERVERS": None})
    assert unset.exit_code == 2
    assert unset.stderr == "error: no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap\n"


def test_topics_apply_creates_the_table(kafka_bootstrap: str) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}."
    args = ["topics", "apply", "--bootstrap", kafka_bootstrap, "--prefix", prefix]

    first = runner.invoke(app, args)
    again = runner.invoke(app, args)

    assert first.exit_code == 0, first.output
    assert (again.exit_code, again.output.strip()) == (0, "every topic exists")
    table = load_topic_table()
    names = TopicNames(table, prefix)
    partitions = asyncio.run(describe_and_delete(kafka_bootstrap, [names(t) for t in table.topics]))
    assert partitions == {names(topic): spec.partitions for topic, spec in table.topics.items()}


async def describe_and_delete(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
        await admin.delete_topics(topics)
    finally:
        await admin.close()
    return described
