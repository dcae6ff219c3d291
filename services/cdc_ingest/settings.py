"""cdc-ingest's settings: CDC_INGEST_* plus the shared KAFKA_*, POSTGRES_*, TELEMETRY_* ones."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import GovernorLinkSettings, KafkaServiceSettings
from services.common.tenant_config.policy import PolicySettings
from services.common.vault import VaultSettings, vault_settings


def _default_replica_id() -> str:
    # Unique per process even when several share a host (tests, one pod restarting in place).
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class CdcIngestSettings(KafkaServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CDC_INGEST_")

    service_name: str = "cdc-ingest"
    replica_id: str = Field(default_factory=_default_replica_id)

    # The rate-limit-governor (host:port, in-cluster plaintext gRPC): every Salesforce REST call
    # cdc-ingest makes is granted by it first and its usage reported to it, as the writer's are.
    governor_target: str = "127.0.0.1:50051"
    # GOVERNOR_LINK_*: how calls to the governor are secured (TLS, the shared token).
    governor_link: GovernorLinkSettings = Field(default_factory=lambda: GovernorLinkSettings())
    # How long one call may wait for the governor's permission before it fails (BudgetUnavailable)
    # and the work is retried later: the stream reconnects, a poll or backfill resumes from its cursor.
    governor_max_wait_seconds: float = Field(default=30.0, gt=0)

    # Pub/Sub API endpoint (host:port, TLS). One endpoint serves every org.
    pubsub_target: str = "api.pubsub.salesforce.com:7443"
    # CA bundle for Pub/Sub and REST; None trusts the system store.
    ca_file: str | None = None
    # The channel every tenant subscribes to: all CDC-selected objects of the org.
    channel: str = "/data/ChangeEvents"
    # Events asked for at a time; Salesforce caps what is outstanding per Subscribe at 100.
    fetch_batch: int = Field(default=100, ge=1, le=100)
    # No response at all (not even a keepalive, sent within 270 s) for this long: reconnect.
    stream_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    reconnect_base_delay_seconds: float = Field(default=0.5, ge=0)
    reconnect_max_delay_seconds: float = Field(default=60.0, gt=0)

    # Objects read by polling instead of CDC, as "tenant/Object" or "Object" (every tenant);
    # a tenant with spec.sync.cdc = false polls all its objects.
    polled_objects: tuple[str, ...] = ()
    poll_page_size: int = Field(default=2000, ge=1, le=2000)
    poll_overlap_seconds: float = Field(default=300.0, ge=0)

    # Above this many records (SELECT COUNT()), a backfill uses a Bulk 2.0 query job.
    bulk_threshold: int = Field(default=2000, ge=0)
    bulk_page_size: int = Field(default=10_000, ge=1)
    bulk_poll_seconds: float = Field(default=1.0, gt=0)
    # Run a full backfill for a tenant that has no checkpoint yet (its first connection).
    backfill_on_first_connect: bool = True
    # A reconcile leaves out records edited this recently: their change events may still be on the
    # way, and the next reconcile compares them.
    reconcile_settle_seconds: float = Field(default=60.0, ge=0)

    lease_ttl_seconds: float = Field(default=30.0, gt=0)
    lease_renew_seconds: float = Field(default=10.0, gt=0)
    # Only these tenants (empty: every tenant with a configuration).
    tenants: tuple[str, ...] = ()

    # VAULT_KEYS: the tokens of tenants connected through the admin API (auth mode oauth_pkce), and
    # every tenant's access token, shared between replicas. Unset: such tenants fail alone, with a
    # clear error; every other tenant works, each process signing in for itself.
    vault: VaultSettings | None = Field(default_factory=vault_settings)
    # Which secret variables tenants' documents may name and which hosts may be sent their
    # credentials and tokens (DUPLEX_SECRET_ENV_PREFIX, DUPLEX_SALESFORCE_HOSTS, DUPLEX_DEVELOPMENT).
    policy: PolicySettings = Field(default_factory=PolicySettings)

    @property
    def poll_overlap(self) -> timedelta:
        return timedelta(seconds=self.poll_overlap_seconds)

    @property
    def reconcile_settle(self) -> timedelta:
        return timedelta(seconds=self.reconcile_settle_seconds)

    def polls(self, tenant_id: str, entity: str) -> bool:
        return entity in self.polled_objects or f"{tenant_id}/{entity}" in self.polled_objects
