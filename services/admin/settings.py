"""Settings of the admin control plane (CLI now, HTTP API later)."""

from __future__ import annotations

import getpass
import socket

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        # Containers often run under a uid with no passwd entry.
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AdminSettings(ServiceSettings):
    """Loaded once by the CLI; ``--dsn`` overrides ``POSTGRES_DSN``."""

    # The fields below are read under their aliases; the prefix keeps the inherited service_name and
    # telemetry from picking up unrelated SERVICE_NAME or TELEMETRY variables.
    model_config = SettingsConfigDict(env_prefix="DUPLEX_ADMIN_")

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


def load_settings(dsn: str | None = None) -> AdminSettings:
    if dsn:
        return AdminSettings(postgres_dsn=SecretStr(dsn))
    return AdminSettings()
