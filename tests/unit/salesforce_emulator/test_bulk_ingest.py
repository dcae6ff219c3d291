"""Bulk API 2.0 ingest jobs through HTTP: lifecycle, per-record results, chunked transactions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.salesforce_emulator.bulk_ingest import BulkIngest, build_bulk_ingest_router
from services.salesforce_emulator.changes import CommittedTransaction
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import install_error_handlers
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.store import RecordStore

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
J = "/services/data/v62.0/jobs/ingest"
EMPLOYEE = custom_object(
    "Employee__c", "a00", "Employee", [FieldDef("Ext__c", "string", "Ext", length=40, external_id=True, custom=True)]
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, EMPLOYEE)}


@dataclass
class Env:
    client: TestClient
    store: RecordStore
    ingest: BulkIngest
    published: list[CommittedTransaction]

    def run(self, spec: dict[str, Any], csv_text: str) -> dict[str, Any]:
        job = self.client.post(J, json={"contentType": "CSV", **spec}).json()
        assert job["state"] == "Open", job
        up = self.client.put(
            f"{J}/{job['id']}/batches", content=csv_text.encode(), headers={"Content-Type": "text/csv"}
        )
        assert up.status_code == 201
        assert (
            self.client.patch(f"{J}/{job['id']}", json={"state": "UploadComplete"}).json()["state"] == "UploadComplete"
        )
        return self.wait(job["id"])

    def wait(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info: dict[str, Any] = self.client.get(f"{J}/{job_id}").json()
            if info["state"] in ("JobComplete", "Failed", "Aborted"):
                return info
            time.sleep(0.02)
        raise AssertionError("job did not finish")


@pytest.fixture
def env() -> Iterator[Env]:
    published: list[CommittedTransaction] = []

    class Sink:
        def publish(self, t: CommittedTransaction) -> None:
            published.append(t)

    store = RecordStore(":memory:", schema_for=lambda _o: OBJECTS, faults_for=lambda _o: OrgFaults(), sink=Sink())
    ctx = CallContext(ORG, USER, "62.0", client="loader")
    ingest = BulkIngest(store, chunk_size=2)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_bulk_ingest_router(store, lambda: ctx, ingest=ingest))
    with TestClient(app) as client:
        yield Env(client, store, ingest, published)
    ingest.wait_idle()
    store.close()


def test_job_info_shape(env: Env) -> None:
    r = env.client.post(J, json={"object": "Account", "operation": "insert", "contentType": "CSV", "lineEnding": "LF"})
    assert r.status_code == 200
    job = r.json()
    assert job["id"].startswith("750")
    assert {k: job[k] for k in ("state", "jobType", "concurrencyMode", "contentType", "columnDelimiter")} == {
        "state": "Open",
        "jobType": "V2Ingest",
        "concurrencyMode": "Parallel",
        "contentType": "CSV",
        "columnDelimiter": "COMMA",
    }
    assert job["contentUrl"] == f"services/data/v62.0/jobs/ingest/{job['id']}/batches"
    assert job["apiVersion"] == 62.0
    assert job["createdById"] == USER
    listed = env.client.get(J).json()
    assert listed["done"] is True
    assert [j["id"] for j in listed["records"]] == [job["id"]]


def test_insert_with_failures_and_results(env: Env) -> None:
    info = env.run(
        {"object": "Account", "operation": "insert"},
        'Name,Phone,NumberOfEmployees\nA,1,3\n,2,4\n"C, Inc",#N/A,x\nD,,5\nE,5,6\n',
    )
    assert info["state"] == "JobComplete"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (5, 2)
    ok = env.client.get(f"{J}/{info['id']}/successfulResults/").text.splitlines()
    assert ok[0] == '"sf__Id","sf__Created","Name","Phone","NumberOfEmployees"'
    assert len(ok) == 4
    assert ok[1].endswith(',"true","A","1","3"')
    failed = env.client.get(f"{J}/{info['id']}/failedResults/").text.splitlines()
    assert failed[0] == '"sf__Id","sf__Error","Name","Phone","NumberOfEmployees"'
    assert failed[1] == '"","REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --","","2","4"'
    assert failed[2].startswith('"","INVALID_FIELD:')
    names = sorted(str(r["Name"]) for r in env.store.rows(ORG, "Account"))
    assert names == ["A", "D", "E"]
    # Chunks of 2 records: each chunk is its own transaction, from the bulk API.
    assert [len(t.changes) for t in env.published] == [1, 1, 1]
    assert {t.change_origin for t in env.published} == {"com/salesforce/api/bulkapi/62.0;client=loader"}


def test_update_upsert_delete_and_hard_delete(env: Env) -> None:
    env.run(
        {"object": "Employee__c", "operation": "upsert", "externalIdFieldName": "Ext__c"}, "Ext__c,Name\n1,a\n2,b\n"
    )
    rows = {r["Ext__c"]: r for r in env.store.rows(ORG, "Employee__c")}
    one, two = str(rows["1"]["Id"]), str(rows["2"]["Id"])
    info = env.run(
        {
            "object": "Employee__c",
            "operation": "upsert",
            "externalIdFieldName": "ext__c",
            "columnDelimiter": "SEMICOLON",
        },
        "Ext__c;Name\n1;a2\n3;c\n",
    )
    ok = env.client.get(f"{J}/{info['id']}/successfulResults/").text.splitlines()
    assert [line.split(";")[1] for line in ok[1:]] == ['"false"', '"true"']
    env.run({"object": "Employee__c", "operation": "update"}, f"Id,Name\n{two},b2\n0015g0000000099AAA,x\n")
    assert env.store.get(ORG, "Employee__c", two)["Name"] == "b2"  # type: ignore[index]
    info = env.run({"object": "Employee__c", "operation": "delete"}, f"Id\n{one}\n")
    assert info["numberRecordsFailed"] == 0
    assert env.store.get(ORG, "Employee__c", one)["IsDeleted"] is True  # type: ignore[index]
    env.run({"object": "Employee__c", "operation": "hardDelete"}, f"Id\n{one}\n")
    assert env.store.get(ORG, "Employee__c", one) is None


def test_unknown_column_fails_the_job(env: Env) -> None:
    info = env.run({"object": "Account", "operation": "insert"}, "Name,Nope\nA,1\n")
    assert info["state"] == "Failed"
    assert info["errorMessage"] == "InvalidBatch : Field name not found : Nope"
    assert env.client.get(f"{J}/{info['id']}/unprocessedrecords/").text.splitlines() == ['"Name","Nope"', '"A","1"']
    assert list(env.store.rows(ORG, "Account")) == []


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"object": "Nope__c", "operation": "insert"}, "INVALIDJOB"),
        ({"object": "Account", "operation": "merge"}, "INVALIDJOB"),
        ({"object": "Account", "operation": "upsert"}, "INVALIDJOB"),
        ({"object": "Account", "operation": "upsert", "externalIdFieldName": "Name"}, "INVALIDJOB"),
        ({"object": "Account", "operation": "insert", "columnDelimiter": "DOT"}, "INVALIDJOB"),
    ],
)
def test_bad_job_specs(env: Env, spec: dict[str, Any], code: str) -> None:
    r = env.client.post(J, json=spec)
    assert r.status_code == 400
    assert r.json()[0]["errorCode"] == code


def test_state_transitions(env: Env) -> None:
    job = env.client.post(J, json={"object": "Account", "operation": "insert"}).json()
    jid = job["id"]
    assert env.client.delete(f"{J}/{jid}").status_code == 400
    assert env.client.patch(f"{J}/{jid}", json={"state": "JobComplete"}).json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert env.client.patch(f"{J}/{jid}", json={"state": "Aborted"}).json()["state"] == "Aborted"
    assert env.client.patch(f"{J}/{jid}", json={"state": "Aborted"}).status_code == 400
    up = env.client.put(f"{J}/{jid}/batches", content=b"Name\nA\n")
    assert (up.status_code, up.json()[0]["errorCode"]) == (400, "INVALIDJOBSTATE")
    assert env.client.delete(f"{J}/{jid}").status_code == 204
    assert env.client.get(f"{J}/{jid}").status_code == 404


def test_close_without_data_fails_and_second_upload_is_refused(env: Env) -> None:
    jid = env.client.post(J, json={"object": "Account", "operation": "insert"}).json()["id"]
    env.client.patch(f"{J}/{jid}", json={"state": "UploadComplete"})
    assert env.wait(jid)["state"] == "Failed"
    jid = env.client.post(J, json={"object": "Account", "operation": "insert"}).json()["id"]
    assert env.client.put(f"{J}/{jid}/batches", content=b"Name\nA\n").status_code == 201
    assert env.client.put(f"{J}/{jid}/batches", content=b"Name\nB\n").status_code == 400


def test_jobs_are_private_to_their_org(env: Env) -> None:
    jid = env.client.post(J, json={"object": "Account", "operation": "insert"}).json()["id"]
    other = CallContext("00D5g0000000002AAA", USER, "62.0")
    with pytest.raises(Exception, match="NOT_FOUND"):
        env.ingest.job(other, jid)
