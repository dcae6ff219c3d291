"""API tokens: created once, stored as a hash, listed without secrets, refused once expired or revoked."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from services.admin.auth import Role
from services.admin.cli import app as cli
from tests.integration.admin_api.harness import Api, bearer, problem

pytestmark = pytest.mark.integration


async def test_create_list_revoke(api: Api) -> None:
    admin = await api.token(name="root")
    created = await api.http.post(
        "/api/v1/tokens",
        json={"name": "ci deploy", "role": "operator", "tenants": ["globex", "acme", "acme"], "expiresIn": "30d"},
        headers=bearer(admin) | {"x-request-id": "mint-1"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body.pop("token")
    assert secret.startswith("dpx_")
    assert len(secret) == len("dpx_") + 43  # 256 bits, URL-safe base64
    assert body["name"] == "ci deploy"
    assert body["role"] == "operator"
    assert body["tenants"] == ["acme", "globex"]
    expires = datetime.fromisoformat(body["expiresAt"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert body["lastUsedAt"] is None
    assert body["revokedAt"] is None

    # Stored as its hash, and nowhere as itself.
    row = await api.db.fetchrow(
        "SELECT t::text AS text, token_sha256 FROM api_tokens t WHERE id = $1::uuid", body["id"]
    )
    assert row["token_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in row["text"]
    assert secret[4:] not in json.dumps([r[0] for r in await api.db.fetch("SELECT a::text FROM audit_log a")])
    root_id = await api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'root'")
    audit = await api.db.fetchrow(
        "SELECT actor, request_id, detail FROM audit_log WHERE action = 'token.created' AND request_id IS NOT NULL"
    )
    assert audit["actor"] == f"root (token {root_id})"
    assert audit["request_id"] == "mint-1"
    assert json.loads(audit["detail"])["tokenId"] == body["id"]

    # The new token works, within its scope, and its use is recorded.
    listed = await api.http.get("/api/v1/tenants", headers=bearer(secret))
    assert listed.status_code == 200
    assert await api.db.fetchval("SELECT last_used_at FROM api_tokens WHERE id = $1::uuid", body["id"]) is not None

    tokens = await api.http.get("/api/v1/tokens", headers=bearer(admin))
    assert tokens.status_code == 200
    assert secret not in tokens.text
    items = tokens.json()["items"]
    assert [t["name"] for t in items] == ["root", "ci deploy"]
    assert all("token" not in t for t in items)
    assert items[1]["lastUsedAt"] is not None

    revoked = await api.http.delete(f"/api/v1/tokens/{body['id']}", headers=bearer(admin))
    assert revoked.status_code == 204
    refused = problem(await api.http.get("/api/v1/tenants", headers=bearer(secret)), 401)
    assert refused["detail"] == "the bearer token is invalid, expired or revoked"
    # Again is fine, and audited once.
    assert (await api.http.delete(f"/api/v1/tokens/{body['id']}", headers=bearer(admin))).status_code == 204
    assert await api.db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'token.revoked'") == 1
    after = (await api.http.get("/api/v1/tokens", headers=bearer(admin))).json()["items"]
    assert after[1]["revokedAt"] is not None

    problem(await api.http.delete("/api/v1/tokens/00000000-0000-0000-0000-000000000000", headers=bearer(admin)), 404)
    problem(await api.http.delete("/api/v1/tokens/not-a-token-id", headers=bearer(admin)), 404)


async def test_missing_unknown_expired_and_revoked_tokens_are_401(api: Api) -> None:
    expired = await api.token(lifetime=timedelta(hours=1))
    await api.db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
    revoked = await api.token()
    await api.db.execute("UPDATE api_tokens SET revoked_at = now() WHERE expires_at IS NULL")

    none = await api.http.get("/api/v1/tenants")
    problem(none, 401)
    assert none.headers["www-authenticate"] == 'Bearer realm="duplex"'
    for credential in (expired, revoked, "dpx_" + "A" * 43, "not-a-dpx-token"):
        refused = await api.http.get("/api/v1/tenants", headers=bearer(credential))
        problem(refused, 401)
        assert refused.headers["www-authenticate"] == 'Bearer realm="duplex", error="invalid_token"'
    basic = await api.http.get("/api/v1/tenants", headers={"authorization": "Basic YWRtaW46YWRtaW4="})
    problem(basic, 401)


async def test_token_management_needs_an_admin_of_every_tenant(api: Api) -> None:
    scoped_admin = await api.token(Role.ADMIN, ["acme"])
    operator = await api.token(Role.OPERATOR)
    request = {"name": "escalate", "role": "admin"}
    scoped = problem(await api.http.post("/api/v1/tokens", json=request, headers=bearer(scoped_admin)), 403)
    assert scoped["detail"] == "only an admin of every tenant may manage API tokens"
    op = problem(await api.http.get("/api/v1/tokens", headers=bearer(operator)), 403)
    assert op["detail"] == "the operator role may not manage API tokens"
    assert await api.db.fetchval("SELECT count(*) FROM api_tokens") == 2


async def test_cli_creates_the_first_admin_token(api: Api) -> None:
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke,
        cli,
        [
            "tokens",
            "create",
            "--bootstrap",
            "--name",
            "bootstrap",
            "--role",
            "admin",
            "--expires-in",
            "12h",
            "--dsn",
            api.dsn,
        ],
        env={"DUPLEX_ACTOR": "ops@host", "POSTGRES_DSN": None},
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("dpx_")
    assert result.stderr.startswith("token/bootstrap created (id ")
    assert "admin, every tenant, expires " in result.stderr

    answer = await api.http.post("/api/v1/tokens", json={"name": "next", "role": "viewer"}, headers=bearer(token))
    assert answer.status_code == 201, answer.text
    audit = await api.db.fetchrow("SELECT actor, request_id FROM audit_log WHERE action = 'token.created' ORDER BY id")
    assert tuple(audit) == ("ops@host", None)

    scoped = await asyncio.to_thread(
        runner.invoke,
        cli,
        [
            "tokens",
            "create",
            "--bootstrap",
            "--name",
            "acme ro",
            "--role",
            "viewer",
            "--tenant",
            "acme",
            "--dsn",
            api.dsn,
        ],
    )
    assert scoped.exit_code == 0, scoped.output
    assert "viewer, tenants acme, never expires" in scoped.stderr
    assert await api.db.fetchval("SELECT tenants FROM api_tokens WHERE name = 'acme ro'") == ["acme"]
