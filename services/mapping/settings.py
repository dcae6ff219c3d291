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
    # An origin_commit_time further than this in the future is clamped to now (services.mapping.intake):
    # producers' clocks drift a little, but a far-future time would win newest-wins conflicts for ever.
    max_future_skew_seconds: float = Field(default=300.0, ge=0)
    # A tenant's object pair is quarantined when more than this share of its last
    # quarantine_window changes (at least quarantine_min_samples of them) were rejected, for at
    # most quarantine_cool_off_seconds or until its tenant's next configuration version
    # (services.mapping.quarantine).
    quarantine_invalid_ratio: float = Field(default=0.5, ge=0, le=1)
    quarantine_window: int = Field(default=50, ge=1)
    quarantine_min_samples: int = Field(default=20, ge=1)
    quarantine_cool_off_seconds: float = Field(default=900.0, ge=0)
