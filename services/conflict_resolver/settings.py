"""The conflict-resolver's settings, loaded once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import KafkaServiceSettings


class ResolverSettings(KafkaServiceSettings):
    """RESOLVER_* variables, plus the shared KAFKA_*, POSTGRES_* and TELEMETRY_* ones."""

    model_config = SettingsConfigDict(env_prefix="RESOLVER_")

    service_name: str = "conflict-resolver"
    # Mapping versions kept parsed in memory (they never change once applied).
    config_cache_size: int = Field(default=256, gt=0)
    # How often applied event ids older than the input topics' retention are deleted.
    prune_interval_seconds: float = Field(default=3600.0, gt=0)
    # How often outputs held by a pause that has ended are looked for and released.
    release_interval_seconds: float = Field(default=1.0, gt=0)
    # Days of sync log kept: older days' partitions are dropped (services.common.sync_log_retention).
    sync_log_retention_days: int = Field(default=30, ge=1)
    # How often the sync log's partitions are created ahead and dropped past the retention.
    sync_log_maintenance_interval_seconds: float = Field(default=3600.0, gt=0)
