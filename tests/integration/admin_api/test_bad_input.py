"""Bad requests get a clear 4xx problem document and change nothing in the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.tenant_config.policy import PolicySettings
from tests.integration.admin_api.harness import SECRET_ENV, YAML, Api, bearer, problem, serving, tenant_yaml

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


# ---------------------------------------------------------------------------------------------
# The deployment's policy: which secret variables a tenant may name, which hosts it may send them to

INSTANCE = "instanceUrl: https://acme.my.salesforce.com\n"
LOGIN = "loginUrl: https://login.salesforce.com\n"
SECRET = f"clientSecret: {{secretRef: {{env: {SECRET_ENV}}}}}"
NOT_SALESFORCE = "nor one this deployment lists in DUPLEX_SALESFORCE_HOSTS"
INVALID_DOCUMENT = "urn:duplex:problem:invalid-document"


def production(salesforce_hosts: str = "") -> PolicySettings:
    """The policy of a deployment that is not for development."""
    return PolicySettings(secret_env_prefix="DUPLEX_SECRET_", salesforce_hosts=salesforce_hosts, development=False)


def swap(text: str, old: str, new: str) -> str:
    assert old in text, f"the sample tenant no longer has {old!r}"
    return text.replace(old, new, 1)


def with_hosts(instance: str | None = None, login: str | None = None, name: str = "acme") -> str:
    text = tenant_yaml(name)
    if instance is not None:
        text = swap(text, INSTANCE, f"instanceUrl: {instance}\n")
    if login is not None:
        text = swap(text, LOGIN, f"loginUrl: {login}\n")
    return text


async def refused_document(api: Api, token: str, text: str, name: str = "acme") -> dict[str, str]:
    """Apply and validate ``text``: both 422 with the same errors, and nothing stored; the errors by field."""
    applied = await refused(api, 422, "PUT", f"/api/v1/tenants/{name}", content=text, headers={**YAML, **bearer(token)})
    validated = await refused(
        api, 422, "POST", "/api/v1/tenants:validate", content=text, headers={**YAML, **bearer(token)}
    )
    assert applied["type"] == validated["type"] == INVALID_DOCUMENT
    assert applied["errors"] == validated["errors"]
    return {e["field"]: e["message"] for e in applied["errors"]}


async def test_a_secret_outside_the_prefix_is_refused(api: Api, admin: str) -> None:
    text = swap(tenant_yaml(), SECRET, "clientSecret: {secretRef: {env: POSTGRES_DSN}}")
    errors = await refused_document(api, admin, text)
    assert errors == {
        "spec.salesforce.auth.clientSecret.secretRef.env": "names a variable outside DUPLEX_SECRET_*, the prefix "
        "this deployment allows for tenant secrets; rename the variable to DUPLEX_SECRET_POSTGRES_DSN"
    }
    # For a new tenant, beside a problem of another kind: every problem in one answer.
    other = swap(swap(text, "name: acme\n", "name: globex\n"), "mode: oauth_pkce", "mode: client_credentials")
    body = await refused(api, 422, "PUT", "/api/v1/tenants/globex", content=other, headers={**YAML, **bearer(admin)})
    assert [e["field"] for e in body["errors"]] == [
        "spec.salesforce.auth.scopes",
        "spec.salesforce.auth.clientSecret.secretRef.env",
    ]
    assert body["detail"] == "the document has 2 problems; see errors"


async def test_login_and_instance_urls_off_the_list_are_refused(api: Api, admin: str) -> None:
    errors = await refused_document(
        api, admin, with_hosts("https://acme.my.salesforce.com.evil.io", "https://login.salesforce.com.evil.io")
    )
    assert errors == {
        "spec.salesforce.instanceUrl": "acme.my.salesforce.com.evil.io is not a Salesforce host (login.salesforce.com, "
        f"test.salesforce.com, *.my.salesforce.com) {NOT_SALESFORCE}",
        "spec.salesforce.loginUrl": "login.salesforce.com.evil.io is not a Salesforce host (login.salesforce.com, "
        f"test.salesforce.com, *.my.salesforce.com) {NOT_SALESFORCE}",
    }
    lookalike = await refused_document(api, admin, with_hosts(instance="https://evilmy.salesforce.com"))
    assert list(lookalike) == ["spec.salesforce.instanceUrl"]
    # Salesforce's own hosts, sandboxes included, are accepted.
    sandbox = with_hosts("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com")
    assert (await api.apply(admin, sandbox)).status_code == 200


async def test_localhost_only_when_the_deployment_is_for_development(api: Api, admin: str, migrated: str) -> None:
    local = with_hosts("https://127.0.0.1:8443", "http://localhost:8080")
    async with serving(migrated, policy=production()) as strict:
        token = await strict.token()
        errors = await refused_document(strict, token, local)
    rule = "localhost is only allowed when the deployment is for development (DUPLEX_DEVELOPMENT=true)"
    assert errors == {"spec.salesforce.instanceUrl": rule, "spec.salesforce.loginUrl": rule}
    # The harness's deployment is one for development.
    accepted = await api.apply(admin, local)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["version"] == 2


async def test_a_host_the_deployment_lists_is_accepted(api: Api, admin: str, migrated: str) -> None:
    proxied = with_hosts("https://acme.my.sfcrmproducts.cn", "https://sf-proxy.corp")
    listed = await refused_document(api, admin, proxied)
    assert list(listed) == ["spec.salesforce.instanceUrl", "spec.salesforce.loginUrl"]
    async with serving(migrated, policy=production("sf-proxy.corp, *.sfcrmproducts.cn")) as lists:
        token = await lists.token()
        applied = await lists.apply(token, proxied)
        assert applied.status_code == 200, applied.text
        # A wildcard is every host under the name, not a name that merely ends like it.
        errors = await refused_document(lists, token, with_hosts("https://acme.evilsfcrmproducts.cn"))
    assert list(errors) == ["spec.salesforce.instanceUrl"]


async def test_restoring_a_version_the_policy_now_refuses(api: Api, admin: str, migrated: str) -> None:
    # Version 2 went through a deployment that listed the proxy; version 3 is back on Salesforce's host.
    async with serving(migrated, policy=production("sf-proxy.corp")) as lenient:
        token = await lenient.token()
        assert (await lenient.apply(token, with_hosts(login="https://sf-proxy.corp"))).status_code == 200
    assert (await api.apply(admin, tenant_yaml(cap=6000))).status_code == 200

    body = await refused(api, 422, "POST", "/api/v1/tenants/acme/versions/2:restore", headers=bearer(admin))
    assert body["type"] == INVALID_DOCUMENT
    assert body["detail"] == "version 2 is not allowed by this deployment's policy (1 problem); see errors"
    assert body["errors"] == [
        {
            "field": "spec.salesforce.loginUrl",
            "message": "sf-proxy.corp is not a Salesforce host (login.salesforce.com, test.salesforce.com, "
            f"*.my.salesforce.com) {NOT_SALESFORCE}",
        }
    ]
    # A version the policy allows is still restored.
    restored = await api.http.post("/api/v1/tenants/acme/versions/1:restore", headers=bearer(admin))
    assert restored.status_code == 200, restored.text
    assert restored.json()["version"] == 4
