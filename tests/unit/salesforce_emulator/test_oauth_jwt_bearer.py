"""The JWT bearer grant: the app's certificate, the assertion's claims, Salesforce's refusals."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from services.salesforce_emulator.app import Emulator
from services.salesforce_emulator.oauth import JWT_BEARER_GRANT, OAuthError, OAuthService, TokenStore
from services.salesforce_emulator.orgs import ClientSpec, OrgError, OrgRegistry, OrgRepository, OrgSpec, UserSpec
from services.salesforce_emulator.seed import SeedError, load_seed
from tests.unit.salesforce_emulator.sessions import bearer

pytestmark = pytest.mark.unit

LOGIN = "https://127.0.0.1:8443"
NOW = 1_700_000_000
ADMIN = {"Authorization": "Bearer test-admin-token"}
LIMITS = "/services/data/v62.0/limits/"

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey) -> str:
    """A self-signed X.509 certificate for ``key``, as one is uploaded to a connected app."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duplex-jwt")])
    start = datetime(2023, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def public_key(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


CERTIFICATE = certificate(KEY)


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


class World:
    """Two orgs: acme (with a JWT app and one without a certificate) and globex."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        lock = threading.Lock()
        self.orgs = OrgRegistry(OrgRepository(self.db, lock))
        self.clock = Clock()
        if self.orgs.find("acme") is None:
            self.orgs.create(
                OrgSpec(
                    alias="acme",
                    users=(UserSpec(username="ada@acme.example", password=SecretStr("pw")),),
                    clients=(
                        ClientSpec(
                            name="jwt", client_id="jwt-app", client_secret=SecretStr("s1"), certificate=CERTIFICATE
                        ),
                        ClientSpec(name="plain", client_id="plain-app", client_secret=SecretStr("s2")),
                    ),
                )
            )
            self.orgs.create(
                OrgSpec(alias="globex", users=(UserSpec(username="gus@globex.example", password=SecretStr("pw")),))
            )
        self.org = self.orgs.get("acme")
        self.oauth = OAuthService(
            self.orgs,
            TokenStore(self.db, lock),
            login_url=LOGIN,
            instance_url=LOGIN,
            access_token_ttl=600,
            clock=self.clock,
        )

    def grant(self, assertion: str) -> dict[str, str]:
        return self.oauth.token({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})


def assertion(key: Any = KEY, algorithm: str = "RS256", **claims: Any) -> str:
    """An assertion good for ``World`` unless ``claims`` (None drops a claim) say otherwise."""
    body: dict[str, Any] = {"iss": "jwt-app", "sub": "ada@acme.example", "aud": LOGIN, "exp": NOW + 180}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


@pytest.fixture
def world() -> World:
    return World()


def refused(world: World, token: str) -> tuple[str, str]:
    with pytest.raises(OAuthError) as raised:
        world.grant(token)
    assert raised.value.status == 400
    return raised.value.error, raised.value.description


def test_a_good_assertion_gets_an_access_token_and_no_refresh_token(world: World) -> None:
    body = world.grant(assertion())

    user = world.org.default_user
    assert list(body) == ["access_token", "scope", "instance_url", "id", "token_type", "issued_at"]
    assert body["id"] == f"{LOGIN}/id/{world.org.org_id}/{user.user_id}"
    assert body["instance_url"] == LOGIN
    assert body["token_type"] == "Bearer"
    assert body["issued_at"] == str(NOW * 1000)
    app = world.org.client("jwt-app")
    assert app is not None
    assert body["scope"] == " ".join(app.scopes)
    session = world.oauth.authenticate(body["access_token"])
    assert session is not None
    assert (session.org_id, session.user_id, session.client_id) == (world.org.org_id, user.user_id, "jwt-app")


@pytest.mark.parametrize(
    "aud",
    [
        LOGIN,
        LOGIN + "/",
        "https://login.salesforce.com",
        "https://test.salesforce.com",
        ["https://elsewhere.example", LOGIN],
    ],
)
def test_the_audience_is_the_login_url_or_salesforces_login_hosts(world: World, aud: str | list[str]) -> None:
    assert world.grant(assertion(aud=aud))["access_token"]


@pytest.mark.parametrize("aud", ["https://elsewhere.example", "https://127.0.0.1:9999", ["https://a.example"], None])
def test_another_audience_is_invalid(world: World, aud: str | list[str] | None) -> None:
    assert refused(world, assertion(aud=aud)) == ("invalid_grant", "audience is invalid")


def test_an_assertion_signed_with_another_key_is_invalid(world: World) -> None:
    assert refused(world, assertion(key=OTHER_KEY)) == ("invalid_grant", "invalid assertion")


@pytest.mark.parametrize("offset", [0, -1, -3600])
def test_a_lapsed_assertion_is_expired(world: World, offset: int) -> None:
    assert refused(world, assertion(exp=NOW + offset)) == ("invalid_grant", "expired authorization code")


def test_an_assertion_valid_for_more_than_three_minutes_is_refused(world: World) -> None:
    assert world.grant(assertion(exp=NOW + 180))["access_token"]
    assert refused(world, assertion(exp=NOW + 181)) == ("invalid_grant", "invalid assertion")


def test_an_assertion_checks_the_emulators_clock(world: World) -> None:
    token = assertion(exp=NOW + 60)
    world.clock.now += 60
    assert refused(world, token) == ("invalid_grant", "expired authorization code")


@pytest.mark.parametrize("sub", ["nobody@acme.example", "gus@globex.example", None])
def test_only_users_of_the_apps_org_are_pre_authorized(world: World, sub: str | None) -> None:
    assert refused(world, assertion(sub=sub)) == ("invalid_grant", "user hasn't approved this consumer")


def test_usernames_match_without_regard_to_case(world: World) -> None:
    body = world.grant(assertion(sub="ADA@Acme.Example"))
    session = world.oauth.authenticate(body["access_token"])
    assert session is not None
    assert session.user_id == world.org.default_user.user_id


def test_an_inactive_user_is_refused(world: World) -> None:
    world.org.state.users = [u.model_copy(update={"active": False}) for u in world.org.state.users]
    assert refused(world, assertion()) == ("inactive_user", "user is inactive")


@pytest.mark.parametrize("iss", ["no-such-app", None])
def test_an_unknown_issuer_is_an_unknown_client(world: World, iss: str | None) -> None:
    assert refused(world, assertion(iss=iss)) == ("invalid_client_id", "client identifier invalid")


def test_an_app_without_a_certificate_cannot_use_the_flow(world: World) -> None:
    assert refused(world, assertion(iss="plain-app")) == ("invalid_grant", "invalid assertion")
    assert refused(world, assertion(iss="plain-app", key=OTHER_KEY)) == ("invalid_grant", "invalid assertion")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        assertion(key=None, algorithm="none"),
        assertion(key="shared-secret-of-32-bytes-or-more!", algorithm="HS256"),
        assertion(exp="soon"),
        assertion(exp=None),
    ],
)
def test_malformed_unsigned_or_hmac_assertions_are_invalid(world: World, token: str) -> None:
    assert refused(world, token) == ("invalid_grant", "invalid assertion")


def test_certificates_can_be_uploaded_replaced_and_removed_and_persist(tmp_path: Path) -> None:
    path = str(tmp_path / "emulator.db")
    first = World(path)
    first.orgs.set_certificate("acme", "plain-app", public_key(OTHER_KEY))
    assert first.grant(assertion(iss="plain-app", key=OTHER_KEY))["access_token"]
    first.orgs.set_certificate("acme", "jwt-app", None)
    assert refused(first, assertion()) == ("invalid_grant", "invalid assertion")

    again = World(path)
    assert again.grant(assertion(iss="plain-app", key=OTHER_KEY))["access_token"]
    assert refused(again, assertion()) == ("invalid_grant", "invalid assertion")


def test_unusable_certificates_are_refused(world: World) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pem = ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(OrgError, match="must be RSA"):
        world.orgs.set_certificate("acme", "jwt-app", ec_pem.decode())
    with pytest.raises(OrgError, match="not a PEM certificate"):
        world.orgs.set_certificate("acme", "jwt-app", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----")
    with pytest.raises(OrgError, match="no client"):
        world.orgs.set_certificate("acme", "no-such-app", CERTIFICATE)
    with pytest.raises(ValidationError, match="not a PEM certificate"):
        ClientSpec(name="x", client_id="x", client_secret=SecretStr("x"), certificate="junk")
    # The refused uploads changed nothing.
    assert world.grant(assertion())["access_token"]


def test_the_seed_file_carries_an_apps_certificate(tmp_path: Path) -> None:
    indented = CERTIFICATE.strip().replace("\n", "\n          ")
    path = tmp_path / "seed.yaml"
    path.write_text(
        "orgs:\n"
        "  - alias: acme\n"
        "    users: [{username: ada@acme.example, password: pw}]\n"
        "    clients:\n"
        "      - name: jwt\n"
        "        client_id: jwt-app\n"
        "        client_secret: s1\n"
        "        certificate: |\n"
        f"          {indented}\n"
    )
    assert load_seed(path).orgs[0].clients[0].certificate == CERTIFICATE
    # Damage the certificate's base64 (its DER starts "MII").
    path.write_text(path.read_text().replace("\n          MII", "\n          XX", 1))
    with pytest.raises(SeedError, match="not a PEM certificate"):
        load_seed(path)


def test_over_http_the_admin_api_uploads_a_certificate_and_the_token_works(
    client: TestClient, emulator: Emulator
) -> None:
    path = "/__emulator__/orgs/acme/clients/duplex-acme-client/certificate"
    uploaded = client.put(path, headers=ADMIN, json={"certificate": CERTIFICATE})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == {"client_id": "duplex-acme-client", "name": "duplex", "jwt_bearer": True}
    listed = client.get("/__emulator__/orgs/acme", headers=ADMIN).json()["clients"]
    assert {"name": "duplex", "client_id": "duplex-acme-client", "jwt_bearer": True} in listed

    claims = {
        "iss": "duplex-acme-client",
        "sub": "integration@acme.example",
        "aud": emulator.instance_url,
        "exp": int(datetime.now(UTC).timestamp()) + 120,
    }
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": jwt.encode(claims, KEY, algorithm="RS256")}
    response = client.post("/services/oauth2/token", data=form)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert "refresh_token" not in body
    assert client.get(LIMITS, headers=bearer(body["access_token"])).status_code == 200

    wrong = client.post("/services/oauth2/token", data={**form, "assertion": jwt.encode(claims, OTHER_KEY, "RS256")})
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "invalid assertion"}

    removed = client.put(path, headers=ADMIN, json={"certificate": None})
    assert removed.json()["jwt_bearer"] is False
    assert client.post("/services/oauth2/token", data=form).json()["error_description"] == "invalid assertion"


def test_over_http_bad_certificates_and_unknown_apps_are_refused(client: TestClient) -> None:
    path = "/__emulator__/orgs/acme/clients/{}/certificate"
    bad = client.put(path.format("duplex-acme-client"), headers=ADMIN, json={"certificate": "junk"})
    assert bad.status_code == 422
    assert bad.json()[0]["errorCode"] == "INVALID_INPUT"
    unknown = client.put(path.format("no-such-app"), headers=ADMIN, json={"certificate": CERTIFICATE})
    assert unknown.status_code == 404
    no_org = client.put("/__emulator__/orgs/nope/clients/x/certificate", headers=ADMIN, json={"certificate": None})
    assert no_org.status_code == 404
    assert client.put(path.format("duplex-acme-client"), json={"certificate": None}).status_code == 401
