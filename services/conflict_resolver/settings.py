"""The conflict-resolver's settings, loaded once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import KafkaSettings, PostgresSettings, TelemetrySettings


class ResolverSettings(BaseSettings):
    """RESOLVER_* variables, plus the shared KAFKA_*, POSTGRES_* and TELEMETRY_* ones."""

    model_config = SettingsConfigDict(env_prefix="RESOLVER_", frozen=True, extra="ignore")

    service_name: str = "conflict-resolver"
    # Mapping versions kept parsed in memory (they never change once applied).
    config_cache_size: int = Field(default=256, gt=0)
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    postgres: PostgresSettings = Field(default_factory=lambda: PostgresSettings())
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
