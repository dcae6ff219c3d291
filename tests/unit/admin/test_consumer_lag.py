"""The broker-side lag loop's arithmetic and its table of groups, against the services' own code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from services.admin.consumer_lag import CONSUMER_GROUPS, ConsumerLagMonitor, GroupLag, group_name, topic_lag
from services.common.kafka import make_kafka
from services.common.metrics import Metrics
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames, load_topic_table

SERVICES = Path(__file__).resolve().parents[3] / "services"
# `kafka.subscriber(Topic.X` / `kafka.batch_subscriber(\n Topic.X`, however the call is wrapped.
SUBSCRIPTION = re.compile(r"\b(?:batch_)?subscriber\(\s*Topic\.([A-Z_]+)")

T = "duplex.crm-writes.v1"
P0, P1, P2 = (TopicPartition(T, n) for n in range(3))


def test_lag_is_the_distance_from_the_committed_offset_to_the_end_summed_over_partitions() -> None:
    ends = {P0: 10, P1: 7, P2: 0}
    beginnings = {P0: 0, P1: 0, P2: 0}
    assert topic_lag([P0, P1, P2], {P0: 4, P1: 7}, beginnings, ends) == 6


def test_a_partition_never_committed_counts_from_its_first_retained_record() -> None:
    # A new group starts at the earliest record (auto_offset_reset=earliest).
    assert topic_lag([P0, P1], {P0: 10}, {P0: 0, P1: 3}, {P0: 10, P1: 8}) == 5


def test_a_committed_offset_that_retention_passed_counts_from_the_first_retained_record() -> None:
    assert topic_lag([P0], {P0: 2}, {P0: 6}, {P0: 9}) == 3


def test_lag_is_never_negative() -> None:
    # The end offsets are read after the committed ones: a commit can overtake them.
    assert topic_lag([P0], {P0: 12}, {P0: 0}, {P0: 10}) == 0


@pytest.mark.parametrize("prefix", ["", "staging."])
@pytest.mark.parametrize("service", sorted(CONSUMER_GROUPS))
def test_groups_are_named_as_the_services_name_them(prefix: str, service: str) -> None:
    names = TopicNames(load_topic_table(), prefix=prefix)
    kafka = make_kafka(
        KafkaSettings(bootstrap_servers="127.0.0.1:9", topic_prefix=prefix), service_name=service, topic_names=names
    )
    assert group_name(prefix, service) == kafka.group


@pytest.mark.parametrize("service", ["mapping", "conflict-resolver", "writer", "cdc-ingest"])
def test_the_table_lists_each_services_subscriptions(service: str) -> None:
    source = "\n".join(path.read_text() for path in (SERVICES / service.replace("-", "_")).rglob("*.py"))
    subscribed = {Topic[name].value for name in SUBSCRIPTION.findall(source)}
    assert subscribed == set(CONSUMER_GROUPS.get(service, ()))


def test_the_gauge_shows_the_last_round_and_drops_groups_no_longer_measured() -> None:
    registry = CollectorRegistry()
    names = TopicNames(load_topic_table(), prefix="")
    lag = ConsumerLagMonitor(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"), names, Metrics(registry).consumer_group_lag
    )
    lag.show([GroupLag("writer", T, 4), GroupLag("mapping", "duplex.app-changes.v1", 0)])
    lag.show([GroupLag("writer", T, 9)])
    shown = {
        (s.labels["group"], s.labels["topic"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "duplex_consumer_group_lag_messages"
    }
    assert shown == {("writer", T): 9}
