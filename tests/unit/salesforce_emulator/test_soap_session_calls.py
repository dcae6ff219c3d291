"""The partner SOAP calls clients make around a SOAP login: getUserInfo, getServerTimestamp, logout;
and the versions SOAP serves (login is gone from 65.0 on, retired versions are refused)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator
from tests.unit.salesforce_emulator.test_soap_login import USER_INFO_ORDER

pytestmark = pytest.mark.unit

NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "p": "urn:partner.soap.sforce.com"}
ENVELOPE = (
    '<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/">{header}<se:Body>{body}</se:Body></se:Envelope>'
)


def soap(client: TestClient, version: str, body: str, session: str | None = None) -> tuple[int, ET.Element]:
    header = (
        f'<se:Header><SessionHeader xmlns="urn:partner.soap.sforce.com"><sessionId>{session}</sessionId>'
        "</SessionHeader></se:Header>"
        if session
        else "<se:Header/>"
    )
    # As jsforce sends it: the call named only in the body, SOAPAction empty.
    response = client.post(
        f"/services/Soap/u/{version}",
        content=ENVELOPE.format(header=header, body=body),
        headers={"Content-Type": "text/xml", "SOAPAction": '""'},
    )
    return response.status_code, ET.fromstring(response.text)


def login(client: TestClient, version: str = "62.0") -> str:
    status, root = soap(
        client,
        version,
        '<login xmlns="urn:partner.soap.sforce.com"><username>admin@acme.example</username>'
        "<password>acme-dev-password</password></login>",
    )
    assert status == 200
    session = root.findtext(".//p:sessionId", namespaces=NS)
    assert session
    return session


def call(name: str) -> str:
    return f'<{name} xmlns="urn:partner.soap.sforce.com"/>'


def test_get_user_info_returns_the_sessions_user_in_wsdl_order(client: TestClient, emulator: Emulator) -> None:
    session = login(client)
    status, root = soap(client, "62.0", call("getUserInfo"), session)
    assert status == 200
    result = root.find(".//p:getUserInfoResponse/p:result", NS)
    assert result is not None
    assert [child.tag.rpartition("}")[2] for child in result] == USER_INFO_ORDER
    assert result.findtext("p:userName", namespaces=NS) == "admin@acme.example"
    assert result.findtext("p:organizationId", namespaces=NS) == emulator.default_org.org_id
    # Counted like any data call, and reported in the LimitInfoHeader.
    assert root.findtext(".//p:LimitInfoHeader/p:limitInfo/p:type", namespaces=NS) == "API REQUESTS"


def test_get_server_timestamp_is_the_servers_utc_time(client: TestClient) -> None:
    session = login(client)
    before = datetime.now(UTC).replace(microsecond=0)
    status, root = soap(client, "62.0", call("getServerTimestamp"), session)
    assert status == 200
    stamp = root.findtext(".//p:getServerTimestampResponse/p:result/p:timestamp", namespaces=NS)
    assert stamp is not None
    assert stamp.endswith("Z")
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z")
    assert before <= moment <= datetime.now(UTC)


def test_logout_ends_the_session_everywhere(client: TestClient) -> None:
    session = login(client)
    rest = client.get("/services/data/v62.0/limits/", headers={"Authorization": f"Bearer {session}"})
    assert rest.status_code == 200

    status, root = soap(client, "62.0", call("logout"), session)
    assert status == 200
    assert root.find(".//p:logoutResponse", NS) is not None

    rest = client.get("/services/data/v62.0/limits/", headers={"Authorization": f"Bearer {session}"})
    assert (rest.status_code, rest.json()[0]["errorCode"]) == (401, "INVALID_SESSION_ID")
    status, fault = soap(client, "62.0", call("getUserInfo"), session)
    assert (status, fault.findtext(".//faultcode")) == (500, "sf:INVALID_SESSION_ID")
    status, fault = soap(client, "62.0", call("logout"), session)
    assert (status, fault.findtext(".//faultcode")) == (500, "sf:INVALID_SESSION_ID")


@pytest.mark.parametrize("name", ["logout", "getUserInfo", "getServerTimestamp"])
def test_session_calls_need_a_session_header(client: TestClient, name: str) -> None:
    status, fault = soap(client, "62.0", call(name))
    assert status == 500
    assert fault.findtext(".//faultcode") == "sf:INVALID_SESSION_ID"


def test_login_is_gone_from_api_version_65(client: TestClient) -> None:
    assert login(client, "64.0")
    status, fault = soap(
        client,
        "65.0",
        '<login xmlns="urn:partner.soap.sforce.com"><username>admin@acme.example</username>'
        "<password>acme-dev-password</password></login>",
    )
    assert status == 500
    assert fault.findtext(".//faultcode") == "soapenv:Client"
    assert fault.findtext(".//faultstring") == (
        "No operation available for request {urn:partner.soap.sforce.com}login, please check the WSDL for the service."
    )
    # Sessions from OAuth still work with every other call of those versions.
    session = login(client)
    assert soap(client, "68.0", call("getServerTimestamp"), session)[0] == 200


@pytest.mark.parametrize("version", ["30.0", "21.0", "99.0"])
def test_versions_soap_does_not_serve(client: TestClient, version: str) -> None:
    status, fault = soap(client, version, call("getServerTimestamp"), "anything")
    assert status == 500
    assert fault.findtext(".//faultcode") == "sf:UNSUPPORTED_API_VERSION"
