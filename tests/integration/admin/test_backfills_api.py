"""``POST /api/v1/tenants/{tenant}/backfills``: bad input is a clear 4xx and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.admin.conftest import Cli
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration

URL = "/api/v1/tenants/acme/backfills"


@pytest.mark.parametrize(
    ("request_args", "status", "errors"),
    [
        ({"json": {}}, 422, [{"field": "object", "message": "Field required"}]),
        ({"json": {"object": ""}}, 422, [{"field": "object", "message": "String should have at least 1 character"}]),
        ({"json": {"object": 7}}, 422, [{"field": "object", "message": "Input should be a valid string"}]),
        (
            {"json": {"object": "Account", "method": "bulk"}},
            422,
            [{"field": "method", "message": "unknown field (allowed: object)"}],
        ),
        ({"content": b'{"object": "Account"', "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"object: Account", "headers": {"content-type": "application/yaml"}}, 415, None),
        ({"json": ["Account"]}, 422, None),
    ],
)
async def test_bad_bodies_change_nothing(
    cli: Cli, sample: Path, request_args: dict[str, Any], status: int, errors: list[dict[str, str]] | None
) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    before = await cli.api.snapshot()
    headers = {**request_args.pop("headers", {}), **bearer(cli.admin)}

    answer = await cli.api.http.post(URL, headers=headers, **request_args)

    body = problem(answer, status)
    if errors is not None:
        assert body["errors"] == errors
    assert await cli.api.snapshot() == before
    assert await cli.api.db.fetchval("SELECT count(*) FROM backfills") == 0
