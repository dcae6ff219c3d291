"""Logical Kafka topics.

Code names topics only through :class:`Topic`; physical names come from the topic table
(``deploy/kafka/topics.yaml``, shipped inside the installed package) and the deployment's prefix.
``tests/unit/common/test_topics.py`` keeps this enum and the table in step.
"""

from __future__ import annotations

import enum
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
