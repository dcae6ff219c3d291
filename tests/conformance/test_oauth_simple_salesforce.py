"""simple-salesforce (unchanged) against the real emulator process: SOAP login, OAuth password login,
session id + instance URL, usage parsing, /limits, and a record round trip; plus the official Pub/Sub
example's positional reading of the SOAP login response."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import pytest
import requests
from simple_salesforce.api import Salesforce, SFType
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceExpiredSession

from devstack.ports import pick_free_ports

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[2]
VERSION = "62.0"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("emulator")
    https_port, grpc_port = pick_free_ports(2)
    stderr = data / "stderr.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.salesforce_emulator", "--https-port", str(https_port), "--grpc-port",
         str(grpc_port), "--data-file", ":memory:", "--tls-dir", str(data / "tls")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")},
    )  # fmt: skip
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(60)
    if not line or not line[0]:
        process.kill()
        pytest.fail(f"emulator did not start: {stderr.read_text()}")
    yield json.loads(line[0])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture
def session(emulator: dict[str, Any]) -> requests.Session:
    trusted = requests.Session()
    # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's own verify setting.
    trusted.trust_env = False
    trusted.verify = emulator["ca_cert"]
    return trusted


def soap_domain(emulator: dict[str, Any]) -> str:
    """simple-salesforce logs in at https://{domain}.salesforce.com/services/Soap/u/{version}; the
    query-string trick points that at the emulator without patching the client."""
    return f"{urlparse(emulator['instance_url']).netloc}/services/Soap/u/{VERSION}?"


def test_soap_login_then_limits_and_usage(emulator: dict[str, Any], session: requests.Session) -> None:
    sf = Salesforce(
        username=emulator["username"],
        password=emulator["password"],
        security_token="",
        domain=soap_domain(emulator),
        version=VERSION,
        session=session,
    )
    assert sf.sf_instance == urlparse(emulator["instance_url"]).netloc
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] == 15000
    usage = sf.api_usage["api-usage"]
    assert (usage.used, usage.total) == (15000 - limits["DailyApiRequests"]["Remaining"], 15000)


def test_soap_login_with_a_wrong_password_fails_like_salesforce(
    emulator: dict[str, Any], session: requests.Session
) -> None:
    with pytest.raises(SalesforceAuthenticationFailed) as failed:
        Salesforce(
            username=emulator["username"],
            password="not-it",
            security_token="",
            domain=soap_domain(emulator),
            version=VERSION,
            session=session,
        )
    assert failed.value.code == "INVALID_LOGIN"


def test_oauth_password_login_through_the_connected_app(emulator: dict[str, Any], session: requests.Session) -> None:
    sf = Salesforce(
        username=emulator["username"],
        password=emulator["password"],
        consumer_key=emulator["client_id"],
        consumer_secret=emulator["client_secret"],
        domain=f"{urlparse(emulator['instance_url']).netloc}/services/oauth2/token?",
        version=VERSION,
        session=session,
    )
    assert sf.limits()["DailyApiRequests"]["Max"] == 15000


def test_session_id_and_instance_url(emulator: dict[str, Any], session: requests.Session) -> None:
    token = session.post(
        emulator["instance_url"] + "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": emulator["client_id"],
            "client_secret": emulator["client_secret"],
            "username": emulator["username"],
            "password": emulator["password"],
        },
    ).json()["access_token"]
    sf = Salesforce(session_id=token, instance_url=emulator["instance_url"], version=VERSION, session=session)
    before = sf.limits()["DailyApiRequests"]["Remaining"]
    sf.limits()
    assert sf.api_usage["api-usage"].used == 15000 - before + 1
    session.post(emulator["instance_url"] + "/services/oauth2/revoke", data={"token": token})
    with pytest.raises(SalesforceExpiredSession):
        sf.limits()


def test_record_round_trip(emulator: dict[str, Any], session: requests.Session) -> None:
    sf = Salesforce(
        username=emulator["username"],
        password=emulator["password"],
        security_token="",
        domain=soap_domain(emulator),
        version=VERSION,
        session=session,
    )
    accounts = cast(SFType, sf.Account)
    created = accounts.create({"Name": "Round Trip Ltd", "Duplex_Id__c": "rt-1", "AnnualRevenue": 2_000_000})
    assert created["success"] is True
    record = accounts.get(created["id"])
    assert (record["Name"], record["Duplex_Id__c"], record["Is_Key_Account__c"]) == ("Round Trip Ltd", "rt-1", True)
    assert accounts.upsert("Duplex_Id__c/rt-1", {"Name": "Round Trip Plc"}) in (200, 204)
    found = sf.query("SELECT Id, Name FROM Account WHERE Duplex_Id__c = 'rt-1'")
    assert found["totalSize"] == 1
    assert found["records"][0]["Name"] == "Round Trip Plc"


def test_the_pubsub_example_reads_the_login_by_position(emulator: dict[str, Any], session: requests.Session) -> None:
    # The request the official example (python/InventoryAppExample/PubSub.py) sends, verbatim in shape.
    body = (
        "<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/' "
        "xmlns:urn='urn:partner.soap.sforce.com'><soapenv:Body><urn:login>"
        f"<urn:username><![CDATA[{emulator['username']}]]></urn:username>"
        f"<urn:password><![CDATA[{emulator['password']}]]></urn:password>"
        "</urn:login></soapenv:Body></soapenv:Envelope>"
    )
    response = session.post(
        f"{emulator['instance_url']}/services/Soap/u/{VERSION}/",
        data=body,
        headers={"content-type": "text/xml", "SOAPAction": "Login"},
    )
    assert response.status_code == 200
    result = ET.fromstring(response.content)[0][0][0]
    server_url, session_id, org_id = result[3].text, result[4].text, result[6][8].text
    assert server_url is not None
    assert session_id is not None
    assert org_id == emulator["org_id"]
    url = "{0.scheme}://{0.netloc}".format(urlparse(server_url))
    assert url == emulator["instance_url"]
    limits = session.get(f"{url}/services/data/v{VERSION}/limits/", headers={"Authorization": f"Bearer {session_id}"})
    assert limits.status_code == 200
