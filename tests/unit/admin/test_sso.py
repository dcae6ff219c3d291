"""The pure parts of the console's single sign-on: PKCE, the flow's cookie, the discovery document and
the settings that turn it on."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from services.admin.console.sso import (
    FLOW_SECONDS,
    MAX_SHOWN,
    Flow,
    FlowSeal,
    SsoError,
    challenge_of,
    metadata_from,
    new_verifier,
    shown,
    sso_config,
)
from services.admin.settings import AdminSettings
from services.common.vault import VaultSettings

pytestmark = pytest.mark.unit

ISSUER = "https://idp.example.test/realms/duplex"
NOW = 1_800_000_000.0
VAULT = VaultSettings(keys=SecretStr("k1:" + "a2V5LWVuY3J5cHRpb24ta2V5LWZvci10ZXN0cy0zMmI="))
SSO: dict[str, Any] = {
    "oidc_issuer": ISSUER,
    "oidc_audience": "duplex-admin",
    "oidc_jwks_url": f"{ISSUER}/keys",
    "oidc_client_id": "duplex-console",
}


def test_the_s256_challenge_is_rfc_7636s() -> None:
    # RFC 7636, appendix B.
    assert challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_verifier_is_long_random_and_unreserved() -> None:
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert set(verifier) <= set(string.ascii_letters + string.digits + "-._~")


def test_a_flow_is_fresh_each_time() -> None:
    one, two = Flow.begin("/tenants", NOW), Flow.begin("/tenants", NOW)
    assert len({one.state, two.state, one.nonce, two.nonce, one.verifier, two.verifier}) == 6
    assert one.expires == NOW + FLOW_SECONDS == NOW + 600


def test_a_sealed_flow_opens_once_for_its_state() -> None:
    seal = FlowSeal(b"k" * 32)
    flow = Flow.begin("/tenants/acme", NOW)
    cookie = seal.seal(flow)
    assert flow.verifier not in cookie.split(".")[1]

    assert seal.open(cookie, flow.state, NOW + 1) == flow
    with pytest.raises(SsoError, match="already used") as used:
        seal.open(cookie, flow.state, NOW + 2)
    assert used.value.status == 400


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda cookie, flow: None, "not started in this browser"),
        (lambda cookie, flow: "", "not started in this browser"),
        (lambda cookie, flow: cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"), "not one this console made"),
        # The body changed (another page to go to), its signature not.
        (lambda cookie, flow: "e30" + cookie[3:], "not one this console made"),
        (lambda cookie, flow: "no-dot-at-all", "not one this console made"),
        (lambda cookie, flow: FlowSeal(b"x" * 32).seal(flow), "not one this console made"),
    ],
)
def test_a_flow_cookie_not_made_here_is_refused(change: Callable[[str, Flow], str | None], message: str) -> None:
    seal = FlowSeal(b"k" * 32)
    flow = Flow.begin("/tenants", NOW)

    with pytest.raises(SsoError, match=message):
        seal.open(change(seal.seal(flow), flow), flow.state, NOW)


def test_a_flow_is_refused_for_another_state_and_after_ten_minutes() -> None:
    seal = FlowSeal(b"k" * 32)
    flow = Flow.begin("/tenants", NOW)
    cookie = seal.seal(flow)

    with pytest.raises(SsoError, match="state differs"):
        seal.open(cookie, "forged", NOW)
    with pytest.raises(SsoError, match="state differs"):
        seal.open(cookie, "", NOW)
    with pytest.raises(SsoError, match="longer than 10 minutes"):
        seal.open(cookie, flow.state, NOW + FLOW_SECONDS)
    # A refused answer does not use the flow up: the real one still completes it.
    assert seal.open(cookie, flow.state, NOW + FLOW_SECONDS - 1) == flow


def test_spent_flows_are_forgotten_once_expired() -> None:
    seal = FlowSeal(b"k" * 32)
    for i in range(5):
        flow = Flow.begin("/tenants", NOW + i * FLOW_SECONDS)
        seal.open(seal.seal(flow), flow.state, NOW + i * FLOW_SECONDS)
    assert len(seal._spent) == 1


def _document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/keys",
        "end_session_endpoint": f"{ISSUER}/logout",
        "code_challenge_methods_supported": ["plain", "S256"],
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def test_the_discovery_document_gives_the_endpoints() -> None:
    metadata = metadata_from(_document(), ISSUER)
    assert (metadata.authorization_endpoint, metadata.token_endpoint, metadata.jwks_uri) == (
        f"{ISSUER}/auth",
        f"{ISSUER}/token",
        f"{ISSUER}/keys",
    )
    assert metadata.end_session_endpoint == f"{ISSUER}/logout"
    # Methods not advertised: tried anyway (many providers support S256 without saying so).
    assert metadata_from(_document(code_challenge_methods_supported=None), ISSUER).token_endpoint


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (["not", "an", "object"], "not a JSON object"),
        (_document(issuer="https://evil.example.test"), "names the issuer 'https://evil.example.test'"),
        (_document(issuer=f"{ISSUER}/"), "names the issuer"),
        (_document(issuer=None), "names the issuer"),
        (_document(token_endpoint=None), "no usable token_endpoint"),
        (_document(authorization_endpoint="javascript:alert(1)"), "no usable authorization_endpoint"),
        (_document(jwks_uri=42), "no usable jwks_uri"),
        (_document(code_challenge_methods_supported=["plain"]), "does not support PKCE with S256"),
    ],
)
def test_a_discovery_document_that_will_not_do_is_refused(document: object, message: str) -> None:
    with pytest.raises(SsoError, match=re.escape(message)) as refused:
        metadata_from(document, ISSUER)
    assert refused.value.status == 502


def test_a_providers_text_is_shown_printable_and_short() -> None:
    assert shown("access_denied\r\n<b>x</b>") == "access_denied<b>x</b>"
    long = shown("x" * 5000)
    assert len(long) == MAX_SHOWN
    assert long.endswith("…")


def test_single_sign_on_is_configured_from_the_settings() -> None:
    settings = AdminSettings(
        **SSO, oidc_client_secret="s3cret", oidc_scopes="openid email", public_url="https://d.example/x", vault=VAULT
    )
    config = sso_config(settings, settings.public_base_url(8080))
    assert config is not None
    assert config.redirect_uri == "https://d.example/x/console/oidc/callback"
    assert (config.issuer, config.client_id, config.scopes) == (ISSUER, "duplex-console", "openid email")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(config)
    assert config.flow_key.hex() not in repr(config)
    # Replicas with the same vault keys accept each other's flows; without a vault, a key of its own.
    assert sso_config(settings, "https://d.example") == sso_config(settings, "https://d.example")
    no_vault = AdminSettings(**SSO, vault=None)
    assert sso_config(no_vault, "x") != sso_config(no_vault, "x")
    assert sso_config(AdminSettings(**{**SSO, "oidc_client_id": None}, vault=None), "x") is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"oidc_client_id": "duplex-console"}, "needs the API to verify OIDC tokens"),
        ({**SSO, "oidc_audience": None}, "OIDC needs all of"),
        ({"oidc_client_secret": "s3cret"}, "CLIENT_SECRET is set without DUPLEX_ADMIN_OIDC_CLIENT_ID"),
        ({**SSO, "oidc_client_id": " "}, "DUPLEX_ADMIN_OIDC_CLIENT_ID is empty"),
        ({**SSO, "oidc_scopes": "profile email"}, "must include openid"),
        ({**SSO, "oidc_issuer": "idp.example.test"}, "the provider's http(s) URL"),
    ],
)
def test_incomplete_single_sign_on_settings_fail_at_start(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as failed:
        AdminSettings(**given, vault=None)
    assert "s3cret" not in str(failed.value)
