"""``duplex topics apply --partitions/--retention-ms`` (what the chart's topics Job passes) against the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from services.admin.cli import app
from services.common.topics import Topic, TopicNames, load_topic_table

pytestmark = pytest.mark.integration

runner = CliRunner()


async def describe_and_delete(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str]]:
    """Each topic's partition count and retention.ms, then the topics deleted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
        answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
        retention = {
            resource[3]: value
            for answer in answers
            for resource in answer.resources
            for name, value, *_ in resource[4]
            if name == "retention.ms"
        }
        await admin.delete_topics(topics)
    finally:
        await admin.close()
    return {name: (counts[name], retention[name]) for name in topics}


def test_partitions_and_retention_given_to_topics_apply_reach_the_broker(kafka_bootstrap: str) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}."
    args = ["topics", "apply", "--bootstrap", kafka_bootstrap, "--prefix", prefix]
    sizes = ["--partitions", "2", "--partitions", "crm_writes=3", "--retention-ms", "3600000"]
    result = runner.invoke(app, [*args, *sizes, "--retention-ms", "crm_writes=-1"])
    assert result.exit_code == 0, result.output
    table = load_topic_table()
    names = TopicNames(table, prefix)
    found = asyncio.run(describe_and_delete(kafka_bootstrap, [names(t) for t in table.topics]))
    assert found[names(Topic.CRM_WRITES)] == (3, "-1")
    assert found[names(Topic.MAPPED_CHANGES)] == (2, "3600000")
    assert found[names(Topic.TENANTS)] == (2, "-1")  # compacted: kept, whatever the retention
    dlq = table.topics[Topic.CRM_WRITES_DLQ]
    assert found[names(Topic.CRM_WRITES_DLQ)] == (dlq.partitions, str(dlq.retention_ms))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--partitions", "0"], "error: a topic needs at least 1 partition, not 0"),
        (["--retention-ms", "1000"], "error: retention must be -1 (forever) or at least 60000 ms (a minute), not 1000"),
        (
            ["--partitions", "crm-writes=3"],
            "error: --partitions 'crm-writes=3': no topic 'crm-writes' in the topic table",
        ),
        (["--retention-ms", "crm_writes=a week"], "error: --retention-ms 'crm_writes=a week': expected a number"),
    ],
)
def test_sizes_a_topic_cannot_have_are_refused_before_reaching_kafka(option: list[str], message: str) -> None:
    # Nothing listens on port 1: the refusal comes first, with the usage exit status.
    result = runner.invoke(app, ["topics", "apply", "--bootstrap", "127.0.0.1:1", *option])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message)
