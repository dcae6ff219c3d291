"""The partner SOAP API's merge call, and the front door SOAP data calls share with REST."""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from typing import Any

import fastavro
import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator

pytestmark = pytest.mark.unit

NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "p": "urn:partner.soap.sforce.com"}
ADMIN = {"Authorization": "Bearer test-admin-token"}
DATA = "/services/data/v62.0"
SOAP = "/services/Soap/u/62.0/"


@pytest.fixture
def session(client: TestClient) -> str:
    form = {
        "grant_type": "password",
        "client_id": "duplex-acme-client",
        "client_secret": "duplex-acme-secret",
        "username": "admin@acme.example",
        "password": "acme-dev-password",
    }
    return str(client.post("/services/oauth2/token", data=form).json()["access_token"])


def bearer(session: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {session}"}


def create(client: TestClient, session: str, sobject: str, body: dict[str, Any]) -> str:
    response = client.post(f"{DATA}/sobjects/{sobject}", json=body, headers=bearer(session))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def envelope(session: str, call: str, client_id: str | None) -> str:
    options = f"<urn:CallOptions><urn:client>{client_id}</urn:client></urn:CallOptions>" if client_id else ""
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:urn="urn:partner.soap.sforce.com" xmlns:urn1="urn:sobject.partner.soap.sforce.com">'
        f"<soapenv:Header><urn:SessionHeader><urn:sessionId>{session}</urn:sessionId></urn:SessionHeader>{options}"
        f"</soapenv:Header><soapenv:Body>{call}</soapenv:Body></soapenv:Envelope>"
    )


def merge_request(sobject: str, master: str, losers: list[str], fields: str = "") -> str:
    return (
        f"<urn:request><urn:masterRecord><urn1:type>{sobject}</urn1:type><urn1:Id>{master}</urn1:Id>{fields}"
        "</urn:masterRecord>"
        + "".join(f"<urn:recordToMergeIds>{i}</urn:recordToMergeIds>" for i in losers)
        + "</urn:request>"
    )


def post_merge(
    client: TestClient, session: str, *requests: str, client_id: str | None = None, action: str = "merge"
) -> Any:
    body = envelope(session, f"<urn:merge>{''.join(requests)}</urn:merge>", client_id)
    return client.post(SOAP, content=body, headers={"SOAPAction": action})


def merge_results(client: TestClient, session: str, *requests: str, client_id: str | None = None) -> list[ET.Element]:
    response = post_merge(client, session, *requests, client_id=client_id)
    assert response.status_code == 200, response.text
    return ET.fromstring(response.text).findall("s:Body/p:mergeResponse/p:result", NS)


def post_undelete(client: TestClient, session: str, *ids: str, client_id: str | None = None) -> Any:
    call = "<urn:undelete>" + "".join(f"<urn:ids>{i}</urn:ids>" for i in ids) + "</urn:undelete>"
    return client.post(SOAP, content=envelope(session, call, client_id), headers={"SOAPAction": "undelete"})


def texts(element: ET.Element, path: str) -> list[str]:
    return [e.text or "" for e in element.findall(path, NS)]


def query(client: TestClient, session: str, soql: str, *, resource: str = "query") -> list[dict[str, Any]]:
    response = client.get(f"{DATA}/{resource}", params={"q": soql}, headers=bearer(session))
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def usage(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/__emulator__/orgs/acme/usage", headers=ADMIN).json())


def test_merge_deletes_losers_reparents_children_and_updates_the_master(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "Master"})
    loser_a = create(client, session, "Account", {"Name": "Loser A"})
    loser_b = create(client, session, "Account", {"Name": "Loser B"})
    child = create(client, session, "Contact", {"LastName": "Child", "AccountId": loser_b})

    (result,) = merge_results(
        client, session, merge_request("Account", master, [loser_a, loser_b], "<urn1:Phone>555-0100</urn1:Phone>")
    )

    assert result.findtext("p:success", namespaces=NS) == "true"
    assert result.findtext("p:id", namespaces=NS) == master
    assert texts(result, "p:mergedRecordIds") == [loser_a, loser_b]
    assert texts(result, "p:updatedRelatedIds") == [child]
    everything = query(
        client,
        session,
        f"SELECT Id, IsDeleted, MasterRecordId, Phone FROM Account WHERE Id IN ('{master}','{loser_a}','{loser_b}')",
        resource="queryAll",
    )
    by_id = {r["Id"]: r for r in everything}
    assert {i: (r["IsDeleted"], r["MasterRecordId"]) for i, r in by_id.items()} == {
        master: (False, None),
        loser_a: (True, master),
        loser_b: (True, master),
    }
    assert by_id[master]["Phone"] == "555-0100"
    live = query(client, session, f"SELECT Id FROM Account WHERE Id IN ('{master}','{loser_a}','{loser_b}')")
    assert [r["Id"] for r in live] == [master]
    assert query(client, session, f"SELECT AccountId FROM Contact WHERE Id = '{child}'")[0]["AccountId"] == master


def test_merge_sets_fields_to_null_on_the_master(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "Master", "Phone": "1"})
    loser = create(client, session, "Account", {"Name": "Loser"})

    (result,) = merge_results(
        client, session, merge_request("Account", master, [loser], "<urn1:fieldsToNull>Phone</urn1:fieldsToNull>")
    )

    assert result.findtext("p:success", namespaces=NS) == "true"
    assert query(client, session, f"SELECT Phone FROM Account WHERE Id = '{master}'")[0]["Phone"] is None


@pytest.mark.parametrize("sobject", ["Account", "Contact", "Lead", "Case"])
def test_the_four_mergeable_objects_merge(client: TestClient, session: str, sobject: str) -> None:
    body = {
        "Account": {"Name": "N"},
        "Contact": {"LastName": "N"},
        "Lead": {"LastName": "N", "Company": "C"},
        "Case": {"Subject": "N"},
    }[sobject]
    master, loser = create(client, session, sobject, body), create(client, session, sobject, body)

    (result,) = merge_results(client, session, merge_request(sobject, master, [loser]))

    assert result.findtext("p:success", namespaces=NS) == "true"
    row = query(
        client, session, f"SELECT IsDeleted, MasterRecordId FROM {sobject} WHERE Id = '{loser}'", resource="queryAll"
    )
    assert (row[0]["IsDeleted"], row[0]["MasterRecordId"]) == (True, master)


def test_merge_refuses_objects_salesforce_cannot_merge(client: TestClient, session: str) -> None:
    master = create(client, session, "Partner_Tier__c", {"Name": "G", "Level__c": "Gold"})
    loser = create(client, session, "Partner_Tier__c", {"Name": "S", "Level__c": "Silver"})

    (result,) = merge_results(client, session, merge_request("Partner_Tier__c", master, [loser]))

    assert result.findtext("p:success", namespaces=NS) == "false"
    assert result.findtext("p:errors/p:statusCode", namespaces=NS) == "INVALID_TYPE"
    assert len(query(client, session, f"SELECT Id FROM Partner_Tier__c WHERE Id IN ('{master}','{loser}')")) == 2


def test_merge_refuses_more_than_two_records_to_merge(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "M"})
    losers = [create(client, session, "Account", {"Name": f"L{i}"}) for i in range(3)]

    (result,) = merge_results(client, session, merge_request("Account", master, losers))

    assert result.findtext("p:success", namespaces=NS) == "false"
    assert result.findtext("p:errors/p:statusCode", namespaces=NS) == "INVALID_ARGUMENT"
    assert len(query(client, session, "SELECT Id FROM Account WHERE Name LIKE 'L%'")) == 3


def test_merge_with_an_unknown_id_changes_nothing(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "M"})
    unknown = master[:9] + "zzzzzz"  # well-formed 15-character id that no record has

    (result,) = merge_results(
        client, session, merge_request("Account", master, [unknown], "<urn1:Phone>9</urn1:Phone>")
    )

    assert result.findtext("p:success", namespaces=NS) == "false"
    assert result.findtext("p:errors/p:statusCode", namespaces=NS) == "INVALID_CROSS_REFERENCE_KEY"
    assert query(client, session, f"SELECT Phone FROM Account WHERE Id = '{master}'")[0]["Phone"] is None


def test_each_merge_request_succeeds_or_fails_on_its_own(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "M"})
    loser = create(client, session, "Account", {"Name": "L"})

    results = merge_results(
        client, session, merge_request("Account", master, [master]), merge_request("Account", master, [loser])
    )

    assert [r.findtext("p:success", namespaces=NS) for r in results] == ["false", "true"]


def test_an_empty_soap_action_is_dispatched_by_the_body(client: TestClient, session: str) -> None:
    # WSDL-generated clients send SOAPAction "" (the partner WSDL's value for every operation).
    master = create(client, session, "Account", {"Name": "M"})
    loser = create(client, session, "Account", {"Name": "L"})

    response = post_merge(client, session, merge_request("Account", master, [loser]), action='""')

    assert response.status_code == 200, response.text
    result = ET.fromstring(response.text).find("s:Body/p:mergeResponse/p:result", NS)
    assert result is not None
    assert result.findtext("p:success", namespaces=NS) == "true"


def test_merge_needs_a_valid_session(client: TestClient) -> None:
    response = post_merge(client, "not-a-session", merge_request("Account", "001000000000000AAA", []))

    assert response.status_code == 500
    assert ET.fromstring(response.text).findtext(".//faultcode") == "sf:INVALID_SESSION_ID"


def decoded_events(emulator: Emulator, after: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in emulator.event_log.events(emulator.default_org.org_id):
        if event.replay <= after:
            continue
        schema_json = emulator.event_log.schema_json(event.schema_id)
        assert schema_json is not None
        schema = fastavro.parse_schema(json.loads(schema_json))
        decoded: Any = fastavro.schemaless_reader(io.BytesIO(event.payload), schema, None)
        out.append(decoded)
    return out


def test_merge_publishes_one_transaction_with_loser_deletes_and_a_master_update(
    client: TestClient, session: str, emulator: Emulator
) -> None:
    master = create(client, session, "Account", {"Name": "M"})
    loser = create(client, session, "Account", {"Name": "L"})
    head = emulator.event_log.head(emulator.default_org.org_id)

    merge_results(client, session, merge_request("Account", master, [loser]), client_id="duplex-merge")

    headers = [e["ChangeEventHeader"] for e in decoded_events(emulator, head)]
    assert [(h["entityName"], h["changeType"], h["recordIds"]) for h in headers] == [
        ("Account", "UPDATE", [master]),
        ("Account", "DELETE", [loser]),
    ]
    assert {h["changeOrigin"] for h in headers} == {"com/salesforce/api/soap/62.0;client=duplex-merge"}
    assert len({h["transactionKey"] for h in headers}) == 1
    assert [h["sequenceNumber"] for h in headers] == [1, 2]


def limit_info(response: Any) -> tuple[str, str]:
    body = ET.fromstring(response.text)
    info = body.find("s:Header/p:LimitInfoHeader/p:limitInfo", NS)
    assert info is not None
    return info.findtext("p:current", namespaces=NS) or "", info.findtext("p:limit", namespaces=NS) or ""


def test_undelete_and_merge_count_against_the_api_allocation(client: TestClient, session: str) -> None:
    master = create(client, session, "Account", {"Name": "M"})
    loser = create(client, session, "Account", {"Name": "L"})
    before = usage(client)

    undeleted = post_undelete(client, session, loser, client_id="soap-client")
    merged = post_merge(client, session, merge_request("Account", master, [loser]), client_id="soap-client")

    after = usage(client)
    assert after["used"] == before["used"] + 2
    assert after["by_client"].get("soap-client") == 2
    assert undeleted.headers["Sforce-Limit-Info"] == f"api-usage={before['used'] + 1}/15000"
    assert merged.headers["Sforce-Limit-Info"] == f"api-usage={before['used'] + 2}/15000"
    assert limit_info(merged) == (str(before["used"] + 2), "15000")


def test_soap_data_calls_get_the_orgs_injected_outages(client: TestClient, session: str) -> None:
    gone = create(client, session, "Account", {"Name": "Gone"})
    client.delete(f"{DATA}/sobjects/Account/{gone}", headers=bearer(session))
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 1.0})
    before = usage(client)["used"]

    response = post_undelete(client, session, gone)

    assert response.status_code == 503
    assert ET.fromstring(response.text).findtext(".//faultcode") == "sf:SERVER_UNAVAILABLE"
    assert usage(client)["used"] == before
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"unavailable_ratio": 0.0})
    assert query(client, session, f"SELECT Id FROM Account WHERE Id = '{gone}'") == []


def test_soap_data_calls_wait_out_the_orgs_injected_latency(client: TestClient, session: str) -> None:
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"latency_ms": 400})

    started = time.monotonic()
    response = post_undelete(client, session, "001000000000000AAA")

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4


def test_soap_data_calls_are_refused_once_the_allocation_is_used_up(client: TestClient, session: str) -> None:
    client.patch("/__emulator__/orgs/acme/faults", headers=ADMIN, json={"api_limit": usage(client)["used"]})

    response = post_undelete(client, session, "001000000000000AAA")

    assert response.status_code == 500
    assert ET.fromstring(response.text).findtext(".//faultcode") == "sf:REQUEST_LIMIT_EXCEEDED"
    assert response.headers["Sforce-Limit-Info"].startswith("api-usage=")
