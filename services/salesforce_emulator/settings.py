"""The emulator's settings: loaded once at start-up, frozen, passed down as one typed object."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.salesforce_emulator.versions import LATEST_VERSION, OLDEST_VERSION, SUPPORTED_VERSIONS

IN_MEMORY = ":memory:"


class EmulatorSettings(ServiceSettings):
    """Everything ``python -m services.salesforce_emulator`` can be told, from ``SF_EMULATOR_*`` or flags."""

    model_config = SettingsConfigDict(env_prefix="SF_EMULATOR_")

    service_name: str = "salesforce-emulator"

    # Loopback by default: the emulator has no real authentication story for other machines.
    host: str = "127.0.0.1"
    https_port: int = Field(default=8443, ge=0, le=65535)
    grpc_port: int = Field(default=7443, ge=0, le=65535)
    # One SQLite file holds records, events, orgs and tokens, so a restart keeps sessions alive;
    # ":memory:" forgets everything and re-seeds deterministically on every start.
    data_file: str = "var/emulator/emulator.db"
    seed_file: Path | None = Path("deploy/emulator/seed.yaml")
    tls: bool = True
    # Where the local CA and server certificate live; defaults to a "tls" folder next to the data file.
    tls_dir: Path | None = None
    access_token_ttl_seconds: int = Field(default=7200, gt=0)
    authorization_code_ttl_seconds: int = Field(default=900, gt=0)
    event_retention_hours: float = Field(default=72.0, gt=0)
    # Guards /__emulator__/*. A random one is made per start when none is configured, and is handed
    # out only on the start-up JSON line.
    admin_token: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_urlsafe(32)))
    # The version named in the start-up line: the latest Salesforce release the emulator serves.
    default_api_version: str = LATEST_VERSION

    @field_validator("default_api_version")
    @classmethod
    def _served_version(cls, value: str) -> str:
        if value not in SUPPORTED_VERSIONS:
            msg = f"must be an API version the emulator serves ({OLDEST_VERSION} to {LATEST_VERSION}), not {value!r}"
            raise ValueError(msg)
        return value

    @property
    def in_memory(self) -> bool:
        return self.data_file == IN_MEMORY

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def resolved_tls_dir(self) -> Path:
        """The certificate folder: configured, or beside the data file, or ``var/emulator/tls``."""
        if self.tls_dir is not None:
            return self.tls_dir
        if self.in_memory:
            return Path("var/emulator/tls")
        return Path(self.data_file).parent / "tls"
