"""OIDC bearer JWTs, verified against a JWKS served over real HTTP by a local server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.integration.admin_api.harness import Api, bearer, problem, serving, tenant_yaml

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.test/realms/duplex"
AUDIENCE = "duplex-admin"


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Provider:
    """A JWKS endpoint; ``keys`` is what it serves, ``up`` whether it answers at all."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    up: bool = True
    fetches: int = 0
    url: str = ""

    def jwks(self) -> bytes:
        entries = []
        for kid, key in self.keys.items():
            entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            entries.append({**entry, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": entries}).encode()

    def sign(self, kid: str, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider(keys={"k1": _key()})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            if not state.up:
                self.send_error(503)
                return
            body = state.jwks()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def oidc_api(migrated: str, provider: Provider) -> AsyncIterator[Api]:
    async with serving(
        migrated,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=provider.url,
        oidc_roles_claim="groups",
        # A rotated key is fetched at once (in production, at most every 30 s).
        oidc_jwks_refetch_seconds=0,
    ) as api:
        yield api


async def test_an_oidc_admin_applies_and_is_audited(oidc_api: Api, provider: Provider) -> None:
    token = provider.sign("k1", sub="u-42", email="alice@example.test", groups=["staff", "admin"], tenants="*")
    applied = await oidc_api.apply(token, tenant_yaml())
    assert applied.status_code == 201, applied.text
    assert await oidc_api.db.fetchval("SELECT applied_by FROM config_history") == "alice@example.test (oidc u-42)"
    # API tokens keep working beside OIDC.
    api_token = await oidc_api.token()
    assert (await oidc_api.http.get("/api/v1/tenants/acme", headers=bearer(api_token))).status_code == 200


async def test_oidc_roles_and_tenants_scope_the_caller(oidc_api: Api, provider: Provider) -> None:
    admin = provider.sign("k1", groups="admin", tenants="*")
    for name in ("acme", "globex"):
        assert (await oidc_api.apply(admin, tenant_yaml(name), name)).status_code == 201
    viewer = provider.sign("k1", groups=["viewer"], tenants=["globex"])
    listed = await oidc_api.http.get("/api/v1/tenants", headers=bearer(viewer))
    assert [t["name"] for t in listed.json()["items"]] == ["globex"]
    problem(await oidc_api.http.get("/api/v1/tenants/acme", headers=bearer(viewer)), 404)
    problem(await oidc_api.apply(viewer, tenant_yaml("globex"), "globex"), 403)
    # No tenants claim: no tenant.
    unscoped = provider.sign("k1", groups=["admin"])
    assert (await oidc_api.http.get("/api/v1/tenants", headers=bearer(unscoped))).json() == {"items": []}
    problem(await oidc_api.http.get("/api/v1/tokens", headers=bearer(unscoped)), 403)


async def test_invalid_jwts_are_401(oidc_api: Api, provider: Provider) -> None:
    stranger = _key()
    # The provider's public key used as an HMAC secret (pyjwt refuses to sign that, so by hand).
    public_pem = (
        provider.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": int(time.time()) + 60, "groups": "admin"}
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims | {'tenants': '*'})}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    for token in [
        provider.sign("k1", groups="admin", tenants="*", exp=int(time.time()) - 120),  # expired beyond the leeway
        provider.sign("k1", groups="admin", tenants="*", aud="someone-else"),
        provider.sign("k1", groups="admin", tenants="*", iss="https://evil.example.test"),
        provider.sign("k1", groups="admin", tenants="*", sub=None),
        provider.sign("k1", key=stranger, groups="admin", tenants="*"),  # right kid, wrong key
        provider.sign("unknown-kid", key=stranger, groups="admin", tenants="*"),
        provider.sign("k1", groups=["staff"], tenants="*"),  # no Duplex role
        hs256,
        "not.a.jwt",
    ]:
        refused = await oidc_api.http.get("/api/v1/tenants", headers=bearer(token))
        problem(refused, 401)
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]


async def test_rotated_keys_are_fetched_and_an_unreachable_provider_is_503(oidc_api: Api, provider: Provider) -> None:
    first = provider.sign("k1", groups="viewer", tenants="*")
    assert (await oidc_api.http.get("/api/v1/tenants", headers=bearer(first))).status_code == 200
    fetched = provider.fetches
    assert (await oidc_api.http.get("/api/v1/tenants", headers=bearer(first))).status_code == 200
    assert provider.fetches == fetched  # cached

    provider.keys["k2"] = _key()
    rotated = provider.sign("k2", groups="viewer", tenants="*")
    assert (await oidc_api.http.get("/api/v1/tenants", headers=bearer(rotated))).status_code == 200
    assert provider.fetches == fetched + 1

    provider.up = False
    provider.keys["k3"] = _key()
    unknown_while_down = provider.sign("k3", groups="viewer", tenants="*")
    body = problem(await oidc_api.http.get("/api/v1/tenants", headers=bearer(unknown_while_down)), 503)
    assert body["detail"] == "the identity provider cannot be reached; try again later"
