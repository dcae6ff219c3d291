"""The mapping service's settings, loaded once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import KafkaServiceSettings


class MappingSettings(KafkaServiceSettings):
    """MAPPING_* variables, plus the shared KAFKA_*, POSTGRES_* and TELEMETRY_* ones."""

    model_config = SettingsConfigDict(env_prefix="MAPPING_")

    service_name: str = "mapping"
    # How often a tenant's current mapping version, and each object's Salesforce describe, is
    # re-checked (one indexed query each); a newly applied version or a new describe is used at
    # most this long after it was written.
    config_check_seconds: float = Field(default=5.0, ge=0)
