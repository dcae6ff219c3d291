"""Typed, frozen settings shared by every service.

Every service's settings class subclasses :class:`ServiceSettings` (or one of the two below that
add PostgreSQL and Kafka), adds its own fields under its own env prefix and is loaded once by
:func:`services.common.service.main`; everything downstream receives the typed object. Nothing
outside this module reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach Kafka, how to prove who we are, and how topics are named physically.

    ``security_protocol`` is Kafka's own (``SSL`` and ``SASL_SSL`` encrypt; ``SASL_*`` sign in with
    ``sasl_mechanism``: PLAIN and SCRAM with ``sasl_username`` and ``sasl_password``; OAUTHBEARER
    with a token from ``sasl_oauth_token_url`` (the OAuth client-credentials grant, as
    ``sasl_oauth_client_id`` with ``sasl_oauth_client_secret``) or read from
    ``sasl_oauth_token_file``, which a platform keeps fresh). TLS checks the brokers'
    certificates against ``ssl_ca_file`` (PEM; the system's CAs when unset) and their host names;
    ``ssl_cert_file`` and ``ssl_key_file`` add a client certificate (mutual TLS).
    :func:`services.common.kafka.security` turns these into what the clients take.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(description="Comma-separated host:port list.")
    # Prepended to every physical topic name and consumer group, so several deployments can share
    # a cluster (and prefixed ACLs can grant each its own).
    topic_prefix: str = ""
    client_id: str = "duplex"
    # The largest record the producer sends (aiokafka's max_request_size), 1 MiB as Kafka's default
    # message.max.bytes; it must not exceed any topic's max.message.bytes, or the broker refuses
    # records the producer let through.
    max_request_size: int = Field(default=1024 * 1024, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_oauth_token_url: str | None = None
    sasl_oauth_client_id: str | None = None
    sasl_oauth_client_secret: SecretStr | None = None
    sasl_oauth_scope: str | None = None
    sasl_oauth_token_file: str | None = None
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        oauth = self.sasl_mechanism == "OAUTHBEARER"
        if sasl and not oauth and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        granted = bool(self.sasl_oauth_token_url and self.sasl_oauth_client_id and self.sasl_oauth_client_secret)
        if sasl and oauth and granted == bool(self.sasl_oauth_token_file):
            raise ValueError(
                "KAFKA_SASL_MECHANISM=OAUTHBEARER needs either KAFKA_SASL_OAUTH_TOKEN_URL, KAFKA_SASL_OAUTH_CLIENT_ID"
                " and KAFKA_SASL_OAUTH_CLIENT_SECRET, or KAFKA_SASL_OAUTH_TOKEN_FILE"
            )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (mutual TLS)")
        files = self.ssl_ca_file or self.ssl_cert_file
        if files and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                f"KAFKA_SSL_* files need KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL, not {self.security_protocol}"
            )
        return self


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


class GovernorLinkSettings(BaseSettings):
    """How the rate-limit-governor's gRPC is secured. The governor and its clients (cdc-ingest, the
    writer) read the same ``GOVERNOR_LINK_*`` variables, so one Secret configures both ends.

    The governor serves TLS with ``tls_cert_file`` and ``tls_key_file`` (PEM); a client speaks TLS
    when ``tls_ca_file`` names the CA that signed that certificate (and checks the host name). With
    ``token`` set, every client call carries it and the governor refuses calls without it (its
    gRPC health service excepted, for probes).
    """

    model_config = SettingsConfigDict(env_prefix="GOVERNOR_LINK_", frozen=True, extra="ignore")

    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GOVERNOR_LINK_TLS_CERT_FILE and GOVERNOR_LINK_TLS_KEY_FILE go together")
        return self


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
