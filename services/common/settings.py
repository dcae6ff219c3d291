"""Typed, frozen settings shared by every service.

Each service subclasses :class:`ServiceSettings`, adds its own fields under its own env prefix and
loads it once in ``__main__``; everything downstream receives the typed object. No module reads
``os.environ`` directly.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach Kafka and how topics are named physically."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(description="Comma-separated host:port list.")
    # Prepended to every physical topic name, so several deployments can share a cluster.
    topic_prefix: str = ""
    client_id: str = "duplex"


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
    """Settings every service has. Missing required values fail at start-up, naming the variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_nested_delimiter="__")

    service_name: str
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    postgres: PostgresSettings = Field(default_factory=lambda: PostgresSettings())
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
