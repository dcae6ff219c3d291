"""Settings of the admin control plane: the ``duplex`` CLI and the HTTP API it serves (``duplex serve``)."""

from __future__ import annotations

import getpass
import socket
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.admin.oidc import OidcConfig
from services.common.settings import KafkaSettings, PostgresSettings, ServiceSettings, kafka_settings
from services.common.tenant_config.policy import PolicySettings
from services.common.vault import VaultSettings, vault_settings

# Addresses a server listens on but a browser cannot go to.
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        # Containers often run under a uid with no passwd entry.
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AdminSettings(ServiceSettings):
    """Loaded once by the CLI; ``--dsn`` overrides ``POSTGRES_DSN``. The API's are DUPLEX_ADMIN_* variables."""

    # The first fields below are read under their aliases; the prefix names the API's own
    # (DUPLEX_ADMIN_PORT, ...) and keeps the inherited service_name and telemetry from picking up
    # unrelated SERVICE_NAME or TELEMETRY variables.
    # A refused setting must not echo the others (the database password, the OIDC client secret).
    model_config = SettingsConfigDict(env_prefix="DUPLEX_ADMIN_", hide_input_in_errors=True)

    service_name: str = "admin"

    postgres_dsn: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("postgres_dsn", "POSTGRES_DSN"),
        description="postgresql://user:password@host:port/db",
    )
    # Recorded as applied_by and in the audit log.
    actor: str = Field(
        default_factory=_default_actor,
        min_length=1,
        validation_alias=AliasChoices("actor", "DUPLEX_ACTOR"),
    )
    connect_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        validation_alias=AliasChoices("connect_timeout_seconds", "DUPLEX_ADMIN_CONNECT_TIMEOUT_SECONDS"),
    )

    # The HTTP API (``duplex serve``).
    host: str = "127.0.0.1"
    # 0: any free port (logged at start).
    port: int = Field(default=8080, ge=0, le=65535)
    # Larger request bodies are refused with 413 before they are read.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    pool_max_size: int = Field(default=10, gt=0)
    # OIDC bearer JWTs, accepted besides API tokens when issuer, audience and JWKS URL are all set.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    # The claim holding the Duplex role(s) (admin, operator, viewer; the highest counts).
    oidc_roles_claim: str = "roles"
    # The claim holding the tenants the user may see: a list of names, or "*" for all.
    oidc_tenants_claim: str = "tenants"
    # A token signed with a key id not in the cached JWKS re-reads it at most this often (rotation).
    oidc_jwks_refetch_seconds: float = Field(default=30.0, ge=0)
    # The console's single sign-on (authorization code flow with PKCE) with the same provider: the
    # client registered for the console, its secret (none: a public client) and the scopes asked for.
    # The console signs users in with the access token, which the API verifies as above.
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid"

    # The connect flow. The API's address as users' browsers reach it (behind a proxy or an ingress:
    # its public https URL); Salesforce sends them back to <public_url>/api/v1/oauth/callback, the
    # callback URL to register in the connected app. Unset: http://<host>:<port> as served.
    public_url: str | None = None
    # CA bundle for Salesforce's endpoints (the emulator's own CA in development); None: system CAs.
    salesforce_ca_file: str | None = None
    salesforce_timeout_seconds: float = Field(default=30.0, gt=0)
    # VAULT_KEYS: where tenants' tokens are kept. Without it the connect flow answers 503.
    vault: VaultSettings | None = Field(default_factory=vault_settings)
    # Which secret variables and Salesforce hosts a tenant document may name (DUPLEX_SECRET_ENV_PREFIX,
    # DUPLEX_SALESFORCE_HOSTS, DUPLEX_DEVELOPMENT): the same variables the services read, so the API
    # refuses exactly the documents the services would refuse to act on.
    policy: PolicySettings = Field(default_factory=PolicySettings)
    # KAFKA_*: where dead letters are read and replayed. Without it those routes answer 503.
    kafka: KafkaSettings | None = Field(default_factory=kafka_settings)
    # The broker-side consumer lag loop (services/admin/consumer_lag.py): with KAFKA_* set, `duplex serve`
    # exports duplex_consumer_group_lag_messages on its /metrics every consumer_lag_interval_seconds.
    consumer_lag_enabled: bool = True
    consumer_lag_interval_seconds: float = Field(default=15.0, gt=0, le=3600)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            msg = "must be an http(s) URL such as https://duplex.example.com (a path prefix is allowed)"
            raise ValueError(msg)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _oidc_complete(self) -> Self:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url]
        if any(given) and not all(given):
            msg = (
                "OIDC needs all of DUPLEX_ADMIN_OIDC_ISSUER, DUPLEX_ADMIN_OIDC_AUDIENCE and DUPLEX_ADMIN_OIDC_JWKS_URL"
            )
            raise ValueError(msg)
        if self.oidc_client_secret is not None and not self.oidc_client_id:
            msg = "DUPLEX_ADMIN_OIDC_CLIENT_SECRET is set without DUPLEX_ADMIN_OIDC_CLIENT_ID"
            raise ValueError(msg)
        if self.oidc_client_id is not None:
            if not self.oidc_client_id.strip():
                msg = "DUPLEX_ADMIN_OIDC_CLIENT_ID is empty: unset it, or name the client registered for the console"
                raise ValueError(msg)
            if not all(given):
                # The console signs users in with the access token: only a verifying API can accept it.
                msg = (
                    "single sign-on (DUPLEX_ADMIN_OIDC_CLIENT_ID) needs the API to verify OIDC tokens: "
                    "set DUPLEX_ADMIN_OIDC_ISSUER, DUPLEX_ADMIN_OIDC_AUDIENCE and DUPLEX_ADMIN_OIDC_JWKS_URL too"
                )
                raise ValueError(msg)
            if "openid" not in self.oidc_scopes.split():
                msg = f"DUPLEX_ADMIN_OIDC_SCOPES must include openid (space-separated), not {self.oidc_scopes!r}"
                raise ValueError(msg)
            if urlsplit(self.oidc_issuer or "").scheme not in ("http", "https"):
                msg = "single sign-on needs DUPLEX_ADMIN_OIDC_ISSUER to be the provider's http(s) URL"
                raise ValueError(msg)
        return self

    def postgres(self) -> PostgresSettings:
        if self.postgres_dsn is None:
            msg = "no database configured: set POSTGRES_DSN or pass --dsn"
            raise ValueError(msg)
        return PostgresSettings(dsn=self.postgres_dsn, pool_min_size=1, pool_max_size=self.pool_max_size)

    def public_base_url(self, port: int) -> str:
        """Where browsers reach the API served on ``port``: ``public_url``, or the address served."""
        if self.public_url is not None:
            return self.public_url
        host = "127.0.0.1" if self.host in _ANY_ADDRESS else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def oidc(self) -> OidcConfig | None:
        if not (self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url):
            return None
        return OidcConfig(
            issuer=self.oidc_issuer,
            audience=self.oidc_audience,
            jwks_url=self.oidc_jwks_url,
            roles_claim=self.oidc_roles_claim,
            tenants_claim=self.oidc_tenants_claim,
            refetch_seconds=self.oidc_jwks_refetch_seconds,
        )


def load_settings(dsn: str | None = None, **overrides: Any) -> AdminSettings:
    """The settings from the environment; command-line flags (``None`` when not given) win."""
    given = {name: value for name, value in overrides.items() if value is not None}
    if dsn:
        given["postgres_dsn"] = SecretStr(dsn)
    return AdminSettings(**given)
