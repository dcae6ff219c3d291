"""Settings of `duplex serve`: environment, flags and the OpenID Connect all-or-nothing rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.admin.oidc import OidcConfig
from services.admin.settings import AdminSettings, load_settings

pytestmark = pytest.mark.unit


def test_api_settings_from_the_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://u:p@db/duplex")
    monkeypatch.setenv("DUPLEX_ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("DUPLEX_ADMIN_PORT", "9000")
    monkeypatch.setenv("DUPLEX_ADMIN_MAX_BODY_BYTES", "2048")
    from_env = load_settings()
    assert (from_env.host, from_env.port, from_env.max_body_bytes) == ("0.0.0.0", 9000, 2048)
    assert from_env.postgres().dsn.get_secret_value() == "postgresql://u:p@db/duplex"
    assert from_env.oidc() is None
    flags = load_settings("postgresql://u:p@other/duplex", host="127.0.0.1", port=0)
    assert (flags.host, flags.port) == ("127.0.0.1", 0)
    assert flags.postgres().dsn.get_secret_value() == "postgresql://u:p@other/duplex"


def test_postgres_settings_need_a_dsn() -> None:
    with pytest.raises(ValueError, match="no database configured"):
        AdminSettings(postgres_dsn=None).postgres()


def test_oidc_is_all_or_nothing() -> None:
    with pytest.raises(ValidationError, match="OIDC needs all of DUPLEX_ADMIN_OIDC_ISSUER"):
        AdminSettings(oidc_issuer="https://idp", oidc_audience="duplex")
    settings = AdminSettings(
        oidc_issuer="https://idp", oidc_audience="duplex", oidc_jwks_url="https://idp/jwks", oidc_tenants_claim="t"
    )
    assert settings.oidc() == OidcConfig(
        issuer="https://idp", audience="duplex", jwks_url="https://idp/jwks", roles_claim="roles", tenants_claim="t"
    )
