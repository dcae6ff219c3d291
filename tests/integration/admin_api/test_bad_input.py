"""Bad requests get a clear 4xx problem document and change nothing in the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.admin_api.harness import YAML, Api, bearer, problem, tenant_yaml

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
ONE_MIB = 1024 * 1024


@pytest.fixture
async def admin(api: Api) -> str:
    token = await api.token()
    assert (await api.apply(token, tenant_yaml())).status_code == 201
    return token


async def refused(api: Api, status: int, method: str, path: str, **request: Any) -> dict[str, Any]:
    """Send a request that must be refused with ``status`` and leave every table as it was."""
    before = await api.snapshot()
    body = problem(await api.http.request(method, path, **request), status)
    assert await api.snapshot() == before
    return body


async def test_malformed_json(api: Api, admin: str) -> None:
    headers = {**JSON, **bearer(admin)}
    body = await refused(api, 400, "PUT", "/api/v1/tenants/acme", content=b'{"apiVersion": ', headers=headers)
    assert body["type"] == "urn:duplex:problem:malformed-body"
    assert body["detail"] == "line 1, column 16: invalid JSON: Expecting value"
    token = await refused(api, 400, "POST", "/api/v1/tokens", content=b"{name: x}", headers=headers)
    assert token["detail"].startswith("line 1, column 2: invalid JSON: Expecting property name")
    duplicate = await refused(
        api, 400, "POST", "/api/v1/tokens", content=b'{"name": "a", "name": "b", "role": "admin"}', headers=headers
    )
    assert duplicate["detail"] == "invalid JSON: duplicate key 'name'"
    not_utf8 = await refused(api, 400, "POST", "/api/v1/tokens", content=b'{"name": "\xff"}', headers=headers)
    assert not_utf8["detail"] == "the body is not UTF-8 text"
    array = await refused(api, 422, "POST", "/api/v1/tokens", content=b"[]", headers=headers)
    assert array["detail"] == "the body must be a JSON object"


async def test_malformed_yaml_and_not_one_document(api: Api, admin: str) -> None:
    headers = {**YAML, **bearer(admin)}
    broken = await refused(
        api, 400, "PUT", "/api/v1/tenants/acme", content="apiVersion: duplex.dev/v1\nkind: [Tenant\n", headers=headers
    )
    assert broken["detail"].startswith("line 3, column 1: invalid YAML: ")
    two = await refused(
        api, 422, "PUT", "/api/v1/tenants/acme", content=tenant_yaml() + "---\n" + tenant_yaml(), headers=headers
    )
    assert two["detail"] == "the body must hold exactly one Tenant document (found 2 documents)"
    empty = await refused(api, 422, "POST", "/api/v1/tenants:validate", content="", headers=headers)
    assert empty["detail"] == "the body must hold exactly one Tenant document (found no document)"
    scalar = await refused(api, 422, "POST", "/api/v1/tenants:validate", content="just text", headers=headers)
    assert scalar["detail"] == "the document must be a mapping with apiVersion, kind, metadata and spec"


async def test_unknown_and_mistyped_fields(api: Api, admin: str) -> None:
    headers = bearer(admin)
    token = await refused(
        api, 422, "POST", "/api/v1/tokens", json={"name": 5, "rol": "admin", "tenants": "acme"}, headers=headers
    )
    assert token["errors"] == [
        {"field": "name", "message": "Input should be a valid string"},
        {"field": "role", "message": "Field required"},
        {"field": "tenants", "message": "Input should be a valid list"},
        {"field": "rol", "message": "unknown field (allowed: expiresIn, name, role, tenants)"},
    ]
    wrong = await refused(
        api,
        422,
        "POST",
        "/api/v1/tokens",
        json={"name": "x", "role": "root", "tenants": ["Acme"], "expires_in": "30d", "expiresIn": "1 month"},
        headers=headers,
    )
    assert [e["field"] for e in wrong["errors"]] == ["role", "tenants[0]", "expiresIn", "expires_in"]
    assert wrong["errors"][2]["message"].startswith("must be a whole number of hours, days or weeks")

    misspelt = tenant_yaml().replace("dailyApiCap: 5000", "dailyApiCaps: 5000\n    dailyApiCap: x", 1)
    document = await refused(
        api, 422, "PUT", "/api/v1/tenants/acme", content=misspelt, headers={**YAML, **bearer(admin)}
    )
    fields = {e["field"]: e["message"] for e in document["errors"]}
    assert fields["spec.salesforce.dailyApiCap"] == "must be a whole number (got 'x')"
    assert fields["spec.salesforce.dailyApiCaps"].startswith("unknown field (did you mean dailyApiCap? allowed: ")


async def test_wrong_or_missing_content_type(api: Api, admin: str) -> None:
    text = await refused(
        api,
        415,
        "PUT",
        "/api/v1/tenants/acme",
        content=tenant_yaml(),
        headers={"content-type": "text/plain", **bearer(admin)},
    )
    assert text["detail"] == "send the body as application/json or application/yaml"
    missing = await api.http.put("/api/v1/tenants/acme", content=tenant_yaml(), headers=bearer(admin))
    assert problem(missing, 415)
    assert missing.headers["accept"] == "application/json, application/yaml"
    await refused(
        api, 415, "POST", "/api/v1/tokens", content='{"name": "x", "role": "admin"}', headers={**YAML, **bearer(admin)}
    )


async def test_oversized_bodies_are_refused_before_they_are_read(api: Api, admin: str) -> None:
    big = tenant_yaml() + "#" * ONE_MIB
    declared = await refused(api, 413, "PUT", "/api/v1/tenants/acme", content=big, headers={**YAML, **bearer(admin)})
    assert declared["detail"] == f"the request body is larger than {ONE_MIB} bytes"

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit holds while the body streams in.
        for _ in range(20):
            yield b"#" * 65536

    streamed = await refused(
        api, 413, "PUT", "/api/v1/tenants/acme", content=chunks(), headers={**YAML, **bearer(admin)}
    )
    assert streamed["detail"] == declared["detail"]
    # Just under the limit is still read (and then judged on its content).
    fits = tenant_yaml() + "#" * (ONE_MIB - len(tenant_yaml()) - 1)
    assert (await api.apply(admin, fits)).status_code == 200


async def test_authentication_comes_before_the_body(api: Api, admin: str) -> None:
    for path, content, headers in [
        ("/api/v1/tokens", b"{not json", JSON),
        ("/api/v1/tenants:validate", b"kind: [", YAML),
        ("/api/v1/tokens", b"{}", {"content-type": "text/plain"}),
    ]:
        await refused(api, 401, "POST", path, content=content, headers=headers)


async def test_unknown_routes_and_methods(api: Api, admin: str) -> None:
    unknown = await refused(api, 404, "GET", "/api/v1/nothing-here", headers=bearer(admin))
    assert unknown["title"] == "Not Found"
    assert unknown["type"] == "about:blank"
    slash = await refused(api, 404, "GET", "/api/v1/tenants/", headers=bearer(admin))
    assert slash["title"] == "Not Found"
    method = await api.http.patch("/api/v1/tenants/acme", headers=bearer(admin))
    assert problem(method, 405)["title"] == "Method Not Allowed"
    assert method.headers["allow"] == "DELETE, GET, PUT"
    bad_query = await refused(api, 422, "GET", "/api/v1/tenants/acme/diff?from=one", headers=bearer(admin))
    assert bad_query["errors"] == [
        {"field": "query.from", "message": "Input should be a valid integer, unable to parse string as an integer"}
    ]
