"""SOAP login: the exact element order clients index into, request parsing, the fault shape."""

from __future__ import annotations

import sqlite3
import threading
import xml.etree.ElementTree as ET

import pytest
from pydantic import SecretStr

from services.salesforce_emulator.orgs import OrgRegistry, OrgRepository, OrgSpec, UserSpec
from services.salesforce_emulator.soap import PARTNER, SOAP_ENV, login_response, parse_login, soap_fault

pytestmark = pytest.mark.unit

RESULT_ORDER = [
    "metadataServerUrl",
    "passwordExpired",
    "sandbox",
    "serverUrl",
    "sessionId",
    "userId",
    "userInfo",
]
USER_INFO_ORDER = [
    "accessibilityMode",
    "chatterExternal",
    "currencySymbol",
    "orgAttachmentFileSizeLimit",
    "orgDefaultCurrencyIsoCode",
    "orgDefaultCurrencyLocale",
    "orgDisallowHtmlAttachments",
    "orgHasPersonAccounts",
    "organizationId",
    "organizationMultiCurrency",
    "organizationName",
    "profileId",
    "roleId",
    "sessionSecondsValid",
    "userDefaultCurrencyIsoCode",
    "userEmail",
    "userFullName",
    "userId",
    "userLanguage",
    "userLocale",
    "userName",
    "userTimeZone",
    "userType",
    "userUiSkin",
]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def test_login_response_matches_the_positions_the_pubsub_example_reads() -> None:
    orgs = OrgRegistry(OrgRepository(sqlite3.connect(":memory:"), threading.Lock()))
    org = orgs.create(
        OrgSpec(alias="acme", name="Acme & Co", users=(UserSpec(username="a@acme.example", password=SecretStr("p")),))
    )
    user = org.default_user
    xml = login_response(
        org=org,
        user=user,
        session_id="00Dx!tok",
        instance_url="https://127.0.0.1:9",
        version="62.0",
        session_seconds=7200,
    )
    root = ET.fromstring(xml)
    assert _local(root[0].tag) == "Body"
    assert len(root) == 1
    result = root[0][0][0]
    assert [_local(e.tag) for e in result] == RESULT_ORDER
    assert [_local(e.tag) for e in result[6]] == USER_INFO_ORDER
    assert result[3].text == f"https://127.0.0.1:9/services/Soap/u/62.0/{org.org_id[:15]}"
    assert result[4].text == "00Dx!tok"
    assert result[6][8].text == org.org_id
    assert result[6][10].text == "Acme & Co"
    assert root[0][0].tag == f"{{{PARTNER}}}loginResponse"


@pytest.mark.parametrize(
    "envelope",
    [
        # simple-salesforce (security token variant): env/n1 prefixes and a CallOptions header.
        f'<env:Envelope xmlns:env="{SOAP_ENV}" xmlns:urn="{PARTNER}"><env:Header><urn:CallOptions>'
        "<urn:client>x</urn:client></urn:CallOptions></env:Header><env:Body>"
        f'<n1:login xmlns:n1="{PARTNER}"><n1:username>u@x</n1:username><n1:password>p&amp;q</n1:password>'
        "</n1:login></env:Body></env:Envelope>",
        # The Pub/Sub example: soapenv/urn prefixes.
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:urn="{PARTNER}"><soapenv:Body><urn:login>'
        "<urn:username> u@x </urn:username><urn:password>p&amp;q</urn:password></urn:login></soapenv:Body>"
        "</soapenv:Envelope>",
    ],
)
def test_login_requests_parse_whatever_the_prefixes(envelope: str) -> None:
    assert parse_login(envelope.encode()) == ("u@x", "p&q")


@pytest.mark.parametrize(
    "body", [b"", b"<not-xml", f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body/></e:Envelope>'.encode()]
)
def test_anything_else_is_not_a_login(body: bytes) -> None:
    assert parse_login(body) is None


def test_faults_carry_the_code_where_simple_salesforce_looks() -> None:
    root = ET.fromstring(soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out."))
    fault = root[0][0]
    assert fault.findtext("faultcode") == "sf:INVALID_LOGIN"
    code = fault.find(
        "detail/{urn:fault.partner.soap.sforce.com}LoginFault/{urn:fault.partner.soap.sforce.com}exceptionCode"
    )
    assert code is not None
    assert code.text == "INVALID_LOGIN"
