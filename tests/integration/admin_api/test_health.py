"""/healthz and /readyz: public, bodiless beyond a status, and ready only while the database answers."""

from __future__ import annotations

import asyncpg
import pytest

from tests.integration.admin_api.harness import Api

pytestmark = pytest.mark.integration


async def test_probes_answer_without_a_token(api: Api) -> None:
    for path in ("/healthz", "/readyz"):
        response = await api.http.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
    assert await api.running.health.is_ready()


async def test_readiness_follows_the_database(api: Api, postgres_dsn: str) -> None:
    name = await api.db.fetchval("SELECT current_database()")
    server = await asyncpg.connect(postgres_dsn)
    try:
        await server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        not_ready = await api.http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"] == "application/problem+json"
        assert not_ready.json()["detail"] == "not ready"
        assert (await api.http.get("/healthz")).status_code == 200

        await server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert (await api.http.get("/readyz")).status_code == 200
    finally:
        await server.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await server.close()
