"""Settings of the admin control plane (CLI now, HTTP API later)."""

from __future__ import annotations

import getpass
import socket

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        # Containers often run under a uid with no passwd entry.
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AdminSettings(BaseSettings):
    """Loaded once by the CLI; ``--dsn`` overrides ``POSTGRES_DSN``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

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
