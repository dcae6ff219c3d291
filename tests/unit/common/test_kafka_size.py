"""The producer's maximum record size is a setting (1 MiB, Kafka's default message.max.bytes) and
reaches the producer, whose own check refuses a larger record before sending it (against a real
broker: tests/integration/cdc_ingest/test_bad_input.py)."""

from __future__ import annotations

import pytest

from services.common.kafka import make_broker
from services.common.settings import KafkaSettings

pytestmark = pytest.mark.unit


def test_the_default_is_one_mebibyte_and_reaches_the_producer() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    assert settings.max_request_size == 1024 * 1024
    assert make_broker(settings, service_name="cdc-ingest")._connection_kwargs["max_request_size"] == 1024 * 1024


def test_the_variable_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("KAFKA_MAX_REQUEST_SIZE", "4096")
    settings = KafkaSettings()
    assert make_broker(settings, service_name="cdc-ingest")._connection_kwargs["max_request_size"] == 4096


def test_a_size_that_is_not_positive_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="max_request_size"):
        KafkaSettings(bootstrap_servers="127.0.0.1:9", max_request_size=0)
