"""simple-salesforce, unchanged, against the emulator process: discovering a custom metadata type and
picklist labels, the refusal of writes to metadata records, and Setup changes made through the
fixture's admin helpers showing up in describe and in the CDC selection."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from devstack.emulator import API_VERSION, EmulatorProcess, org_spec
from tests.fixtures.emulator import define_metadata_type, redefine_field, select_for_cdc

pytestmark = pytest.mark.integration

MAPPING = "Region_Mapping__mdt"
SEGMENT = {
    "name": "Segment__c",
    "type": "picklist",
    "picklist_values": [{"value": "cust_direct", "label": "Customer - Direct"}, "Prospect"],
}


def private_org(emulator: EmulatorProcess) -> tuple[str, Salesforce]:
    """A new org with Account.Segment__c, and simple-salesforce logged in to it."""
    alias = f"drift-{uuid.uuid4().hex[:8]}"
    spec = org_spec(alias)
    spec["objects"]["Account"]["fields"].append(SEGMENT)
    emulator.admin("POST", "/orgs", spec)
    with emulator.http() as http:
        response = http.post(
            "/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": f"{alias}-client",
                "client_secret": f"{alias}-secret",
                "username": f"admin@{alias}.example",
                "password": f"{alias}-password",
            },
        )
    response.raise_for_status()
    token = response.json()
    session = requests.Session()
    session.trust_env = False
    session.verify = emulator.ca_cert
    sf = Salesforce(
        instance_url=token["instance_url"], session_id=token["access_token"], version=API_VERSION, session=session
    )
    return alias, sf


def test_a_metadata_type_is_discovered_queried_and_read_only(emulator: EmulatorProcess) -> None:
    alias, sf = private_org(emulator)
    defined = define_metadata_type(
        emulator,
        alias,
        MAPPING,
        {
            "label": "Region Mapping",
            "fields": [{"name": "Country_Code__c", "type": "string", "length": 2}],
            "records": [{"DeveloperName": "France", "Country_Code__c": "FR"}],
        },
    )

    described = sf.describe()
    assert described is not None
    listed = {o["name"]: o for o in described["sobjects"]}
    assert (listed[MAPPING]["queryable"], listed[MAPPING]["createable"]) == (True, False)
    mdt: Any = getattr(sf, MAPPING)
    assert "Country_Code__c" in {f["name"] for f in mdt.describe()["fields"]}
    rows = sf.query_all(f"SELECT Id, DeveloperName, Country_Code__c FROM {MAPPING}")["records"]
    assert [(r["Id"], r["DeveloperName"], r["Country_Code__c"]) for r in rows] == [
        (defined["records"][0]["Id"], "France", "FR")
    ]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        mdt.create({"DeveloperName": "Spain"})
    assert refused.value.status == 400
    assert "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" in str(refused.value.content)
    assert "entity type cannot be inserted: Region Mapping" in str(refused.value.content)


def test_setup_changes_show_in_describe_and_the_cdc_selection(emulator: EmulatorProcess) -> None:
    alias, sf = private_org(emulator)
    account: Any = sf.Account
    segment = next(f for f in account.describe()["fields"] if f["name"] == "Segment__c")
    assert [(v["value"], v["label"]) for v in segment["picklistValues"]] == [
        ("cust_direct", "Customer - Direct"),
        ("Prospect", "Prospect"),
    ]

    redefine_field(emulator, alias, "Account", {**SEGMENT, "picklist_values": ["Prospect", "Partner"]})
    select_for_cdc(emulator, alias, "Account", selected=False)

    segment = next(f for f in account.describe()["fields"] if f["name"] == "Segment__c")
    assert [v["value"] for v in segment["picklistValues"]] == ["Prospect", "Partner"]
    soql = "SELECT SelectedEntity FROM PlatformEventChannelMember"
    selected = {r["SelectedEntity"] for r in sf.toolingexecute("query/?q=" + quote(soql))["records"]}
    assert "AccountChangeEvent" not in selected
    assert "ContactChangeEvent" in selected
