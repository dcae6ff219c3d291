"""/api/v1/tenants against a real PostgreSQL: apply, show, versions, diff, restore, delete, audit."""

from __future__ import annotations

import json

import pytest

from services.admin.auth import Role
from services.common.config_provider import TenantConfigs
from services.common.tenant_config import fetch_config, parse_config_file, to_document
from tests.integration.admin_api.harness import YAML, Api, bearer, problem, tenant_yaml

pytestmark = pytest.mark.integration


async def test_apply_creates_then_keeps_then_versions(api: Api) -> None:
    admin = await api.token(name="deployer")

    created = await api.apply(admin, tenant_yaml())
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "acme", "version": 1, "changed": True, "created": True, "warnings": []}

    same = await api.apply(admin, tenant_yaml())
    assert same.status_code == 200
    assert same.json() == {"name": "acme", "version": 1, "changed": False, "created": False, "warnings": []}

    # JSON is as good as YAML; the canonical form decides whether anything changed.
    (config,) = parse_config_file("acme.yaml", tenant_yaml(cap=6000))
    changed = await api.http.put(
        "/api/v1/tenants/acme", json=to_document(config), headers=bearer(admin) | {"x-request-id": "req-42"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    assert changed.headers["x-request-id"] == "req-42"

    stored = await fetch_config(api.db, "acme")
    assert stored is not None
    assert stored.version == 2
    assert stored.config.spec.salesforce.daily_api_cap == 6000
    token_id = await api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'deployer'")
    actor = f"deployer (token {token_id})"
    assert stored.applied_by == actor

    audit = [
        (r["actor"], r["action"], r["request_id"], json.loads(r["detail"]))
        for r in await api.db.fetch(
            "SELECT actor, action, request_id, detail FROM audit_log WHERE tenant_id = 'acme' ORDER BY id"
        )
    ]
    assert [a[:2] for a in audit] == [(actor, "tenant.created"), (actor, "config.applied"), (actor, "config.applied")]
    assert audit[2][2] == "req-42"
    assert audit[2][3]["version"] == 2
    assert audit[2][3]["previousVersion"] == 1
    # Without the caller's id, the API makes one up: every change has one.
    assert len(audit[0][2]) == 32
    assert audit[0][2] == audit[1][2]


async def test_show_versions_and_one_version(api: Api) -> None:
    admin = await api.token()
    viewer = await api.token(Role.VIEWER)
    await api.apply(admin, tenant_yaml(cap=100))
    await api.apply(admin, tenant_yaml(cap=200))

    current = await api.http.get("/api/v1/tenants/acme", headers=bearer(viewer))
    assert current.status_code == 200
    body = current.json()
    assert body["name"] == "acme"
    assert body["version"] == 2
    assert body["document"]["spec"]["salesforce"]["dailyApiCap"] == 200
    assert len(body["sha256"]) == 64

    versions = await api.http.get("/api/v1/tenants/acme/versions", headers=bearer(viewer))
    assert [v["version"] for v in versions.json()["items"]] == [1, 2]

    first = await api.http.get("/api/v1/tenants/acme/versions/1", headers=bearer(viewer))
    assert first.json()["document"]["spec"]["salesforce"]["dailyApiCap"] == 100

    missing = problem(await api.http.get("/api/v1/tenants/acme/versions/9", headers=bearer(viewer)), 404)
    assert missing["detail"] == "tenant 'acme' has no version 9"
    bad = problem(await api.http.get("/api/v1/tenants/acme/versions/0", headers=bearer(viewer)), 422)
    assert [e["field"] for e in bad["errors"]] == ["path.version"]


async def test_list_shows_only_tenants_in_scope(api: Api) -> None:
    admin = await api.token()
    for name in ("acme", "globex", "initech"):
        assert (await api.apply(admin, tenant_yaml(name), name)).status_code == 201
    scoped = await api.token(Role.VIEWER, ["globex", "initech", "not-yet"])

    every = await api.http.get("/api/v1/tenants", headers=bearer(admin))
    assert [t["name"] for t in every.json()["items"]] == ["acme", "globex", "initech"]
    some = await api.http.get("/api/v1/tenants", headers=bearer(scoped))
    assert [(t["name"], t["version"]) for t in some.json()["items"]] == [("globex", 1), ("initech", 1)]

    # Out of scope looks exactly like missing.
    hidden = problem(await api.http.get("/api/v1/tenants/acme", headers=bearer(scoped)), 404)
    absent = problem(await api.http.get("/api/v1/tenants/not-yet", headers=bearer(scoped)), 404)
    assert hidden.pop("requestId") != absent.pop("requestId")
    assert hidden == absent | {"detail": "no tenant 'acme'"}


async def test_the_document_must_name_the_tenant_of_the_path(api: Api) -> None:
    admin = await api.token()
    before = await api.snapshot()
    body = problem(await api.apply(admin, tenant_yaml("globex"), "acme"), 422)
    assert body["errors"] == [{"field": "metadata.name", "message": "must be 'acme' as in the path (got 'globex')"}]
    assert await api.snapshot() == before


async def test_diff_between_versions(api: Api) -> None:
    admin = await api.token()
    await api.apply(admin, tenant_yaml(cap=100))
    await api.apply(admin, tenant_yaml(cap=200).replace("cdc: true", "cdc: false"))

    diff = await api.http.get("/api/v1/tenants/acme/diff", params={"from": 1}, headers=bearer(admin))
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert (body["from"], body["to"]) == (1, 2)
    assert body["changes"] == [
        {"path": "spec.salesforce.dailyApiCap", "change": "changed", "before": 100, "after": 200},
        {"path": "spec.sync.cdc", "change": "changed", "before": True, "after": False},
    ]
    assert "-    dailyApiCap: 100\n+    dailyApiCap: 200\n" in body["unified"]
    assert body["unified"].startswith("--- acme v1\n+++ acme v2\n")

    same = await api.http.get("/api/v1/tenants/acme/diff", params={"from": 2, "to": 2}, headers=bearer(admin))
    assert same.json()["changes"] == []
    assert same.json()["unified"] == ""
    problem(await api.http.get("/api/v1/tenants/acme/diff", params={"from": 3}, headers=bearer(admin)), 404)
    missing_from = problem(await api.http.get("/api/v1/tenants/acme/diff", headers=bearer(admin)), 422)
    assert [e["field"] for e in missing_from["errors"]] == ["query.from"]


async def test_restore_stores_the_old_document_as_a_new_version(api: Api) -> None:
    admin = await api.token(name="restorer")
    await api.apply(admin, tenant_yaml(cap=100))
    await api.apply(admin, tenant_yaml(cap=200))

    restored = await api.http.post("/api/v1/tenants/acme/versions/1:restore", headers=bearer(admin))
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"name": "acme", "version": 3, "changed": True, "created": False, "warnings": []}
    stored = await fetch_config(api.db, "acme")
    assert stored is not None
    assert stored.config.spec.salesforce.daily_api_cap == 100
    detail = json.loads(
        await api.db.fetchval("SELECT detail FROM audit_log WHERE action = 'config.restored' AND tenant_id = 'acme'")
    )
    assert detail["restoredFrom"] == 1
    assert detail["version"] == 3
    assert detail["previousVersion"] == 2

    # Restoring what is current changes nothing.
    again = await api.http.post("/api/v1/tenants/acme/versions/3:restore", headers=bearer(admin))
    assert again.json()["changed"] is False
    assert again.json()["version"] == 3
    problem(await api.http.post("/api/v1/tenants/acme/versions/7:restore", headers=bearer(admin)), 404)
    problem(await api.http.post("/api/v1/tenants/nobody/versions/1:restore", headers=bearer(admin)), 404)


async def test_delete_stops_every_service_seeing_the_tenant_and_keeps_history(api: Api) -> None:
    admin = await api.token(name="offboarder")
    await api.apply(admin, tenant_yaml("acme"), "acme")
    await api.apply(admin, tenant_yaml("acme", cap=10), "acme")
    await api.apply(admin, tenant_yaml("globex"), "globex")

    deleted = await api.http.delete("/api/v1/tenants/acme", headers=bearer(admin))
    assert deleted.status_code == 204
    assert deleted.content == b""

    # What the services read: cdc-ingest's list of tenants to lease, and every configuration read.
    assert [r[0] for r in await api.db.fetch("SELECT DISTINCT tenant_id FROM config_versions")] == ["globex"]
    assert await fetch_config(api.db, "acme") is None
    assert await fetch_config(api.db, "acme", 1) is None
    assert await TenantConfigs(max_staleness=0).current(api.db, "acme") is None
    # The admin's history and the audit trail stay.
    assert await api.db.fetchval("SELECT count(*) FROM config_history WHERE tenant_id = 'acme'") == 2
    action, detail = await api.db.fetchrow(
        "SELECT action, detail FROM audit_log WHERE tenant_id = 'acme' ORDER BY id DESC LIMIT 1"
    )
    assert (action, json.loads(detail)) == ("tenant.deleted", {"version": 2})

    for path in ("/api/v1/tenants/acme", "/api/v1/tenants/acme/versions", "/api/v1/tenants/acme/versions/1"):
        problem(await api.http.get(path, headers=bearer(admin)), 404)
    problem(await api.http.delete("/api/v1/tenants/acme", headers=bearer(admin)), 404)
    listed = await api.http.get("/api/v1/tenants", headers=bearer(admin))
    assert [t["name"] for t in listed.json()["items"]] == ["globex"]

    # Applying again brings it back with the next version number: no number ever names two documents.
    back = await api.apply(admin, tenant_yaml("acme"), "acme")
    assert back.status_code == 201
    assert back.json() == {"name": "acme", "version": 3, "changed": True, "created": True, "warnings": []}
    assert [
        v["version"]
        for v in (await api.http.get("/api/v1/tenants/acme/versions", headers=bearer(admin))).json()["items"]
    ] == [1, 2, 3]
    actions = [r[0] for r in await api.db.fetch("SELECT action FROM audit_log WHERE tenant_id = 'acme' ORDER BY id")]
    assert actions[-2:] == ["tenant.recreated", "config.applied"]


async def test_validate_answers_like_the_cli(api: Api) -> None:
    viewer = await api.token(Role.VIEWER)
    before = await api.snapshot()
    valid = await api.http.post("/api/v1/tenants:validate", content=tenant_yaml(), headers={**YAML, **bearer(viewer)})
    assert valid.status_code == 200, valid.text
    assert valid.json() == {"name": "acme", "valid": True, "objectPairs": 2, "fields": 22, "warnings": []}

    broken = tenant_yaml().replace("conflictPolicy: app_wins", "conflictPolicy: app-wins", 1)
    body = problem(
        await api.http.post("/api/v1/tenants:validate", content=broken, headers={**YAML, **bearer(viewer)}), 422
    )
    # `duplex config validate` prints: <file>: spec.objects[0].fields[3].conflictPolicy: must be one of ...
    assert body["errors"] == [
        {
            "field": "spec.objects[0].fields[3].conflictPolicy",
            "message": "must be one of app_wins, crm_wins, newest_wins, app_unless_blank, crm_unless_blank "
            "(got 'app-wins')",
        }
    ]
    assert body["type"] == "urn:duplex:problem:invalid-document"
    assert await api.snapshot() == before


async def test_a_newer_salesforce_api_version_is_a_warning(api: Api) -> None:
    admin = await api.token()
    newer = tenant_yaml().replace('apiVersion: "62.0"', 'apiVersion: "99.0"', 1)
    applied = await api.apply(admin, newer)
    assert applied.status_code == 201, applied.text
    (warning,) = applied.json()["warnings"]
    assert warning["field"] == "spec.salesforce.apiVersion"
    assert warning["message"].startswith("99.0 is newer than the latest Salesforce API version Duplex knows")


async def test_versions_can_still_be_written_through_the_view(api: Api) -> None:
    # Test harnesses and the benchmark insert versions into config_versions directly.
    admin = await api.token()
    await api.apply(admin, tenant_yaml())
    document = await api.db.fetchval("SELECT document FROM config_history WHERE version = 1")
    await api.db.execute(
        "INSERT INTO config_versions (tenant_id, version, document, sha256, applied_by)"
        " VALUES ('acme', 2, $1::jsonb, repeat('a', 64), 'harness')",
        document,
    )
    assert [r[0] for r in await api.db.fetch("SELECT applied_by FROM config_history ORDER BY version")] == [
        f"admin-token (token {await api.db.fetchval('SELECT id::text FROM api_tokens')})",
        "harness",
    ]
