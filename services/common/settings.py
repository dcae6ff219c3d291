"""Typed, frozen settings shared by every service.

Every service's settings class subclasses :class:`ServiceSettings` (or one of the two below that
add PostgreSQL and Kafka), adds its own fields under its own env prefix and is loaded once by
:func:`services.common.service.main`; everything downstream receives the typed object. Nothing
outside this module reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach Kafka and how topics are named physically."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(description="Comma-separated host:port list.")
    # Prepended to every physical topic name, so several deployments can share a cluster.
    topic_prefix: str = ""
    client_id: str = "duplex"
    # The largest record the producer sends (aiokafka's max_request_size), 1 MiB as Kafka's default
    # message.max.bytes; it must not exceed any topic's max.message.bytes, or the broker refuses
    # records the producer let through.
    max_request_size: int = Field(default=1024 * 1024, gt=0)


def kafka_settings() -> KafkaSettings | None:
    """``KAFKA_*`` from the environment, or None when ``KAFKA_BOOTSTRAP_SERVERS`` is not set (for
    the admin API, which needs Kafka only for dead letters)."""
    return KafkaSettings() if environment().get("KAFKA_BOOTSTRAP_SERVERS") else None


class PostgresSettings(BaseSettings):
    """How to reach PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="POSTGRES_", frozen=True, extra="ignore")

    dsn: SecretStr = Field(description="postgresql://user:password@host:port/db")
    pool_min_size: int = 1
    pool_max_size: int = 10


class TelemetrySettings(BaseSettings):
    """Logging, metrics and tracing."""

    model_config = SettingsConfigDict(env_prefix="TELEMETRY_", frozen=True, extra="ignore")

    log_level: str = "INFO"
    log_json: bool = True
    # 0 disables the Prometheus endpoint (tests run many services on one machine).
    metrics_port: int = 0
    otlp_endpoint: str | None = None


class ServiceSettings(BaseSettings):
    """Settings every service has. Missing required values fail at start-up, naming the variable.

    Subclasses set only their ``env_prefix``; pydantic merges the rest of this configuration in.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_nested_delimiter="__")

    service_name: str
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)


class PostgresServiceSettings(ServiceSettings):
    """A service that keeps state in PostgreSQL."""

    postgres: PostgresSettings = Field(default_factory=lambda: PostgresSettings())


class KafkaServiceSettings(PostgresServiceSettings):
    """A service that consumes or produces Kafka events (and keeps state in PostgreSQL)."""

    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())


def environment() -> Mapping[str, str]:
    """The process environment, read once at start-up for what is not a fixed setting.

    Tenants' Salesforce secrets are named by each tenant's configuration (``secretRef.env``), so
    they cannot be fields; Kubernetes Secrets arrive as variables too.
    """
    return dict(os.environ)
