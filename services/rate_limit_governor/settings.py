"""The governor's settings, loaded once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import GovernorLinkSettings, PostgresServiceSettings


class GovernorSettings(PostgresServiceSettings):
    """GOVERNOR_* variables, plus the shared POSTGRES_* and TELEMETRY_* ones."""

    model_config = SettingsConfigDict(env_prefix="GOVERNOR_")

    service_name: str = "rate-limit-governor"
    host: str = "127.0.0.1"
    port: int = 50051
    # Share of each org's allocation Duplex may use; the rest is left to other integrations.
    org_share: float = Field(default=0.9, gt=0, le=1)
    # Fraction of a tenant's budget that backfills may not take from live changes.
    live_reserve: float = Field(default=0.2, ge=0, lt=1)
    # Calls a tenant may spend at once after a quiet period (0: one minute's worth, at least 200).
    burst: int = Field(default=0, ge=0)
    max_long_running: int = Field(default=5, gt=0)
    # How long a tenant's daily cap is cached before re-reading its configuration.
    config_ttl_seconds: float = 30.0
    # GOVERNOR_LINK_*: TLS and the shared token of the gRPC it serves.
    link: GovernorLinkSettings = Field(default_factory=lambda: GovernorLinkSettings())
