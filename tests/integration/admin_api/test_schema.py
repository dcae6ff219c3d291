"""Schema discovery and drift against the emulator process: a refresh reads the org, stores each
mapped object's describe as a version, and, after an org admin deletes a mapped field, shortens one,
adds a picklist value and takes an object out of Change Data Capture, the next refresh names each
change, warns of the rules they touch (pausing the rule whose field is gone) and rewrites mapping's
describe, with no service restarted."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from simple_salesforce.api import Salesforce

from devstack.emulator import API_VERSION
from services.admin.auth import Role
from tests.integration.admin_api.connecting import DUPLEX_ID, SAMPLE_FIELDS, TIER, Connecting, Org
from tests.integration.admin_api.harness import bearer

pytestmark = pytest.mark.integration

CALL_OPTIONS_CLIENT = "duplex-test"


@pytest.fixture
async def document(connecting: Connecting, orgs: tuple[Org, Org]) -> dict[str, Any]:
    org = orgs[0]
    for sobject, fields in SAMPLE_FIELDS.items():
        connecting.emulator.admin("PUT", f"/orgs/{org.org_id}/objects/{sobject}", {"fields": fields})
    applied = await connecting.add_tenant("acme", org)
    await connecting.connect("acme")
    return applied


@pytest.fixture
def ready(document: dict[str, Any], orgs: tuple[Org, Org]) -> Org:
    return orgs[0]


async def refresh(connecting: Connecting, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    answer = await connecting.api.http.post(
        "/api/v1/tenants/acme/schema:refresh", json=body or {}, headers=bearer(token or connecting.admin)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def get(connecting: Connecting, path: str) -> Any:
    answer = await connecting.api.http.get(f"/api/v1/tenants/acme/{path}", headers=bearer(connecting.admin))
    assert answer.status_code == 200, answer.text
    return answer.json()


def org_client(connecting: Connecting, org: Org) -> Any:
    """simple-salesforce as the org's admin, through the org's own connected app."""
    alias = org.username.split("@")[1].split(".")[0]
    with connecting.emulator.http() as http:
        grant = {"grant_type": "password", "client_id": org.client_id, "client_secret": org.client_secret}
        answer = http.post(
            "/services/oauth2/token", data={**grant, "username": org.username, "password": f"{alias}-password"}
        )
    assert answer.status_code == 200, answer.text
    token = answer.json()
    session = requests.Session()
    session.trust_env, session.verify = False, connecting.emulator.ca_cert
    return Salesforce(
        instance_url=token["instance_url"], session_id=token["access_token"], version=API_VERSION, session=session
    )


def calls_by_duplex(connecting: Connecting, org: Org) -> int:
    usage = connecting.emulator.admin("GET", f"/orgs/{org.org_id}/usage").json()
    return int(usage["by_client"].get(CALL_OPTIONS_CLIENT, 0))


async def test_a_refresh_lists_the_org_and_stores_each_mapped_object(connecting: Connecting, ready: Org) -> None:
    region = {"name": "Region__c", "type": "picklist", "picklist_values": [{"value": "emea", "label": "EMEA"}]}
    connecting.emulator.admin(
        "PUT",
        f"/orgs/{ready.org_id}/metadata-types/Region_Mapping__mdt",
        {"label": "Region Mapping", "fields": [region], "records": [{"DeveloperName": "France", "Region__c": "emea"}]},
    )
    before = calls_by_duplex(connecting, ready)

    first = await refresh(connecting)

    assert first["objects"] == ["Account", "Contact"]
    assert (first["changes"], first["warnings"], first["failed"]) == ([], [], {})
    # Global describe, the CDC selection, and one describe per mapped object.
    assert first["apiCalls"] == 4
    assert calls_by_duplex(connecting, ready) - before == 4

    listed = await get(connecting, "schema/objects")
    kinds = {item["name"]: item["kind"] for item in listed["items"]}
    assert kinds["Account"] == "standard"
    account = next(i for i in listed["items"] if i["name"] == "Account")
    assert account["cdcSelected"] is True
    assert [i["name"] for i in (await get(connecting, "schema/objects?q=contact"))["items"]] == ["Contact"]
    assert kinds["Region_Mapping__mdt"] == "metadata"
    metadata = next(i for i in listed["items"] if i["name"] == "Region_Mapping__mdt")
    assert (metadata["queryable"], metadata["createable"], metadata["cdcSelected"]) == (True, False, False)

    described = await get(connecting, "schema/objects/account")
    assert (described["name"], described["version"], described["cdcSelected"]) == ("Account", 1, True)
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["Name"]["required"] is True
    assert fields["Tier__c"]["picklist"] == [
        {"value": v, "label": v, "active": True} for v in ("Gold", "Silver", "Bronze")
    ]
    assert fields["Duplex_Id__c"]["externalId"] is True
    assert fields["SystemModstamp"]["createable"] is False

    # Nothing changed: no new version, no change, no warning.
    again = await refresh(connecting)
    assert (again["changes"], again["warnings"]) == ([], [])
    assert (await get(connecting, "schema/objects/Account"))["version"] == 1
    assert (await get(connecting, "schema/drift"))["warnings"] == []


async def test_what_an_org_admin_changes_is_named_and_warned_of_and_mapping_sees_it(
    connecting: Connecting, ready: Org
) -> None:
    await refresh(connecting)
    admin = connecting.emulator.admin
    admin("DELETE", f"/orgs/{ready.org_id}/objects/Account/fields/Partner_Since__c")
    admin(
        "PUT",
        f"/orgs/{ready.org_id}/objects/Account",
        {"fields": [{**TIER, "picklist_values": ["Gold", "Silver", "Bronze", "Platinum"]}]},
    )
    admin("PUT", f"/orgs/{ready.org_id}/objects/Account", {"cdc_enabled": False})
    admin("PUT", f"/orgs/{ready.org_id}/objects/Contact", {"fields": [{**DUPLEX_ID, "length": 40}]})

    second = await refresh(connecting)

    assert sorted((c["object"], c["kind"], c["field"]) for c in second["changes"]) == [
        ("Account", "cdc_deselected", None),
        ("Account", "field_removed", "Partner_Since__c"),
        ("Account", "picklist_changed", "Tier__c"),
        ("Contact", "length_changed", "Duplex_Id__c"),
    ]
    picklist = next(c for c in second["changes"] if c["kind"] == "picklist_changed")
    assert picklist["message"] == "Account.Tier__c: picklist values added Platinum"
    warnings = {(w["objectPair"], w["change"]["kind"]): w for w in second["warnings"]}
    removed = warnings[("partners", "field_removed")]
    assert (removed["appField"], removed["paused"]) == ("partner_since", True)
    assert removed["message"] == (
        "Account.Partner_Since__c: deleted: pair partners, field partner_since is paused until the mapping is fixed"
    )
    assert warnings[("partners", "picklist_changed")]["paused"] is False
    assert warnings[("partners", "cdc_deselected")]["paused"] is False
    assert "external id" in warnings[("partner_contacts", "length_changed")]["message"]

    # Mapping's describe is rewritten at once: it skips the rule whose field is gone.
    stored = await connecting.api.db.fetchval(
        "SELECT fields FROM crm_object_fields WHERE tenant_id = 'acme' AND object_name = 'Account'"
    )
    assert "Partner_Since__c" not in json.loads(stored)
    assert "Tier__c" in json.loads(stored)

    logged = await connecting.api.db.fetch(
        "SELECT code, message, detail FROM sync_log WHERE tenant_id = 'acme' AND event = 'schema.drift'"
    )
    assert sorted(r["code"] for r in logged) == sorted(
        ["FIELD_REMOVED", "PICKLIST_CHANGED", "CDC_DESELECTED", "LENGTH_CHANGED"]
    )

    drift = await get(connecting, "schema/drift")
    standing = {(w["objectPair"], w["change"]["kind"], w["salesforceField"]) for w in drift["warnings"]}
    assert standing == {
        ("partners", "field_removed", "Partner_Since__c"),
        ("partners", "cdc_deselected", None),
    }
    assert len(drift["recent"]) == 4
    history = await get(connecting, "schema/objects/Account")
    assert (history["version"], history["cdcSelected"]) == (2, False)
    assert (await get(connecting, "schema/objects/Account?version=1"))["cdcSelected"] is True


async def test_app_objects_are_declared_in_versions(connecting: Connecting, ready: Org) -> None:
    fields = [
        {"name": "name", "label": "Company name", "required": True},
        {"name": "tier", "type": "picklist", "picklist": ["gold", "silver"]},
    ]
    url = "/api/v1/tenants/acme/app-schema/partners"
    first = await connecting.api.http.put(url, json={"fields": fields}, headers=bearer(connecting.admin))
    assert first.status_code == 200, first.text
    assert (first.json()["version"], first.json()["fields"][0]["required"]) == (1, True)
    same = await connecting.api.http.put(url, json={"fields": fields}, headers=bearer(connecting.admin))
    assert same.json()["version"] == 1
    changed = await connecting.api.http.put(url, json={"fields": fields[:1]}, headers=bearer(connecting.admin))
    assert changed.json()["version"] == 2
    assert [i["object"] for i in (await get(connecting, "app-schema"))["items"]] == ["partners"]

    twice = await connecting.api.http.put(
        url, json={"fields": [fields[0], fields[0]]}, headers=bearer(connecting.admin)
    )
    assert twice.status_code == 422
    assert "name" in twice.json()["detail"]
    bad = await connecting.api.http.put(
        url, json={"fields": [{"name": "x", "type": "text"}]}, headers=bearer(connecting.admin)
    )
    assert bad.status_code == 422
    assert any(e["field"].endswith("type") for e in bad.json()["errors"])


async def test_only_operators_refresh_and_other_tenants_do_not_exist(connecting: Connecting, ready: Org) -> None:
    operator = await connecting.api.token(Role.OPERATOR, ["acme"])
    await refresh(connecting, token=operator)
    viewer = await connecting.api.token(Role.VIEWER, ["acme"])
    refused = await connecting.api.http.post("/api/v1/tenants/acme/schema:refresh", json={}, headers=bearer(viewer))
    assert refused.status_code == 403
    assert (
        await connecting.api.http.get("/api/v1/tenants/acme/schema/drift", headers=bearer(viewer))
    ).status_code == 200
    elsewhere = await connecting.api.token(Role.ADMIN, ["globex"])
    hidden = await connecting.api.http.get("/api/v1/tenants/acme/schema/objects", headers=bearer(elsewhere))
    assert hidden.status_code == 404
    unknown = await connecting.api.http.get("/api/v1/tenants/acme/schema/objects/Nope__c", headers=bearer(viewer))
    assert unknown.status_code == 404
    assert "schema:refresh" in unknown.json()["detail"]


async def test_a_document_leaving_out_a_field_salesforce_requires_is_refused_once_described(
    connecting: Connecting, document: dict[str, Any]
) -> None:
    contacts = document["spec"]["objects"][1]
    contacts["fields"] = [f for f in contacts["fields"] if f["salesforce"] != "LastName"]
    # Before Duplex has read the org there is nothing to check against.
    validated = await connecting.api.http.post(
        "/api/v1/tenants:validate", json=document, headers=bearer(connecting.admin)
    )
    assert validated.status_code == 200, validated.text

    await refresh(connecting)
    for method, url in (("POST", "/api/v1/tenants:validate"), ("PUT", "/api/v1/tenants/acme")):
        refused = await connecting.api.http.request(method, url, json=document, headers=bearer(connecting.admin))
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"] == [
            {
                "field": "spec.objects[1].fields",
                "message": "pair partner_contacts creates Salesforce Contact records, which require LastName on"
                " create: map it with a rule flowing to Salesforce (direction both or app_to_crm)",
            }
        ]
    current = await connecting.api.http.get("/api/v1/tenants/acme", headers=bearer(connecting.admin))
    assert any(f["salesforce"] == "LastName" for f in current.json()["document"]["spec"]["objects"][1]["fields"])


async def test_suggestions_for_a_pair_read_both_schemas(connecting: Connecting, document: dict[str, Any]) -> None:
    url = "/api/v1/tenants/acme/pairs/partners/suggestions"
    undeclared = await connecting.api.http.get(url, headers=bearer(connecting.admin))
    assert undeclared.status_code == 404
    assert "app-schema/partners" in undeclared.json()["detail"]
    fields = [
        {"name": "name", "label": "Company name"},
        {"name": "phone"},
        {"name": "billing_zip", "label": "Billing ZIP code"},
        {"name": "favourite_color"},
    ]
    declared = await connecting.api.http.put(
        "/api/v1/tenants/acme/app-schema/partners", json={"fields": fields}, headers=bearer(connecting.admin)
    )
    assert declared.status_code == 200, declared.text
    not_described = await connecting.api.http.get(url, headers=bearer(connecting.admin))
    assert not_described.status_code == 404
    assert "schema:refresh" in not_described.json()["detail"]
    await refresh(connecting)

    suggested = await get(connecting, "pairs/partners/suggestions")

    by_app = {f["app"]: f for f in suggested["fields"]}
    assert [f["app"] for f in suggested["fields"]] == ["name", "phone", "billing_zip", "favourite_color"]
    assert (by_app["name"]["status"], by_app["name"]["mappedTo"], by_app["name"]["agrees"]) == ("mapped", "Name", True)
    assert (by_app["billing_zip"]["status"], by_app["billing_zip"]["candidates"][0]["salesforce"]) == (
        "auto",
        "BillingPostalCode",
    )
    assert by_app["favourite_color"]["status"] == "unmapped"
    assert (suggested["appSchemaVersion"], suggested["describeVersion"]) == (1, 1)

    # Ignoring a field is part of the mapping: a new version of the document.
    document["spec"]["objects"][0]["ignoredFields"] = ["favourite_color"]
    applied = await connecting.api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(connecting.admin))
    assert applied.status_code == 200, applied.text
    again = await get(connecting, "pairs/partners/suggestions")
    assert {f["app"]: f["status"] for f in again["fields"]}["favourite_color"] == "ignored"


async def test_a_custom_metadata_type_is_described_on_demand(connecting: Connecting, ready: Org) -> None:
    region = {"name": "Region__c", "type": "picklist", "picklist_values": [{"value": "emea", "label": "EMEA"}]}
    connecting.emulator.admin(
        "PUT",
        f"/orgs/{ready.org_id}/metadata-types/Region_Mapping__mdt",
        {"label": "Region Mapping", "fields": [region]},
    )
    done = await refresh(connecting, {"objects": ["Region_Mapping__mdt", "Nope__c"]})
    assert done["objects"] == ["Account", "Contact", "Region_Mapping__mdt", "Nope__c"]
    described = await get(connecting, "schema/objects/Region_Mapping__mdt")
    fields = {f["name"]: f for f in described["fields"]}
    assert {"DeveloperName", "MasterLabel", "Region__c"} <= set(fields)
    assert fields["Region__c"]["picklist"] == [{"value": "emea", "label": "EMEA", "active": True}]
    assert not fields["Region__c"]["createable"]
    # An object the org does not have is stored as gone, not as an error.
    gone = await get(connecting, "schema/objects/Nope__c")
    assert (gone["label"], gone["fields"]) == (None, [])


async def test_validate_a_filter_counts_and_samples_or_names_each_problem(
    connecting: Connecting, document: dict[str, Any], orgs: tuple[Org, Org]
) -> None:
    sf = org_client(connecting, orgs[0])
    for i in range(7):
        sf.Account.create({"Name": f"Customer {i}", "Type": "Customer - Direct", "AnnualRevenue": i})
    sf.Account.create({"Name": "Prospect", "Type": "Prospect"})
    url = "/api/v1/tenants/acme/pairs/partners/filter:validate"

    async def validate(soql: str) -> Any:
        return await connecting.api.http.post(url, json={"soql": soql}, headers=bearer(connecting.admin))

    preview = await validate("Type = 'Customer - Direct' and AnnualRevenue > 0")
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["count"], len(body["samples"])) == (6, 5)
    assert body["soql"] == "Type = 'Customer - Direct' AND AnnualRevenue > 0"
    assert {"Id", "Name", "AnnualRevenue", "Type"} <= set(body["samples"][0])
    # A describe was read and stored on the way, then two queries.
    assert body["apiCalls"] == 3

    for soql, column, words in [
        ("Type = 'Customer' AND (AnnualRevenue > 0", 23, "never closed"),
        ("Tpye = 'Customer'", 1, "unknown field 'Tpye' on Account; did you mean Type?"),
        ("AnnualRevenue LIKE '5%'", 15, "LIKE"),
        ("AnnualRevenue > 'lots'", 17, "AnnualRevenue"),
        ("Type = 'A' AND Name = 'B' OR Name = 'C'", None, "parentheses"),
    ]:
        refused = await validate(soql)
        assert refused.status_code == 422, (soql, refused.text)
        (error,) = refused.json()["errors"]
        assert error["field"] == "soql"
        assert words in error["message"], error["message"]
        if column is not None:
            assert error["message"].startswith(f"column {column}: "), error["message"]

    # The pair's own filter is what is validated when none is given; it has none yet.
    none = await connecting.api.http.post(url, json={}, headers=bearer(connecting.admin))
    assert none.status_code == 422


async def test_a_document_whose_filter_does_not_fit_the_org_is_refused(
    connecting: Connecting, document: dict[str, Any]
) -> None:
    await refresh(connecting)
    document["spec"]["objects"][0]["filter"] = {"soql": "Type = 'Customer' AND Tier = 'Gold'"}
    refused = await connecting.api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(connecting.admin))
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [
        {
            "field": "spec.objects[0].filter.soql",
            "message": "column 23: unknown field 'Tier' on Account",
        }
    ]
    document["spec"]["objects"][0]["filter"] = {"soql": "Type = 'Customer' AND (Tier__c = 'Gold'"}
    malformed = await connecting.api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(connecting.admin))
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["field"] == "spec.objects[0].filter.soql"
    document["spec"]["objects"][0]["filter"] = {"soql": "Type = 'Customer' AND Tier__c = 'Gold'"}
    applied = await connecting.api.http.put("/api/v1/tenants/acme", json=document, headers=bearer(connecting.admin))
    assert applied.status_code == 200, applied.text


async def test_a_plan_tells_what_a_document_would_change_and_writes_nothing(
    connecting: Connecting, document: dict[str, Any], orgs: tuple[Org, Org]
) -> None:
    sf = org_client(connecting, orgs[0])
    for i in range(3):
        sf.Account.create({"Name": f"Customer {i}", "Type": "Customer - Direct"})
    sf.Account.create({"Name": "Prospect", "Type": "Prospect"})
    others = sf.query("SELECT COUNT() FROM Account WHERE Type != 'Customer - Direct'")["totalSize"]
    partners = document["spec"]["objects"][0]
    partners["filter"] = {"soql": "Type = 'Customer - Direct'"}
    partners["fields"].append({"app": "rating", "salesforce": "Rating"})
    partners["fields"] = [f for f in partners["fields"] if f["app"] != "website"]
    document["spec"]["objects"].append(
        {
            "name": "leads",
            "app": {"object": "leads"},
            "salesforce": {"object": "Lead", "externalIdField": "Duplex_Id__c"},
            "direction": "crm_to_app",
            "fields": [{"app": "last_name", "salesforce": "LastName"}, {"app": "company", "salesforce": "Company"}],
        }
    )

    async def state() -> tuple[Any, ...]:
        db = connecting.api.db
        tables = ("config_versions", "sync_log", "audit_log", "crm_schema_objects", "crm_object_fields")
        counts = [await db.fetchval(f"SELECT count(*) FROM {t}") for t in tables]
        records = sf.query("SELECT COUNT() FROM Account")["totalSize"]
        latest = sf.query("SELECT SystemModstamp FROM Account ORDER BY SystemModstamp DESC LIMIT 1")["records"]
        return (*counts, records, latest[0]["SystemModstamp"])

    before = await state()
    answer = await connecting.api.http.post(
        "/api/v1/tenants/acme/plan", json=document, headers=bearer(connecting.admin)
    )
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert await state() == before

    assert plan["currentVersion"] == 1
    assert {(c["objectPair"], c["appField"], c["change"]) for c in plan["changes"]} == {
        ("partners", None, "changed"),
        ("partners", "rating", "added"),
        ("partners", "website", "removed"),
        ("leads", None, "added"),
    }
    filters = {f["objectPair"]: f for f in plan["filters"]}
    assert filters["partners"]["entering"] == {"count": 0, "samples": []}
    leaving = filters["partners"]["leaving"]
    assert leaving["count"] == others
    assert {s["Name"] for s in leaving["samples"]} >= {"Prospect"}
    assert (filters["leads"]["newPair"], filters["leads"]["entering"]["count"]) == (True, 0)
    assert filters["leads"]["backfillApiCalls"] == 2
    # Two describes (neither object described yet) and two queries for each non-empty selection.
    assert plan["apiCalls"] == 2 + 2 + 2

    operator = await connecting.api.token(Role.OPERATOR, ["acme"])
    viewer = await connecting.api.token(Role.VIEWER, ["acme"])
    assert (
        await connecting.api.http.post("/api/v1/tenants/acme/plan", json=document, headers=bearer(operator))
    ).status_code == 200
    assert (
        await connecting.api.http.post("/api/v1/tenants/acme/plan", json=document, headers=bearer(viewer))
    ).status_code == 403
