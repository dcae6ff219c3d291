"""simple-salesforce, unchanged, against the REST data API and Bulk 2.0 ingest over real HTTP on 127.0.0.1.

simple-salesforce always builds ``https://`` URLs; a transport adapter sends them as plain HTTP to the
in-process server, so the client's own request building and response parsing are what is tested.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import FastAPI, Request
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceMoreThanOneRecord

from services.salesforce_emulator.bulk_ingest import build_bulk_ingest_router
from services.salesforce_emulator.changes import CommittedTransaction
from services.salesforce_emulator.context import CallContext, parse_call_options
from services.salesforce_emulator.errors import install_error_handlers
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.query_api import QueryService, run_query_url
from services.salesforce_emulator.rest import build_data_router
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.store import RecordStore

pytestmark = pytest.mark.integration

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
EMPLOYEE = custom_object(
    "Employee__c", "a00", "Employee", [FieldDef("Ext__c", "string", "Ext", length=40, external_id=True, custom=True)]
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, EMPLOYEE)}


class PlainHttp(HTTPAdapter):
    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = request.url.replace("https://", "http://", 1)
        return super().send(request, *args, **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[CommittedTransaction]]]:
    published: list[CommittedTransaction] = []

    class Sink:
        def publish(self, t: CommittedTransaction) -> None:
            published.append(t)

    store = RecordStore(":memory:", schema_for=lambda _o: OBJECTS, faults_for=lambda _o: OrgFaults(), sink=Sink())

    def ctx_dep(request: Request) -> CallContext:
        return CallContext(ORG, USER, "62.0", client=parse_call_options(request.headers.get("sforce-call-options")))

    app = FastAPI()
    install_error_handlers(app)
    queries = QueryService(store, store.objects)
    app.include_router(
        build_data_router(
            store, ctx_dep, query_handler=lambda ctx, url, headers: run_query_url(queries, ctx, url, headers)
        )
    )
    app.include_router(build_bulk_ingest_router(store, ctx_dep))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"127.0.0.1:{port}", published
    srv.should_exit = True
    thread.join(5)
    store.close()


@pytest.fixture
def sf(server: tuple[str, list[CommittedTransaction]]) -> Any:
    # Any: simple-salesforce resolves sObject handlers through __getattr__, which its annotations cannot express.
    session = requests.Session()
    session.mount("https://", PlainHttp())
    return Salesforce(instance=server[0], session_id="token", version="62.0", session=session)


def test_crud_and_upsert(sf: Any, server: tuple[str, list[CommittedTransaction]]) -> None:
    created = sf.Account.create({"Name": "Acme"}, headers={"Sforce-Call-Options": "client=duplex"})
    assert created["success"] is True
    assert server[1][-1].change_origin == "com/salesforce/api/rest/62.0;client=duplex"
    record = sf.Account.get(created["id"])
    assert record["Name"] == "Acme"
    assert sf.Account.update(created["id"], {"Phone": "1"}) == 204
    assert sf.Account.get(created["id"])["Phone"] == "1"
    assert sf.Employee__c.upsert("Ext__c/S-1", {"Name": "a"}) == 201
    assert sf.Employee__c.upsert("Ext__c/S-1", {"Name": "b"}) == 200
    assert sf.Employee__c.get_by_custom_id("Ext__c", "S-1")["Name"] == "b"
    sf.Employee__c.create({"Name": "dup", "Ext__c": "S-1"})
    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Employee__c.get_by_custom_id("Ext__c", "S-1")
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Account.create({"Phone": "1"})
    content: Any = caught.value.content
    assert content[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.Account.delete(created["id"]) == 204


def test_describe_and_replication(sf: Any) -> None:
    assert sf.describe()["maxBatchSize"] == 200
    assert any(f["name"] == "Name" for f in sf.Contact.describe()["fields"])
    assert sf.Contact.metadata()["objectDescribe"]["keyPrefix"] == "003"
    now = datetime.now(UTC)
    result = sf.Account.updated(now - timedelta(days=1), now + timedelta(minutes=1))
    assert "latestDateCovered" in result
    deleted = sf.Account.deleted(now - timedelta(days=1), now + timedelta(minutes=1))
    assert "deletedRecords" in deleted


def test_collections_and_composite_via_restful(sf: Any) -> None:
    records = [{"attributes": {"type": "Contact"}, "LastName": f"L{i}"} for i in range(5)]
    result = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    assert [r["success"] for r in result] == [True] * 5
    composite = sf.restful(
        "composite",
        method="POST",
        json={
            "compositeRequest": [
                {
                    "method": "POST",
                    "url": "/services/data/v62.0/sobjects/Account",
                    "referenceId": "a",
                    "body": {"Name": "C"},
                },
                {"method": "GET", "url": "/services/data/v62.0/sobjects/Account/@{a.id}", "referenceId": "g"},
            ]
        },
    )
    assert [c["httpStatusCode"] for c in composite["compositeResponse"]] == [201, 200]


def test_bulk2_insert_and_results(sf: Any) -> None:
    bulk2 = sf.bulk2
    records = [{"Name": f"Bulk {i}"} for i in range(30)] + [{"Phone": "1"}]
    results = bulk2.Account.insert(records=records, wait=1)
    assert results[0]["numberRecordsProcessed"] == 31
    assert results[0]["numberRecordsFailed"] == 1
    failed = bulk2.Account.get_failed_records(results[0]["job_id"])
    assert "REQUIRED_FIELD_MISSING" in failed
