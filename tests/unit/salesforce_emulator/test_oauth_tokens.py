"""OAuth flows without HTTP: PKCE rules, code life, token lifecycle, signatures, hashed storage."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from services.salesforce_emulator.oauth import OAuthError, OAuthService, TokenStore, s256
from services.salesforce_emulator.orgs import ClientSpec, OrgRegistry, OrgRepository, OrgSpec, UserSpec

pytestmark = pytest.mark.unit

LOGIN = "https://127.0.0.1:8443"
CALLBACK = "http://127.0.0.1:8765/cb"
VERIFIER = "v" * 20 + secrets.token_urlsafe(32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        lock = threading.Lock()
        self.orgs = OrgRegistry(OrgRepository(self.db, lock))
        self.clock = Clock()
        self.org = self.orgs.create(
            OrgSpec(
                alias="acme",
                users=(
                    UserSpec(username="ada@acme.example", password=SecretStr("pw")),
                    UserSpec(username="bob@acme.example", password=SecretStr("pw2")),
                ),
                clients=(
                    ClientSpec(
                        name="pkce",
                        client_id="pkce-app",
                        client_secret=SecretStr("pkce-secret"),
                        redirect_uris=(CALLBACK,),
                        execution_user="bob@acme.example",
                    ),
                    ClientSpec(
                        name="classic",
                        client_id="classic-app",
                        client_secret=SecretStr("classic-secret"),
                        redirect_uris=(CALLBACK,),
                        pkce_required=False,
                        require_secret=True,
                        refresh_token_rotation=True,
                        scopes=("api", "refresh_token"),
                    ),
                ),
            )
        )
        self.oauth = OAuthService(
            self.orgs,
            TokenStore(self.db, lock),
            login_url=LOGIN,
            instance_url=LOGIN,
            access_token_ttl=600,
            code_ttl=60,
            clock=self.clock,
        )

    def authorize(self, **overrides: str | None) -> dict[str, str]:
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": "pkce-app",
            "redirect_uri": CALLBACK,
            "state": "st-1",
            "code_challenge": s256(VERIFIER),
            "code_challenge_method": "S256",
            "scope": "api refresh_token",
        }
        params.update(overrides)
        location = self.oauth.authorize({k: v for k, v in params.items() if v is not None})
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK
        return {k: v[0] for k, v in parse_qs(parts.query).items()}

    def exchange(self, code: str, **overrides: str | None) -> dict[str, str]:
        form: dict[str, str | None] = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": "pkce-app",
            "redirect_uri": CALLBACK,
            "code_verifier": VERIFIER,
        }
        form.update(overrides)
        return self.oauth.token({k: v for k, v in form.items() if v is not None})


def bob_id(world: World) -> str:
    bob = world.org.user_by_name("bob@acme.example")
    assert bob is not None
    return bob.user_id


@pytest.fixture
def world() -> World:
    return World()


def test_pkce_code_flow_issues_signed_tokens_for_the_default_user(world: World) -> None:
    redirect = world.authorize()
    assert redirect["state"] == "st-1"
    body = world.exchange(redirect["code"])
    user = world.org.default_user
    assert body["id"] == f"{LOGIN}/id/{world.org.org_id}/{user.user_id}"
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == LOGIN
    assert body["scope"] == "api refresh_token"
    assert body["issued_at"] == str(int(world.clock.now * 1000))
    expected = hmac.new(b"pkce-secret", (body["id"] + body["issued_at"]).encode(), hashlib.sha256).digest()
    assert base64.b64decode(body["signature"]) == expected
    assert body["access_token"].startswith(world.org.org_id[:15] + "!")
    session = world.oauth.authenticate(body["access_token"])
    assert session is not None
    assert (session.org_id, session.user_id) == (world.org.org_id, user.user_id)
    assert "refresh_token" in body


def test_login_hint_picks_the_user_and_unknown_hints_are_denied(world: World) -> None:
    body = world.exchange(world.authorize(login_hint="bob@acme.example")["code"])
    session = world.oauth.authenticate(body["access_token"])
    assert session is not None
    assert session.user_id == bob_id(world)
    assert world.authorize(login_hint="eve@acme.example")["error"] == "access_denied"


def test_no_refresh_token_without_the_scope(world: World) -> None:
    body = world.exchange(world.authorize(scope="api")["code"])
    assert "refresh_token" not in body


@pytest.mark.parametrize(
    ("authorize", "expected"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),  # PKCE required
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "api no_such_scope"}, "invalid_scope"),
    ],
)
def test_authorize_errors_go_back_to_the_client_with_state(
    world: World, authorize: Mapping[str, str | None], expected: str
) -> None:
    redirect = world.authorize(**authorize)
    assert redirect["error"] == expected
    assert redirect["state"] == "st-1"
    assert "code" not in redirect


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"client_id": "nobody"}, "invalid_client_id"),
        ({"redirect_uri": "http://evil.example/cb"}, "redirect_uri_mismatch"),
    ],
)
def test_authorize_never_redirects_to_an_unregistered_place(
    world: World, params: dict[str, str], expected: str
) -> None:
    with pytest.raises(OAuthError) as raised:
        world.authorize(**params)
    assert raised.value.error == expected


@pytest.mark.parametrize(
    ("case", "exchange", "advance", "expected"),
    [
        ("missing verifier", {"code_verifier": None}, 0, "invalid_grant"),
        ("wrong verifier", {"code_verifier": "w" * 43}, 0, "invalid_request"),
        ("malformed verifier", {"code_verifier": "short"}, 0, "invalid_request"),
        ("wrong redirect", {"redirect_uri": "http://127.0.0.1:8765/other"}, 0, "redirect_uri_mismatch"),
        ("other client", {"client_id": "classic-app", "client_secret": "classic-secret"}, 0, "invalid_grant"),
        ("wrong secret", {"client_secret": "nope"}, 0, "invalid_client"),
        ("expired code", {}, 61, "invalid_grant"),
        ("unknown code", {"code": "forged"}, 0, "invalid_grant"),
    ],
)
def test_token_exchange_failures(
    world: World, case: str, exchange: dict[str, str | None], advance: float, expected: str
) -> None:
    code = world.authorize()["code"]
    world.clock.now += advance
    with pytest.raises(OAuthError) as raised:
        world.exchange(exchange.pop("code", code) or code, **exchange)
    assert raised.value.error == expected, case
    assert raised.value.status == 400


@pytest.mark.parametrize(
    "verifier",
    [
        # What jsforce sends by default (and so Salesforce's CLI): base64url of 128 random bytes.
        pytest.param(base64.urlsafe_b64encode(secrets.token_bytes(128)).rstrip(b"=").decode(), id="171-chars"),
        pytest.param("a" * 43, id="rfc-minimum"),
        pytest.param("~._-" * 32, id="rfc-maximum-alphabet"),
    ],
)
def test_verifiers_salesforce_accepts_beyond_rfc_7636_lengths(world: World, verifier: str) -> None:
    code = world.authorize(code_challenge=s256(verifier))["code"]
    assert world.exchange(code, code_verifier=verifier)["access_token"]


def test_a_verifier_of_the_right_length_but_wrong_alphabet_is_malformed(world: World) -> None:
    verifier = "a" * 170 + "!"
    code = world.authorize(code_challenge=s256(verifier))["code"]
    with pytest.raises(OAuthError) as raised:
        world.exchange(code, code_verifier=verifier)
    assert (raised.value.error, raised.value.description) == ("invalid_request", "invalid code_verifier")


def test_a_reused_code_fails_and_revokes_what_it_bought(world: World) -> None:
    code = world.authorize()["code"]
    body = world.exchange(code)
    with pytest.raises(OAuthError) as raised:
        world.exchange(code)
    assert raised.value.error == "invalid_grant"
    assert world.oauth.authenticate(body["access_token"]) is None
    with pytest.raises(OAuthError):
        world.oauth.token(
            {"grant_type": "refresh_token", "client_id": "pkce-app", "refresh_token": body["refresh_token"]}
        )


def test_a_confidential_client_without_pkce_needs_its_secret(world: World) -> None:
    redirect = world.authorize(client_id="classic-app", code_challenge=None, code_challenge_method=None)
    with pytest.raises(OAuthError) as raised:
        world.exchange(redirect["code"], client_id="classic-app", code_verifier=None)
    assert raised.value.error == "invalid_client"
    body = world.exchange(redirect["code"], client_id="classic-app", code_verifier=None, client_secret="classic-secret")
    assert world.oauth.authenticate(body["access_token"]) is not None


def test_access_tokens_expire_after_their_ttl_and_refresh_renews_them(world: World) -> None:
    body = world.exchange(world.authorize()["code"])
    world.clock.now += 601
    assert world.oauth.authenticate(body["access_token"]) is None
    renewed = world.oauth.token(
        {"grant_type": "refresh_token", "client_id": "pkce-app", "refresh_token": body["refresh_token"]}
    )
    assert "refresh_token" not in renewed  # no rotation for this app
    assert world.oauth.authenticate(renewed["access_token"]) is not None


def test_rotation_replaces_the_refresh_token(world: World) -> None:
    redirect = world.authorize(client_id="classic-app", code_challenge=None, code_challenge_method=None)
    body = world.exchange(redirect["code"], client_id="classic-app", code_verifier=None, client_secret="classic-secret")
    form = {"grant_type": "refresh_token", "client_id": "classic-app", "client_secret": "classic-secret"}
    rotated = world.oauth.token({**form, "refresh_token": body["refresh_token"]})
    assert rotated["refresh_token"] != body["refresh_token"]
    with pytest.raises(OAuthError) as raised:
        world.oauth.token({**form, "refresh_token": body["refresh_token"]})
    assert raised.value.error == "invalid_grant"
    assert world.oauth.token({**form, "refresh_token": rotated["refresh_token"]})["access_token"]
    with pytest.raises(OAuthError) as missing_secret:
        world.oauth.token({"grant_type": "refresh_token", "client_id": "classic-app", "refresh_token": "x"})
    assert missing_secret.value.error == "invalid_client"


def test_revoking_a_refresh_token_kills_its_access_tokens(world: World) -> None:
    body = world.exchange(world.authorize()["code"])
    renewed = world.oauth.token(
        {"grant_type": "refresh_token", "client_id": "pkce-app", "refresh_token": body["refresh_token"]}
    )
    world.oauth.revoke(body["refresh_token"])
    assert world.oauth.authenticate(body["access_token"]) is None
    assert world.oauth.authenticate(renewed["access_token"]) is None
    with pytest.raises(OAuthError) as raised:
        world.oauth.revoke(body["refresh_token"])
    assert raised.value.error == "invalid_token"


def test_expire_all_ends_sessions_but_refresh_still_works(world: World) -> None:
    body = world.exchange(world.authorize()["code"])
    assert world.oauth.expire_all(world.org.org_id) >= 1
    assert world.oauth.authenticate(body["access_token"]) is None
    renewed = world.oauth.token(
        {"grant_type": "refresh_token", "client_id": "pkce-app", "refresh_token": body["refresh_token"]}
    )
    assert world.oauth.authenticate(renewed["access_token"]) is not None


def test_password_and_client_credentials_grants(world: World) -> None:
    base = {"client_id": "pkce-app", "client_secret": "pkce-secret"}
    body = world.oauth.token({**base, "grant_type": "password", "username": "ada@acme.example", "password": "pw"})
    assert "refresh_token" not in body
    with pytest.raises(OAuthError) as bad:
        world.oauth.token({**base, "grant_type": "password", "username": "ada@acme.example", "password": "no"})
    assert (bad.value.error, bad.value.description) == ("invalid_grant", "authentication failure")
    cc = world.oauth.token({"grant_type": "client_credentials"}, basic=("pkce-app", "pkce-secret"))
    session = world.oauth.authenticate(cc["access_token"])
    assert session is not None
    assert session.user_id == bob_id(world)
    with pytest.raises(OAuthError) as no_user:
        world.oauth.token(
            {"grant_type": "client_credentials", "client_id": "classic-app", "client_secret": "classic-secret"}
        )
    assert no_user.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as no_secret:
        world.oauth.token({"grant_type": "client_credentials", "client_id": "pkce-app"})
    assert no_secret.value.error == "invalid_client"
    with pytest.raises(OAuthError) as grant:
        world.oauth.token({**base, "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
    assert grant.value.error == "unsupported_grant_type"


def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    body = world.exchange(world.authorize()["code"])
    dump = "\n".join(world.db.iterdump())
    assert body["access_token"] not in dump
    assert body["refresh_token"] not in dump
    assert hashlib.sha256(body["access_token"].encode()).hexdigest() in dump


def test_userinfo_describes_the_session_user(world: World) -> None:
    body = world.exchange(world.authorize()["code"])
    info = world.oauth.userinfo(body["access_token"])
    user = world.org.default_user
    assert info["user_id"] == user.user_id
    assert info["organization_id"] == world.org.org_id
    assert info["preferred_username"] == user.username
    assert info["email"] == user.email
    with pytest.raises(OAuthError) as raised:
        world.oauth.userinfo("nonsense")
    assert raised.value.status == 403
