"""The authorization table: EVERY operation of the OpenAPI document, called by every kind of caller.

A route added without the access dependency answers an anonymous caller, and a route missing from
:data:`TABLE` has no expected answers: either fails here (the last test proves the first).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from services.admin.auth import Role
from services.common import sync_log
from services.common.jobs import ActiveJobError, request_job
from services.common.schema import AppField, AppObject, CrmObject
from services.common.schema_store import declare_app_object, save_catalog, save_described
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames
from tests.e2e.sync.harness import producer
from tests.integration.admin_api.harness import YAML, Api, bearer, serving, tenant_yaml

pytestmark = pytest.mark.integration


class Needs(Enum):
    NOTHING = "public"
    # The OAuth callback: a browser back from Salesforce, authenticated by the state it carries and
    # by nothing else. Without a valid state every caller, token or not, gets 400 and no token helps.
    OAUTH_STATE = "a pending authorization's state"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    GLOBAL_ADMIN = "admin of every tenant"


# Who may call what. Adding a route means adding it here, with the least that may call it.
TABLE: dict[tuple[str, str], Needs] = {
    ("GET", "/healthz"): Needs.NOTHING,
    ("GET", "/readyz"): Needs.NOTHING,
    ("GET", "/api/v1/tenants"): Needs.VIEWER,
    ("POST", "/api/v1/tenants:validate"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}"): Needs.VIEWER,
    ("PUT", "/api/v1/tenants/{tenant}"): Needs.ADMIN,
    ("DELETE", "/api/v1/tenants/{tenant}"): Needs.ADMIN,
    ("GET", "/api/v1/tenants/{tenant}/versions"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/versions/{version}"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/versions/{version}:restore"): Needs.ADMIN,
    ("GET", "/api/v1/tenants/{tenant}/diff"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/connection"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/connection:authorize"): Needs.ADMIN,
    ("POST", "/api/v1/tenants/{tenant}/connection:revoke"): Needs.ADMIN,
    ("POST", "/api/v1/tenants/{tenant}/connection:check"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/backfills"): Needs.OPERATOR,
    ("GET", "/api/v1/tenants/{tenant}/backfills"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/backfills/{object}"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/jobs"): Needs.OPERATOR,
    ("GET", "/api/v1/tenants/{tenant}/jobs"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/jobs/{job_id}"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/health"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/throughput"): Needs.VIEWER,
    ("GET", "/api/v1/overview"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/sync-log"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/records/{record}/timeline"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/dead-letters"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/dead-letters:replay"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/dead-letters:discard"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/retries"): Needs.OPERATOR,
    ("GET", "/api/v1/tenants/{tenant}/pauses"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/pause"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/resume"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/schema:refresh"): Needs.OPERATOR,
    ("GET", "/api/v1/tenants/{tenant}/schema/objects"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/schema/objects/{object}"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/schema/drift"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/app-schema"): Needs.VIEWER,
    ("GET", "/api/v1/tenants/{tenant}/app-schema/{object}"): Needs.VIEWER,
    ("PUT", "/api/v1/tenants/{tenant}/app-schema/{object}"): Needs.ADMIN,
    ("GET", "/api/v1/tenants/{tenant}/pairs/{pair}/suggestions"): Needs.VIEWER,
    ("POST", "/api/v1/tenants/{tenant}/pairs/{pair}/filter:validate"): Needs.OPERATOR,
    ("POST", "/api/v1/tenants/{tenant}/plan"): Needs.OPERATOR,
    ("GET", "/api/v1/oauth/callback"): Needs.OAUTH_STATE,
    ("GET", "/api/v1/me"): Needs.VIEWER,
    ("POST", "/api/v1/tokens"): Needs.GLOBAL_ADMIN,
    ("GET", "/api/v1/tokens"): Needs.GLOBAL_ADMIN,
    ("DELETE", "/api/v1/tokens/{token_id}"): Needs.GLOBAL_ADMIN,
}
# A body each operation accepts, so that an allowed call succeeds rather than failing on input.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/tenants:validate"): {"content": tenant_yaml(), "headers": YAML},
    ("PUT", "/api/v1/tenants/{tenant}"): {"content": tenant_yaml(), "headers": YAML},
    ("POST", "/api/v1/tenants/{tenant}/plan"): {"content": tenant_yaml(), "headers": YAML},
    ("POST", "/api/v1/tokens"): {"json": {"name": "made by the table", "role": "viewer"}},
    ("POST", "/api/v1/tenants/{tenant}/backfills"): {"json": {"object": "Account"}},
    ("POST", "/api/v1/tenants/{tenant}/jobs"): {"json": {"kind": "reconcile", "objectPair": "partners"}},
    ("POST", "/api/v1/tenants/{tenant}/pause"): {"json": {"direction": "to_app", "reason": "made by the table"}},
    ("POST", "/api/v1/tenants/{tenant}/resume"): {"json": {"direction": "to_app"}},
    ("POST", "/api/v1/tenants/{tenant}/schema:refresh"): {"json": {}},
    ("POST", "/api/v1/tenants/{tenant}/pairs/{pair}/filter:validate"): {"json": {"soql": "Name = 'x'"}},
    ("PUT", "/api/v1/tenants/{tenant}/app-schema/{object}"): {"json": {"fields": [{"name": "made_by_the_table"}]}},
    # Nothing there to replay; the dead letter the api fixture put there (discarding it again is a no-op).
    ("POST", "/api/v1/tenants/{tenant}/dead-letters:replay"): {"json": {"all": True, "topic": "crm_changes"}},
    ("POST", "/api/v1/tenants/{tenant}/dead-letters:discard"): {
        "json": {"ids": ["app_changes_dlq:0:0"], "reason": "made by the table"}
    },
    # Nothing rejected to retry: 202, none requested.
    ("POST", "/api/v1/tenants/{tenant}/retries"): {"json": {"since": "2026-01-01T00:00:00Z"}},
}
# What an allowed caller gets where the table's tenant cannot give more: acme was never connected,
# and the Account described below has no fields for a filter to name.
WHEN_ALLOWED: dict[tuple[str, str], int] = {
    ("POST", "/api/v1/tenants/{tenant}/schema:refresh"): 409,
    ("POST", "/api/v1/tenants/{tenant}/pairs/{pair}/filter:validate"): 422,
}
_METHODS = {"get", "put", "post", "delete", "patch"}


@dataclass(frozen=True)
class Caller:
    name: str
    token: str | None
    role: Role | None
    # Sees the tenant every path names ("acme")?
    in_scope: bool


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation; destructive ones last, so the rest find acme."""
    found = [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in _METHODS
    ]
    return sorted(found, key=lambda o: o[0] == "DELETE")


def expected(needs: Needs, caller: Caller, path: str) -> int | None:
    """The status the caller must get, or None for "allowed": any answer below 400."""
    if needs is Needs.NOTHING:
        return None
    if needs is Needs.OAUTH_STATE:
        return 400
    if caller.role is None:
        return 401
    if "{tenant}" in path and not caller.in_scope:
        return 404
    rank = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
    least = {Needs.VIEWER: Role.VIEWER, Needs.OPERATOR: Role.OPERATOR}.get(needs, Role.ADMIN)
    if rank.index(caller.role) < rank.index(least):
        return 403
    if needs is Needs.GLOBAL_ADMIN and not caller.in_scope:
        return 403
    return None


async def walk(api: Api, app: FastAPI, callers: list[Caller], table: dict[tuple[str, str], Needs]) -> list[str]:
    """Every call whose answer differs from the table (or that the table does not know), as text."""
    victim = await api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'victim'")
    # A record the timeline finds and a backfill there is (unknown ones are a 404 for everyone).
    await sync_log.record(api.db, tenant_id="acme", service="mapping", event="change.rejected", record_id="a-1")
    try:
        job = await request_job(api.db, "acme", "backfill", "partners", "Account", "operator", "table")
    except ActiveJobError as active:  # a second walk over the same tenant
        job = active.job
    # An org read once and an app object declared, so the schema routes have something to show.
    await save_catalog(api.db, "acme", [])
    await save_described(api.db, "acme", "Account", CrmObject("Account", "Account"), cdc_selected=None)
    for app_object in ("Account", "partners"):
        await declare_app_object(api.db, "acme", AppObject(app_object, (AppField("name"),)), "table")
    values = {
        "tenant": "acme",
        "version": "1",
        "token_id": victim,
        "record": "a-1",
        "object": "Account",
        "pair": "partners",
        "job_id": str(job.id),
    }
    wrong = []
    for caller in callers:
        for method, path, operation in operations(app.openapi()):
            needs = table.get((method, path))
            if needs is None:
                wrong.append(f"{method} {path} is not in the authorization table")
                continue
            url = re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)
            params = {p["name"]: "1" for p in operation.get("parameters", []) if p["in"] == "query" and p["required"]}
            request = dict(BODIES.get((method, path), {}))
            headers = {**request.pop("headers", {}), **(bearer(caller.token) if caller.token else {})}
            response = await api.http.request(method, url, params=params, headers=headers, **request)
            want = expected(needs, caller, path)
            want = WHEN_ALLOWED.get((method, path)) if want is None else want
            got = response.status_code
            if (want is None and got >= 400) or (want is not None and got != want):
                wrong.append(f"{caller.name}: {method} {path} answered {got}, expected {want or '< 400'}")
            elif got == 401 and "www-authenticate" not in response.headers:
                wrong.append(f"{caller.name}: {method} {path} answered 401 without WWW-Authenticate")
            elif got >= 400 and response.headers["content-type"] != "application/problem+json":
                wrong.append(f"{caller.name}: {method} {path} answered {got} without a problem document")
    return wrong


@pytest.fixture
async def api(migrated: str, kafka_bootstrap: str, topic_names: TopicNames) -> AsyncIterator[Api]:
    """The API with Kafka, whose fresh dead-letter topic holds one of acme's entries at 0:0."""
    async with producer(kafka_bootstrap) as upstream:
        await upstream.publish(b"x", topic_names(Topic.APP_CHANGES_DLQ), key=b"acme/partners/p-1", partition=0)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    async with serving(migrated, kafka=kafka) as started:
        yield started


@pytest.fixture
async def callers(api: Api) -> list[Caller]:
    setup = await api.token(name="set-up")
    assert (await api.apply(setup, tenant_yaml())).status_code == 201
    await api.token(Role.VIEWER, name="victim")
    # The admin comes last: its calls change (and finally delete) what the others read.
    return [
        Caller("anonymous", None, None, in_scope=True),
        Caller("viewer", await api.token(Role.VIEWER), Role.VIEWER, in_scope=True),
        Caller("operator", await api.token(Role.OPERATOR), Role.OPERATOR, in_scope=True),
        Caller("admin of another tenant", await api.token(Role.ADMIN, ["elsewhere"]), Role.ADMIN, in_scope=False),
        Caller("viewer of another tenant", await api.token(Role.VIEWER, ["elsewhere"]), Role.VIEWER, in_scope=False),
        Caller("admin", await api.token(Role.ADMIN), Role.ADMIN, in_scope=True),
    ]


def test_the_table_names_every_operation_and_the_document_every_route(api: Api) -> None:
    app = api.running.app
    documented = {(method, path) for method, path, _ in operations(app.openapi())}
    assert documented == set(TABLE)
    # A route hidden from the document (include_in_schema=False) would escape the walk. The console's
    # pages are the one exception: they hold no authority, each calls these routes with the signed-in
    # user's credential (services/admin/console/web.py; tests/integration/console shows a viewer refused).
    routes = {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and not (route.path or "").startswith("/console")
        for method in route.methods or ()
    }
    assert routes == documented


async def test_every_operation_answers_every_caller_as_the_table_says(api: Api, callers: list[Caller]) -> None:
    assert await walk(api, api.running.app, callers, TABLE) == []
    # The walk really ran the admin's calls: the last of them deleted the tenant.
    assert await api.db.fetchval("SELECT deleted_at IS NOT NULL FROM tenants WHERE id = 'acme'")


async def test_a_route_without_the_access_dependency_fails_the_walk(api: Api, callers: list[Caller]) -> None:
    app = api.running.app

    @app.get("/api/v1/tenants/{tenant}/leak")
    async def leak(tenant: str) -> dict[str, str]:
        return {"tenant": tenant}

    app.openapi_schema = None  # documented again, with the new route
    table = {**TABLE, ("GET", "/api/v1/tenants/{tenant}/leak"): Needs.VIEWER}
    wrong = await walk(api, app, callers, table)
    assert wrong == [
        "anonymous: GET /api/v1/tenants/{tenant}/leak answered 200, expected 401",
        "admin of another tenant: GET /api/v1/tenants/{tenant}/leak answered 200, expected 404",
        "viewer of another tenant: GET /api/v1/tenants/{tenant}/leak answered 200, expected 404",
    ]
    unlisted = await walk(api, app, callers[:1], TABLE)
    assert unlisted == ["GET /api/v1/tenants/{tenant}/leak is not in the authorization table"]
