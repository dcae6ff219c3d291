"""simple-salesforce, unchanged, against the emulator process's Tooling API query resource: which
objects an org selected for Change Data Capture, and the errors for what the emulator does not serve."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from devstack.emulator import API_VERSION, EmulatorProcess, org_spec

pytestmark = pytest.mark.integration

SELECTION = "SELECT Id, DeveloperName, EventChannel, SelectedEntity FROM PlatformEventChannelMember"


def private_org(emulator: EmulatorProcess) -> tuple[str, Any]:
    """A new org (Case and Ticket__c with CDC off, Widget__c on) and simple-salesforce logged in to it."""
    alias = f"tooling-{uuid.uuid4().hex[:8]}"
    spec = org_spec(alias)
    spec["objects"] |= {
        "Case": {"cdc_enabled": False},
        "Ticket__c": {"label": "Ticket", "cdc_enabled": False},
        "Widget__c": {"label": "Widget"},
    }
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


def selected(sf: Any) -> set[str]:
    body = sf.toolingexecute("query/?q=" + quote(f"{SELECTION} WHERE EventChannel = 'ChangeEvents'"))
    assert body["entityTypeName"] == "PlatformEventChannelMember"
    assert body["done"] is True
    assert body["size"] == body["totalSize"] == len(body["records"])
    return {r["SelectedEntity"] for r in body["records"]}


def test_the_selection_over_https_follows_the_cdc_switches_and_is_counted(emulator: EmulatorProcess) -> None:
    alias, sf = private_org(emulator)
    first = selected(sf)
    used = sf.api_usage["api-usage"].used
    assert first == {
        "AccountChangeEvent",
        "ContactChangeEvent",
        "LeadChangeEvent",
        "OpportunityChangeEvent",
        "UserChangeEvent",
        "Widget__ChangeEvent",
    }
    emulator.admin("PUT", f"/orgs/{alias}/objects/Ticket__c", {"cdc_enabled": True})
    emulator.admin("PUT", f"/orgs/{alias}/objects/Account", {"cdc_enabled": False})
    second = selected(sf)
    assert sf.api_usage["api-usage"].used == used + 1
    assert second == (first - {"AccountChangeEvent"}) | {"Ticket__ChangeEvent"}


def test_unsupported_tooling_objects_are_refused_as_salesforce_does(emulator: EmulatorProcess) -> None:
    _, sf = private_org(emulator)
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.toolingexecute("query/?q=" + quote("SELECT Id, Name FROM ApexClass"))
    assert refused.value.status == 400
    assert "INVALID_TYPE" in str(refused.value.content)
    assert "ApexClass" in str(refused.value.content)
