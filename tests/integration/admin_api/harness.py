"""The admin API in-process over a real, migrated PostgreSQL: what every admin API test starts from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from services.admin.app import RunningAdmin, run
from services.admin.auth import Role
from services.admin.settings import AdminSettings
from services.admin.token_store import TokenStore
from services.common.connections import SecretLookup
from services.common.salesforce import env_secrets
from services.common.tenant_config.policy import PolicySettings
from services.common.vault import VaultSettings

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = (ROOT / "deploy" / "examples" / "tenant-acme.yaml").read_text()
YAML = {"content-type": "application/yaml"}
# The vault's key for every API under test, and the environment the sample tenant's client secret
# is read from (under the prefix the default policy allows).
VAULT_KEYS = "k1:" + "a2V5LWVuY3J5cHRpb24ta2V5LWZvci10ZXN0cy0zMmI="
SECRET_ENV = "DUPLEX_SECRET_ACME_SF_CLIENT_SECRET"
SECRETS = {SECRET_ENV: "acme-client-secret"}
# The deployment the tests are: the default policy, for development, because the emulator listens on
# 127.0.0.1. Spelt out so that no DUPLEX_* variable of the shell running the tests changes it.
DEVELOPMENT = PolicySettings(secret_env_prefix="DUPLEX_SECRET_", salesforce_hosts="", development=True)
# What a change touches: a request that must change nothing leaves these exactly as they were
# (a token's last_used_at aside: every authenticated request may refresh it).
SNAPSHOT = {
    "tenants": "SELECT t::text FROM tenants t",
    "config_history": "SELECT c::text FROM config_history c",
    "audit_log": "SELECT a::text FROM audit_log a",
    "api_tokens": "SELECT (id, name, role, tenants, expires_at, revoked_at)::text FROM api_tokens",
    "salesforce_connections": "SELECT c::text FROM salesforce_connections c",
    "vault_secrets": "SELECT s::text FROM vault_secrets s",
    "sync_pauses": "SELECT p::text FROM sync_pauses p",
}


def tenant_yaml(name: str = "acme", cap: int = 5000) -> str:
    """The sample tenant under another name and daily cap (one changed field per cap)."""
    text = SAMPLE.replace("name: acme\n", f"name: {name}\n", 1)
    return text.replace("dailyApiCap: 5000", f"dailyApiCap: {cap}", 1)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Api:
    dsn: str
    running: RunningAdmin
    http: httpx.AsyncClient
    db: Any  # an asyncpg connection for assertions and set-up

    async def token(
        self,
        role: Role = Role.ADMIN,
        tenants: Sequence[str] | None = None,
        *,
        name: str | None = None,
        lifetime: timedelta | None = None,
    ) -> str:
        _, token = await TokenStore(self.db).create(
            name=name or f"{role.value}-token",
            role=role,
            tenants=tenants,
            lifetime=lifetime,
            actor="test set-up",
        )
        return token

    async def snapshot(self) -> dict[str, list[str]]:
        """Every row of every table a change touches, as text, in a stable order."""
        return {table: sorted(r[0] for r in await self.db.fetch(query)) for table, query in SNAPSHOT.items()}

    async def apply(self, token: str, text: str, name: str = "acme") -> httpx.Response:
        return await self.http.put(f"/api/v1/tenants/{name}", content=text, headers={**YAML, **bearer(token)})


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem document of ``response``, after checking it is one, with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status"} <= body.keys()
    assert "Traceback" not in response.text
    return body


async def connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn)


def settings(dsn: str, **overrides: Any) -> AdminSettings:
    given = {"vault": VaultSettings(keys=SecretStr(VAULT_KEYS)), "policy": DEVELOPMENT, **overrides}
    return AdminSettings(postgres_dsn=dsn, port=0, actor="test", **given)


@asynccontextmanager
async def serving(dsn: str, *, secrets: SecretLookup | None = None, **overrides: Any) -> AsyncIterator[Api]:
    """The API running on ``dsn`` (a migrated database) with ``overrides`` to its settings; tenants'
    secrets from ``secrets`` (default: :data:`SECRETS`)."""
    db = await connect(dsn)
    try:
        async with (
            run(settings(dsn, **overrides), secrets=secrets or env_secrets(SECRETS)) as running,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=running.app), base_url="http://admin") as http,
        ):
            yield Api(dsn, running, http, db)
    finally:
        await db.close()
