"""Deleting a custom field through the admin API: gone from describe, queries and writes; kept data
comes back with the field; standard fields, unknown fields and fields a formula uses are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.orgs import FieldSpec, ObjectSpec, OrgSpec
from tests.unit.salesforce_emulator.sessions import bearer, login
from tests.unit.salesforce_emulator.test_orgs_registry import registry

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
API = "/services/data/v62.0"
TIER = {"name": "Tier__c", "type": "picklist", "picklist_values": ["Gold", "Silver"]}


def field_names(client: TestClient, token: str, sobject: str) -> set[str]:
    described = client.get(f"{API}/sobjects/{sobject}/describe", headers=bearer(token))
    assert described.status_code == 200, described.text
    return {f["name"] for f in described.json()["fields"]}


def test_a_deleted_custom_field_leaves_describe_queries_and_writes(client: TestClient) -> None:
    token = login(client)
    client.put("/__emulator__/orgs/acme/objects/Account", headers=ADMIN, json={"fields": [TIER]})
    created = client.post(f"{API}/sobjects/Account", headers=bearer(token), json={"Name": "A", "Tier__c": "Gold"})
    assert created.status_code == 201, created.text

    deleted = client.delete("/__emulator__/orgs/acme/objects/Account/fields/tier__c", headers=ADMIN)

    assert deleted.status_code == 200, deleted.text
    assert "Tier__c" not in deleted.json()["fields"]
    assert "Duplex_Id__c" in deleted.json()["fields"]
    assert "Tier__c" not in field_names(client, token, "Account")
    query = client.get(f"{API}/query", headers=bearer(token), params={"q": "SELECT Tier__c FROM Account"})
    assert query.status_code == 400
    assert query.json()[0]["errorCode"] == "INVALID_FIELD"
    write = client.post(f"{API}/sobjects/Account", headers=bearer(token), json={"Name": "B", "Tier__c": "Gold"})
    assert write.status_code == 400
    assert write.json()[0]["errorCode"] == "INVALID_FIELD"


def test_defining_the_field_again_brings_its_values_back(client: TestClient) -> None:
    token = login(client)
    client.put("/__emulator__/orgs/acme/objects/Account", headers=ADMIN, json={"fields": [TIER]})
    created = client.post(f"{API}/sobjects/Account", headers=bearer(token), json={"Name": "A", "Tier__c": "Gold"})
    record = f"{API}/sobjects/Account/{created.json()['id']}"
    client.delete("/__emulator__/orgs/acme/objects/Account/fields/Tier__c", headers=ADMIN)
    assert "Tier__c" not in client.get(record, headers=bearer(token)).json()

    client.put("/__emulator__/orgs/acme/objects/Account", headers=ADMIN, json={"fields": [TIER]})

    assert client.get(record, headers=bearer(token)).json()["Tier__c"] == "Gold"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/orgs/acme/objects/Account/fields/Name", 404, "Account has no custom field 'Name'"),
        ("/orgs/acme/objects/Account/fields/Nope__c", 404, "Account has no custom field 'Nope__c'"),
        ("/orgs/acme/objects/Case/fields/Duplex_Id__c", 404, "Case has no custom field 'Duplex_Id__c'"),
        ("/orgs/nope/objects/Account/fields/Duplex_Id__c", 404, "No org 'nope'"),
    ],
)
def test_only_existing_custom_fields_can_be_deleted(client: TestClient, path: str, status: int, message: str) -> None:
    refused = client.delete(f"/__emulator__{path}", headers=ADMIN)
    assert refused.status_code == status
    assert refused.json()[0]["message"] == message


def test_a_field_a_formula_uses_is_not_deleted(client: TestClient) -> None:
    token = login(client)
    # The seed's Contact.Display_Name__c is FirstName & ' ' & LastName; make one that uses a custom field.
    formula = {"name": "Tier_Label__c", "type": "string", "formula": "Tier__c & '!'"}
    defined = client.put("/__emulator__/orgs/acme/objects/Account", headers=ADMIN, json={"fields": [TIER, formula]})
    assert defined.status_code == 200, defined.text

    refused = client.delete("/__emulator__/orgs/acme/objects/Account/fields/Tier__c", headers=ADMIN)

    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INVALID_INPUT"
    assert "Tier__c" in refused.json()[0]["message"]
    assert {"Tier__c", "Tier_Label__c"} <= field_names(client, token, "Account")


def test_the_deletion_is_persisted(tmp_path: Path) -> None:
    path = str(tmp_path / "orgs.db")
    first = registry(path)
    first.create(
        OrgSpec(alias="tiny", objects={"Account": ObjectSpec(fields=(FieldSpec(name="Tier__c", type="string"),))})
    )

    first.delete_field("tiny", "Account", "Tier__c")

    again = registry(path).get("tiny")
    assert again.objects["Account"].field("Tier__c") is None
    assert again.state.objects["Account"].fields == ()
