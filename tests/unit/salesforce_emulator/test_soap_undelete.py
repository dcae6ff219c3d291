"""The partner SOAP API's undelete call (Salesforce has no REST undelete)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit

NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "p": "urn:partner.soap.sforce.com"}
REST = "/services/data/v62.0/sobjects/Account"


def token(client: TestClient) -> str:
    form = {
        "grant_type": "password",
        "client_id": "duplex-acme-client",
        "client_secret": "duplex-acme-secret",
        "username": "admin@acme.example",
        "password": "acme-dev-password",
    }
    return str(client.post("/services/oauth2/token", data=form).json()["access_token"])


def undelete(client: TestClient, session: str, *ids: str, client_id: str | None = None) -> ET.Element:
    options = f"<urn:CallOptions><urn:client>{client_id}</urn:client></urn:CallOptions>" if client_id else ""
    envelope = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:urn="urn:partner.soap.sforce.com">'
        f"<soapenv:Header><urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader>{options}"
        "</soapenv:Header><soapenv:Body><urn:undelete>"
        + "".join(f"<urn:ids>{i}</urn:ids>" for i in ids)
        + "</urn:undelete></soapenv:Body></soapenv:Envelope>"
    )
    response = client.post("/services/Soap/u/62.0/", content=envelope, headers={"SOAPAction": "undelete"})
    return ET.fromstring(response.text)


def test_undelete_restores_records_and_reports_each_id(client: TestClient) -> None:
    session = token(client)
    bearer = {"Authorization": f"Bearer {session}"}
    gone = client.post(REST, json={"Name": "Gone"}, headers=bearer).json()["id"]
    live = client.post(REST, json={"Name": "Live"}, headers=bearer).json()["id"]
    client.delete(f"{REST}/{gone}", headers=bearer)

    results = undelete(client, session, gone, live, client_id="duplex").findall(".//p:result", NS)

    assert [r.findtext("p:success", namespaces=NS) for r in results] == ["true", "false"]
    assert results[0].findtext("p:id", namespaces=NS) == gone
    assert results[1].findtext("p:errors/p:statusCode", namespaces=NS) == "UNDELETE_FAILED"
    assert client.get(f"{REST}/{gone}", headers=bearer).json()["Name"] == "Gone"


def test_undelete_needs_a_valid_session(client: TestClient) -> None:
    fault = undelete(client, "not-a-session", "001000000000000AAA")

    assert fault.findtext(".//faultcode") == "sf:INVALID_SESSION_ID"
