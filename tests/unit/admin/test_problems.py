"""Problem documents (RFC 9457): rendering, and every error path that needs no database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.admin.api.application import build_api
from services.admin.api.problems import ApiError, FieldError, field_name, render
from services.common.service import Health

pytestmark = pytest.mark.unit

LIMIT = 100


class NoPool:
    """The routes tested here must never reach the database."""

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        raise AssertionError("the database was used")


@pytest.fixture
def app() -> FastAPI:
    return build_api(pool=NoPool(), health=Health(), max_body_bytes=LIMIT)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["requestId"] == response.headers["x-request-id"]
    return body


def test_render_the_members_that_are_set() -> None:
    assert render(ApiError(404)) == {"type": "about:blank", "title": "Not Found", "status": 404}
    rendered = render(
        ApiError(
            422,
            "two problems",
            title="Invalid tenant document",
            type="urn:duplex:problem:invalid-document",
            errors=[FieldError("spec.x", "required"), FieldError("kind", "must be Tenant")],
        ),
        request_id="r-1",
    )
    assert rendered == {
        "type": "urn:duplex:problem:invalid-document",
        "title": "Invalid tenant document",
        "status": 422,
        "detail": "two problems",
        "errors": [{"field": "spec.x", "message": "required"}, {"field": "kind", "message": "must be Tenant"}],
        "requestId": "r-1",
    }


@pytest.mark.parametrize(
    ("loc", "name"),
    [
        (("body", "tenants", 0), "tenants[0]"),
        (("body",), "body"),
        (("query", "from"), "query.from"),
        (("path", "version"), "path.version"),
    ],
)
def test_field_names(loc: tuple[str | int, ...], name: str) -> None:
    assert field_name(loc) == name


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    body = problem(await http.get("/nope"), 404)
    assert body.pop("requestId")
    assert body == {"type": "about:blank", "title": "Not Found", "status": 404}
    method = await http.post("/healthz")
    assert problem(method, 405)["title"] == "Method Not Allowed"
    assert method.headers["allow"] == "GET"


async def test_request_ids_are_kept_when_plausible_and_replaced_otherwise(http: httpx.AsyncClient) -> None:
    kept = await http.get("/healthz", headers={"x-request-id": "trace-1:span.2"})
    assert kept.headers["x-request-id"] == "trace-1:span.2"
    for odd in ("x" * 129, "two words", "<script>"):
        replaced = await http.get("/healthz", headers={"x-request-id": odd})
        assert len(replaced.headers["x-request-id"]) == 32
    first, second = await http.get("/healthz"), await http.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_declared_oversized_body_is_refused_before_routing(http: httpx.AsyncClient) -> None:
    refused = await http.post("/nope", content=b"x" * (LIMIT + 1))
    assert problem(refused, 413)["detail"] == f"the request body is larger than {LIMIT} bytes"
    assert refused.headers["connection"] == "close"
    # At the limit, the request goes on (here, to a 404).
    problem(await http.post("/nope", content=b"x" * LIMIT), 404)


async def test_an_unexpected_error_is_a_bare_500(app: FastAPI, http: httpx.AsyncClient) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: postgresql://user:hunter2@db/duplex")

    response = await http.get("/boom")
    body = problem(response, 500)
    assert body["detail"] == f"an unexpected error occurred; see the server log (request {body['requestId']})"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


async def test_a_database_error_is_a_503_without_its_details(app: FastAPI, http: httpx.AsyncClient) -> None:
    @app.get("/db")
    async def db() -> None:
        raise ConnectionRefusedError("connect to 10.0.0.7:5432 refused")

    response = await http.get("/db")
    assert problem(response, 503)["detail"] == "the database is unavailable; try again later"
    assert "10.0.0.7" not in response.text


async def test_health_answers_from_the_checks(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ok"}


async def test_not_ready_is_a_503_problem() -> None:
    async def no() -> bool:
        return False

    app = build_api(pool=NoPool(), health=Health(live=(no,), ready=(no,)), max_body_bytes=LIMIT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as http:
        assert problem(await http.get("/readyz"), 503)["detail"] == "not ready"
        assert problem(await http.get("/healthz"), 503)["detail"] == "not live"


async def test_no_token_is_401_without_touching_the_database(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/tenants")
    assert problem(response, 401)["detail"] == "send an API token: Authorization: Bearer dpx_..."
    assert response.headers["www-authenticate"] == 'Bearer realm="duplex"'
    # Neither is a credential that is no API token, with no OIDC configured.
    other = await http.get("/api/v1/tenants", headers={"authorization": "Bearer eyJ.e30.x"})
    assert problem(other, 401)["detail"] == "the bearer token is invalid, expired or revoked"


def test_the_openapi_document_declares_bearer_auth_and_problem_free_schemas(app: FastAPI) -> None:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`dpx_...`) or, when the server is configured for it, an OIDC access token.",
    }
    # Bodies are read by the routes, and documented by hand: no dangling $defs references.
    assert "$defs" not in str(document)
    token_body = document["paths"]["/api/v1/tokens"]["post"]["requestBody"]["content"]["application/json"]
    assert token_body["schema"]["required"] == ["name", "role"]
