"""Duplex's Kafka clients against a secured listener (SASL/PLAIN over TLS) of the real broker: topics
are provisioned, a service publishes and consumes in its prefixed consumer group, the admin API reads
dead letters; and a client with a wrong password, without TLS, or not trusting the broker's CA is
refused rather than let through."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from duplex.change.v1 import record_changed_pb2
from faststream.params import NoCast
from pydantic import SecretStr, ValidationError

from services.admin.dead_letters import DeadLetterTopics
from services.common.codec import record_key
from services.common.kafka import AFTER_EFFECTS, make_kafka
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.common.topic_admin import delete_topics, ensure_topics
from services.common.topics import Topic, TopicNames, load_topic_table
from tests.fixtures.stack import SecuredKafka

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RecordChanged = record_changed_pb2.RecordChanged


def secured(kafka: SecuredKafka, prefix: str, **overrides: Any) -> KafkaSettings:
    fields: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "topic_prefix": prefix,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_username": kafka.username,
        "sasl_password": SecretStr(kafka.password),
        "ssl_ca_file": kafka.ca_file,
    }
    return KafkaSettings.model_validate(fields | overrides)


async def _groups(settings: KafkaSettings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        return sorted(group for group, _ in await admin.list_consumer_groups())
    finally:
        await admin.close()


async def test_every_client_works_through_the_secured_listener(secured_kafka: SecuredKafka) -> None:
    settings = secured(secured_kafka, "secured-ok.")
    names = TopicNames(load_topic_table(), prefix=settings.topic_prefix)
    options = client_options(settings)
    created = await ensure_topics(settings.bootstrap_servers, names.table, names.prefix, options=options)
    try:
        assert names(Topic.CRM_CHANGES) in created

        received: list[RecordChanged] = []
        kafka = make_kafka(settings, service_name="mapping", topic_names=names)

        @kafka.subscriber(Topic.CRM_CHANGES, message_type=RecordChanged, ack_policy=AFTER_EFFECTS)
        async def on_change(event: NoCast[RecordChanged]) -> None:
            received.append(event)

        sent = RecordChanged(event_id="e-1", tenant_id="acme", object_type="Account", record_id="001")
        key = record_key("acme", "Account", "001")
        await kafka.broker.start()
        try:
            await kafka.sender(Topic.CRM_CHANGES).publish_all([(sent, key)])
            # A dead letter, as a service sets one aside, for the admin API to read.
            await kafka.sender(Topic.CRM_CHANGES_DLQ).publish_all([(sent, key)])
            async with asyncio.timeout(30):
                while not received:  # noqa: ASYNC110 (the handler only appends)
                    await asyncio.sleep(0.1)
        finally:
            await kafka.broker.stop()
        assert received == [sent]
        # The group is prefixed like the topics: two deployments on one cluster never share one.
        assert "secured-ok.mapping" in await _groups(settings)

        letters = await DeadLetterTopics(settings, names).read("acme", [Topic.CRM_CHANGES])
        assert [letter.key for letter in letters] == [key]
    finally:
        await delete_topics(settings.bootstrap_servers, [names(t) for t in names.table.topics], options=options)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sasl_password": SecretStr("not the password")},
        {"security_protocol": "SASL_PLAINTEXT", "ssl_ca_file": None},  # no TLS to a TLS listener
        {"ssl_ca_file": None},  # the broker's CA is not one the system trusts
    ],
    ids=["wrong password", "no TLS", "untrusted broker"],
)
async def test_a_client_that_cannot_prove_itself_or_trust_the_broker_gets_nothing(
    secured_kafka: SecuredKafka, overrides: dict[str, Any]
) -> None:
    settings = secured(secured_kafka, "secured-refused.", **overrides)
    with pytest.raises((KafkaError, OSError, TimeoutError)):
        async with asyncio.timeout(20):
            await ensure_topics(
                settings.bootstrap_servers, load_topic_table(), settings.topic_prefix, options=client_options(settings)
            )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        ({"security_protocol": "SSL", "ssl_cert_file": "client.pem"}, "go together"),
        ({"ssl_ca_file": "ca.pem"}, "need KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"),
        ({"security_protocol": "TLS"}, "Input should be"),
    ],
)
def test_incomplete_security_settings_fail_at_start(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings.model_validate({"bootstrap_servers": "127.0.0.1:9092"} | fields)
