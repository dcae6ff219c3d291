"""Duplex's Kafka clients against a secured listener (TLS, with SASL PLAIN, SCRAM-SHA-256/512 or
OAUTHBEARER) of the real broker: topics are provisioned, a service publishes and consumes in its
prefixed consumer group, the admin API reads dead letters; and a client with a wrong password, a
token the broker does not trust, without TLS, or not trusting the broker's CA is refused rather
than let through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from duplex.change.v1 import record_changed_pb2
from faststream.params import NoCast
from pydantic import SecretStr, ValidationError

from services.admin.dead_letters import DeadLetterTopics
from services.common.codec import record_key
from services.common.kafka import AFTER_EFFECTS, make_kafka
from services.common.kafka_security import OAuthTokens, TokenError, client_options
from services.common.settings import KafkaSettings
from services.common.topic_admin import delete_topics, ensure_topics
from services.common.topics import Topic, TopicNames, load_topic_table
from tests.fixtures.oauth import SigningKey, TokenEndpoint, serving
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


def oauth(kafka: SecuredKafka, prefix: str, endpoint: TokenEndpoint, **overrides: Any) -> KafkaSettings:
    fields: dict[str, Any] = {
        "sasl_mechanism": "OAUTHBEARER",
        "sasl_username": None,
        "sasl_password": None,
        "sasl_oauth_token_url": endpoint.url,
        "sasl_oauth_client_id": endpoint.client_id,
        "sasl_oauth_client_secret": SecretStr(endpoint.client_secret),
        "sasl_oauth_scope": "kafka",
    }
    return secured(kafka, prefix, **(fields | overrides))


def token_endpoint(kafka: SecuredKafka, **fields: Any) -> TokenEndpoint:
    trusted: dict[str, Any] = {"key": kafka.oauth_key, "issuer": kafka.oauth_issuer, "audience": kafka.oauth_audience}
    return TokenEndpoint(**(trusted | fields))


async def _brokers_seen(settings: KafkaSettings) -> int:
    """The brokers a client learns of; none when the cluster refuses it (aiokafka's OAUTHBEARER
    start does not fail on a refused token: the cluster's metadata never comes)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    try:
        async with asyncio.timeout(20):
            await producer.start()
            return len((await producer.client.fetch_all_metadata()).brokers())
    except (KafkaError, TimeoutError):
        return 0
    finally:
        await producer.stop()


async def _groups(settings: KafkaSettings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        return sorted(group for group, _ in await admin.list_consumer_groups())
    finally:
        await admin.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])
async def test_every_client_works_through_the_secured_listener(secured_kafka: SecuredKafka, mechanism: str) -> None:
    prefix = f"secured-{mechanism.lower()}."
    if mechanism != "OAUTHBEARER":
        await _every_client_works(secured(secured_kafka, prefix, sasl_mechanism=mechanism))
        return
    with serving(token_endpoint(secured_kafka)) as endpoint:
        settings = oauth(secured_kafka, prefix, endpoint)
        assert await _brokers_seen(settings) == 1
        await _every_client_works(settings)
    assert endpoint.issued >= 1


async def _every_client_works(settings: KafkaSettings) -> None:
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
        assert f"{settings.topic_prefix}mapping" in await _groups(settings)

        letters = await DeadLetterTopics(settings, names).read("acme", [Topic.CRM_CHANGES])
        assert [letter.key for letter in letters] == [key]
    finally:
        await delete_topics(settings.bootstrap_servers, [names(t) for t in names.table.topics], options=options)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sasl_password": SecretStr("not the password")},
        {"sasl_mechanism": "SCRAM-SHA-256", "sasl_password": SecretStr("not the password")},
        {"security_protocol": "SASL_PLAINTEXT", "ssl_ca_file": None},  # no TLS to a TLS listener
        {"ssl_ca_file": None},  # the broker's CA is not one the system trusts
    ],
    ids=["wrong password", "wrong SCRAM password", "no TLS", "untrusted broker"],
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
    "endpoint_fields",
    [
        {"key": None},  # signed by a key the broker's JWKS does not hold
        {"audience": "not-kafka"},
        {"issuer": "https://someone-else.test"},
        {"lifetime": -60},  # expired when it is used
    ],
    ids=["untrusted signature", "wrong audience", "wrong issuer", "expired"],
)
async def test_a_token_the_broker_does_not_trust_gets_nothing(
    secured_kafka: SecuredKafka, endpoint_fields: dict[str, Any], tmp_path: Path
) -> None:
    if "key" in endpoint_fields:
        endpoint_fields = {"key": SigningKey.generate(tmp_path)}
    with serving(token_endpoint(secured_kafka, **endpoint_fields)) as endpoint:
        settings = oauth(secured_kafka, "secured-untrusted.", endpoint)
        assert await _brokers_seen(settings) == 0
        assert endpoint.issued >= 1


async def test_a_token_file_a_platform_keeps_fresh_signs_in(secured_kafka: SecuredKafka, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token_endpoint(secured_kafka).issue() + "\n")
    settings = secured(
        secured_kafka,
        "secured-token-file.",
        sasl_mechanism="OAUTHBEARER",
        sasl_username=None,
        sasl_password=None,
        sasl_oauth_token_file=str(token_file),
    )
    groups = await _groups(settings)
    assert isinstance(groups, list)


async def test_the_token_endpoint_refusing_is_a_clear_error_without_the_secret(secured_kafka: SecuredKafka) -> None:
    with serving(token_endpoint(secured_kafka)) as endpoint:
        tokens = OAuthTokens(oauth(secured_kafka, "x.", endpoint, sasl_oauth_client_secret=SecretStr("wrong-secret")))
        with pytest.raises(TokenError) as refused:
            await tokens.token()
    assert str(refused.value) == "Kafka's OAuth token endpoint answered 401 invalid_client"
    assert "wrong-secret" not in repr(refused.value)


async def test_a_token_is_reused_until_most_of_its_life_has_passed(secured_kafka: SecuredKafka) -> None:
    with serving(token_endpoint(secured_kafka, lifetime=2)) as endpoint:
        tokens = OAuthTokens(oauth(secured_kafka, "x.", endpoint))
        first = await tokens.token()
        assert await tokens.token() == first
        assert endpoint.issued == 1
        # Renewed after 80 % of its 2 s: a connection made later never presents an expired one.
        async with asyncio.timeout(10):
            while endpoint.issued < 2:
                await tokens.token()
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        ({"security_protocol": "SSL", "ssl_cert_file": "client.pem"}, "go together"),
        ({"ssl_ca_file": "ca.pem"}, "need KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL"),
        ({"security_protocol": "TLS"}, "Input should be"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "needs either KAFKA_SASL_OAUTH_TOKEN_URL"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_url": "https://idp/token",
                "sasl_oauth_client_id": "duplex",
            },
            "needs either",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_file": "/var/run/token",
                "sasl_oauth_token_url": "https://idp/token",
                "sasl_oauth_client_id": "duplex",
                "sasl_oauth_client_secret": "s",
            },
            "needs either",
        ),
    ],
)
def test_incomplete_security_settings_fail_at_start(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings.model_validate({"bootstrap_servers": "127.0.0.1:9092"} | fields)
