"""Contract: the Topic enum and deploy/kafka/topics.yaml describe the same topics."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from services.common.topics import TOPIC_TABLE, Topic, TopicNames, TopicTable, load_topic_table

pytestmark = pytest.mark.unit

# Kafka's own rule for topic names.
LEGAL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
KNOWN_KEYS = {"tenant/object/record", "tenant/link", "tenant", "as source"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded: dict[str, dict[str, Any]] = yaml.safe_load(TOPIC_TABLE.read_text())
    return loaded["topics"]


@pytest.fixture(scope="module")
def table() -> TopicTable:
    return load_topic_table()


def test_enum_and_table_list_exactly_the_same_logical_topics(raw: dict[str, Any]) -> None:
    assert set(raw) == {topic.value for topic in Topic}


def test_physical_names_are_legal_and_unique(table: TopicTable) -> None:
    names = [spec.name for spec in table.topics.values()]
    assert all(LEGAL_NAME.match(name) for name in names), names
    assert len(set(names)) == len(names)
    # Kafka warns that '.' and '_' collide in metric names.
    assert len({name.replace(".", "_") for name in names}) == len(names)


def test_every_dead_letter_reference_exists_and_is_a_terminal_topic(table: TopicTable) -> None:
    for topic, spec in table.topics.items():
        if spec.dlq is None:
            continue
        assert spec.dlq in table.topics, f"{topic} names missing DLQ {spec.dlq}"
        dlq = table.topics[spec.dlq]
        assert dlq.dlq is None, f"{spec.dlq} must not have a DLQ of its own"
        assert dlq.key == "as source"
        assert dlq.name == spec.name + ".dlq"


def test_each_dead_letter_topic_serves_exactly_one_source(table: TopicTable) -> None:
    dlqs = [spec.dlq for spec in table.topics.values() if spec.dlq is not None]
    assert len(set(dlqs)) == len(dlqs)
    orphans = {t for t, spec in table.topics.items() if spec.name.endswith(".dlq")} - set(dlqs)
    assert not orphans, f"dead-letter topics nobody writes to: {orphans}"


def test_compacted_topics_keep_everything(table: TopicTable) -> None:
    for topic, spec in table.topics.items():
        if spec.cleanup_policy == "compact":
            assert spec.retention_ms == -1, f"{topic} is compacted but has a retention limit"


def test_sizes_and_retention_are_sane(table: TopicTable) -> None:
    for topic, spec in table.topics.items():
        assert spec.partitions >= 1, topic
        assert spec.retention_ms == -1 or spec.retention_ms >= 3_600_000, topic
        assert spec.key in KNOWN_KEYS, topic
        assert spec.description.strip(), topic


def test_dead_letter_topics_outlive_their_sources(table: TopicTable) -> None:
    for topic, spec in table.topics.items():
        if spec.dlq is not None and spec.retention_ms != -1:
            assert table.topics[spec.dlq].retention_ms >= spec.retention_ms, topic


def test_keys_match_the_pipeline_stage(table: TopicTable) -> None:
    """Per-record order before mapping, per-link order after it."""
    for topic in (Topic.APP_CHANGES, Topic.CRM_CHANGES, Topic.APP_UPDATES):
        assert table.topics[topic].key == "tenant/object/record"
    for topic in (Topic.MAPPED_CHANGES, Topic.CRM_WRITES, Topic.WRITE_OUTCOMES):
        assert table.topics[topic].key == "tenant/link"


def test_topic_names_apply_the_prefix_and_resolve_dead_letter_topics(table: TopicTable) -> None:
    names = TopicNames(table, prefix="t1.")
    assert names(Topic.CRM_CHANGES) == "t1.duplex.crm-changes.v1"
    assert names.dlq_of(Topic.CRM_CHANGES) is Topic.CRM_CHANGES_DLQ
    with pytest.raises(LookupError, match="no dead-letter topic"):
        names.dlq_of(Topic.TENANTS)
