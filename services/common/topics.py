"""Logical Kafka topics.

Code names topics only through :class:`Topic`; physical names come from the topic table
(``deploy/kafka/topics.yaml``, shipped inside the installed package) and the deployment's prefix.
``tests/unit/common/test_topics.py`` keeps this enum and the table in step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from services.common.package_data import data_path

TOPIC_TABLE = data_path("topics.yaml", "deploy/kafka/topics.yaml")


class Topic(enum.StrEnum):
    """Every topic Duplex uses, by logical name (the key in the topic table)."""

    APP_CHANGES = "app_changes"
    CRM_CHANGES = "crm_changes"
    MAPPED_CHANGES = "mapped_changes"
    CRM_WRITES = "crm_writes"
    WRITE_OUTCOMES = "write_outcomes"
    APP_UPDATES = "app_updates"
    TENANTS = "tenants"
    APP_CHANGES_DLQ = "app_changes_dlq"
    CRM_CHANGES_DLQ = "crm_changes_dlq"
    MAPPED_CHANGES_DLQ = "mapped_changes_dlq"
    CRM_WRITES_DLQ = "crm_writes_dlq"
    WRITE_OUTCOMES_DLQ = "write_outcomes_dlq"


class TopicSpec(BaseModel):
    """One row of the topic table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"]
    dlq: Topic | None


class TopicTable(BaseModel):
    """The whole topic table, as loaded from YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: dict[Topic, TopicSpec]


def load_topic_table(path: Path = TOPIC_TABLE) -> TopicTable:
    """Read and validate the topic table."""
    return TopicTable.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True)
class TopicNames:
    """Resolves logical topics to physical names for one deployment."""

    table: TopicTable
    prefix: str = ""

    def __call__(self, topic: Topic) -> str:
        """The physical name of ``topic``."""
        return self.prefix + self.table.topics[topic].name

    def dlq_of(self, topic: Topic) -> Topic:
        """The dead-letter topic of ``topic``; a topic without one cannot reject input."""
        dlq = self.table.topics[topic].dlq
        if dlq is None:
            msg = f"topic {topic} has no dead-letter topic in the topic table"
            raise LookupError(msg)
        return dlq


# Shorter retention would drop records a consumer that is down for a rolling restart has not read.
MIN_RETENTION_MS = 60_000


def dead_letter_topics(table: TopicTable) -> frozenset[Topic]:
    """The topics that are some topic's dead-letter topic."""
    return frozenset(spec.dlq for spec in table.topics.values() if spec.dlq is not None)


def check_retention_ms(value: int) -> int:
    """``value`` if it is a retention a topic may have (-1: forever); ValueError saying why otherwise."""
    if value != -1 and value < MIN_RETENTION_MS:
        msg = f"retention must be -1 (forever) or at least {MIN_RETENTION_MS} ms (a minute), not {value}"
        raise ValueError(msg)
    return value


def sized(
    table: TopicTable,
    *,
    partitions: int | None = None,
    retention_ms: int | None = None,
    topic_partitions: Mapping[Topic, int] | None = None,
    topic_retention_ms: Mapping[Topic, int] | None = None,
) -> TopicTable:
    """The table with a deployment's partition counts and retention (``duplex topics apply``, the chart).

    ``partitions`` applies to every topic but the dead-letter topics; ``retention_ms`` to every
    topic but those and the compacted ones (whose records are kept, the latest per key); the
    per-topic mappings win over both, for any topic. Raises ValueError on a count below 1 or a
    retention :func:`check_retention_ms` refuses.
    """
    dead_letters = dead_letter_topics(table)
    counts = dict(topic_partitions or {})
    retentions = dict(topic_retention_ms or {})
    for value in (partitions, *counts.values()):
        if value is not None and value < 1:
            msg = f"a topic needs at least 1 partition, not {value}"
            raise ValueError(msg)
    for value in (retention_ms, *retentions.values()):
        if value is not None:
            check_retention_ms(value)
    rows = {}
    for topic, spec in table.topics.items():
        changes: dict[str, int] = {}
        if partitions is not None and topic not in dead_letters:
            changes["partitions"] = partitions
        if retention_ms is not None and topic not in dead_letters and spec.cleanup_policy == "delete":
            changes["retention_ms"] = retention_ms
        if topic in counts:
            changes["partitions"] = counts[topic]
        if topic in retentions:
            changes["retention_ms"] = retentions[topic]
        rows[topic] = spec.model_copy(update=changes)
    return TopicTable(topics=rows)
