"""A deployment's partition counts and retention over the topic table (``duplex topics apply``, the chart)."""

from __future__ import annotations

import pytest

from services.common.topic_admin import new_topics
from services.common.topics import Topic, dead_letter_topics, load_topic_table, sized

TABLE = load_topic_table()
DLQS = dead_letter_topics(TABLE)


def test_nothing_given_is_the_table() -> None:
    assert sized(TABLE) == TABLE


def test_partitions_apply_to_every_topic_but_the_dead_letter_topics() -> None:
    table = sized(TABLE, partitions=24)
    assert {
        Topic(f"{t}_dlq") for t in ("app_changes", "crm_changes", "mapped_changes", "crm_writes", "write_outcomes")
    } == DLQS
    for topic, spec in table.topics.items():
        assert spec.partitions == (TABLE.topics[topic].partitions if topic in DLQS else 24), topic


def test_retention_applies_to_every_deleting_topic_but_the_dead_letter_topics() -> None:
    table = sized(TABLE, retention_ms=86_400_000)
    assert table.topics[Topic.TENANTS].retention_ms == -1  # compacted: the latest per key, forever
    assert table.topics[Topic.CRM_WRITES_DLQ].retention_ms == TABLE.topics[Topic.CRM_WRITES_DLQ].retention_ms
    assert table.topics[Topic.CRM_WRITES].retention_ms == 86_400_000
    assert table.topics[Topic.APP_UPDATES].retention_ms == 86_400_000


def test_a_topics_own_values_win() -> None:
    table = sized(
        TABLE,
        partitions=6,
        retention_ms=-1,
        topic_partitions={Topic.CRM_WRITES: 24, Topic.CRM_WRITES_DLQ: 1},
        topic_retention_ms={Topic.CRM_WRITES: 3_600_000},
    )
    assert table.topics[Topic.CRM_WRITES].partitions == 24
    assert table.topics[Topic.CRM_WRITES_DLQ].partitions == 1
    assert table.topics[Topic.MAPPED_CHANGES].partitions == 6
    assert table.topics[Topic.CRM_WRITES].retention_ms == 3_600_000
    assert table.topics[Topic.MAPPED_CHANGES].retention_ms == -1
    (created,) = [t for t in new_topics(table, "p.") if t.name == "p.duplex.crm-writes.v1"]
    assert created.num_partitions == 24
    assert created.topic_configs["retention.ms"] == "3600000"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partitions": 0}, "at least 1 partition, not 0"),
        ({"topic_partitions": {Topic.CRM_WRITES: -2}}, "at least 1 partition, not -2"),
        ({"retention_ms": 0}, "at least 60000 ms (a minute), not 0"),
        ({"retention_ms": -2}, "-1 (forever) or at least 60000 ms"),
        ({"topic_retention_ms": {Topic.CRM_WRITES: 59_999}}, "not 59999"),
    ],
)
def test_counts_and_retentions_a_topic_cannot_have_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sized(TABLE, **options)  # type: ignore[arg-type]
