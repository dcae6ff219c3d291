"""The writer's settings, loaded once at start-up (WRITER_*, plus the shared KAFKA_*, POSTGRES_*, TELEMETRY_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import GovernorLinkSettings, KafkaServiceSettings
from services.common.tenant_config.policy import PolicySettings
from services.common.vault import VaultSettings, vault_settings


class WriterSettings(KafkaServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WRITER_")

    service_name: str = "writer"
    governor_target: str = "127.0.0.1:50051"
    # GOVERNOR_LINK_*: how calls to the governor are secured (TLS, the shared token).
    governor_link: GovernorLinkSettings = Field(default_factory=lambda: GovernorLinkSettings())
    # How long one call may wait for the governor's permission before the tenant is paused and
    # its batch rescheduled for the governor's not-before time.
    governor_max_wait_seconds: float = Field(default=30.0, gt=0)
    # A partial batch is sent once no write has joined it for this long (a steady stream fills
    # batches to 200 records) ...
    batch_window_ms: int = Field(default=200, ge=0)
    # ... but never later than this after its oldest write.
    batch_max_wait_ms: int = Field(default=2000, ge=0)
    # Above this many pending records of one kind, ingestion "automatic" uses a Bulk API 2.0 job.
    bulk_threshold: int = Field(default=2000, gt=0)
    bulk_max_records: int = Field(default=10_000, gt=0)
    # Batches in flight at once per tenant (1: serial, which minimises lock contention).
    tenant_concurrency: int = Field(default=2, gt=0)
    # Unsettled writes one tenant may hold in memory; its later commands are parked in PostgreSQL
    # (and loaded again in order once it is down to half), so the consumer never waits for it.
    max_pending_per_tenant: int = Field(default=50_000, gt=0)
    # A command unsettled this long (a throttled or slow tenant) is parked in PostgreSQL too, so it
    # no longer holds its partition's committed offset, and with it other tenants' settled writes.
    park_after_seconds: float = Field(default=30.0, ge=0)
    # Record-level retryable failures (locks, rollbacks) before the record is rejected to the DLQ.
    max_record_attempts: int = Field(default=10, gt=0)
    commit_interval_ms: int = Field(default=500, gt=0)
    # How stale a tenant's configuration may be before its version is checked again.
    config_ttl_seconds: float = Field(default=60.0, ge=0)
    # CA bundle for the Salesforce endpoints (the emulator's own CA in development); None: system CAs.
    salesforce_ca_file: str | None = None
    salesforce_timeout_seconds: float = Field(default=120.0, gt=0)
    # On shutdown, how long to wait for held writes to settle before leaving them to the replay.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # VAULT_KEYS: the tokens of tenants connected through the admin API (auth mode oauth_pkce), and
    # every tenant's access token, shared between replicas. Unset: such tenants fail alone, with a
    # clear error; every other tenant works, each process signing in for itself.
    vault: VaultSettings | None = Field(default_factory=vault_settings)
    # Which secret variables tenants' documents may name and which hosts may be sent their
    # credentials and tokens (DUPLEX_SECRET_ENV_PREFIX, DUPLEX_SALESFORCE_HOSTS, DUPLEX_DEVELOPMENT).
    policy: PolicySettings = Field(default_factory=PolicySettings)
