"""Bulk API 2.0 query jobs through FastAPI: lifecycle, CSV, locator paging, failures."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.salesforce_emulator.bulk_query import (
    BulkQueryJobs,
    build_bulk_query_router,
    csv_cell,
    decode_locator,
    encode_locator,
)
from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import install_error_handlers
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.query_api import QueryService
from services.salesforce_emulator.schema import STANDARD_OBJECTS, ObjectDef
from services.salesforce_emulator.soql_engine import InMemoryRecords

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in STANDARD_OBJECTS}
JOBS = "/services/data/v59.0/jobs/query"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def build_rows() -> dict[str, list[dict[str, JsonValue]]]:
    ids = IdFactory()
    owner = ids.next("005")
    accounts: list[dict[str, JsonValue]] = [
        {
            "Id": ids.next("001"),
            "IsDeleted": i == 4,
            "Name": f'Acme, "{i}"' if i == 0 else f"Account {i:04d}",
            "NumberOfEmployees": i,
            "OwnerId": owner if i % 2 == 0 else None,
            "SystemModstamp": "2024-05-01T14:00:00.000+0200",
        }
        for i in range(2500)
    ]
    return {"Account": accounts, "User": [{"Id": owner, "IsDeleted": False, "Name": "Owner One"}]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(clock: Clock) -> BulkQueryJobs:
    service = QueryService(InMemoryRecords(build_rows()), lambda org: OBJECTS, now=clock)
    return BulkQueryJobs(service, now=clock, processing_seconds=5)


def make_client(jobs: BulkQueryJobs, org: str = ORG) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    def call_context() -> CallContext:
        return CallContext(org, USER, "59.0")

    app.include_router(build_bulk_query_router(InMemoryRecords({}), lambda o: OBJECTS, call_context, jobs=jobs))
    return TestClient(app)


@pytest.fixture
def client(jobs: BulkQueryJobs) -> TestClient:
    return make_client(jobs)


def create(client: TestClient, query: str, **extra: str) -> dict[str, object]:
    response = client.post(JOBS, json={"operation": "query", "query": query, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def read_csv(text: str, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(text), delimiter=delimiter))


def test_lifecycle_and_paging(client: TestClient, clock: Clock) -> None:
    job = create(client, "SELECT Id, Name, Owner.Name, SystemModstamp FROM Account ORDER BY NumberOfEmployees")
    assert str(job["id"]).startswith("750")
    assert len(str(job["id"])) == 18
    assert job["state"] == "UploadComplete"
    assert job["object"] == "Account"
    assert job["jobType"] == "V2Query"
    assert job["operation"] == "query"
    assert job["contentType"] == "CSV"
    assert job["apiVersion"] == 59.0
    assert job["createdById"] == USER
    assert job["createdDate"] == "2024-05-01T12:00:00.000+0000"
    url = f"{JOBS}/{job['id']}"
    assert client.get(url).json()["state"] == "InProgress"
    early = client.get(url + "/results")
    assert early.status_code == 400
    assert early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    clock.now += timedelta(seconds=5)
    info = client.get(url).json()
    assert info["state"] == "JobComplete"
    assert info["numberRecordsProcessed"] == 2499

    rows: list[list[str]] = []
    locator = ""
    pages = 0
    while True:
        params = {"maxRecords": "1000", **({"locator": locator} if locator else {})}
        response = client.get(url + "/results", params=params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        page = read_csv(response.text)
        assert page[0] == ["Id", "Name", "Owner.Name", "SystemModstamp"]
        assert int(response.headers["Sforce-NumberOfRecords"]) == len(page) - 1
        rows.extend(page[1:])
        pages += 1
        locator = response.headers["Sforce-Locator"]
        if locator == "null":
            break
    assert pages == 3
    assert len(rows) == 2499
    assert rows[0][1:] == ['Acme, "0"', "Owner One", "2024-05-01T12:00:00.000Z"]
    assert rows[1][2] == ""  # null lookup
    assert len({r[0] for r in rows}) == 2499
    # Locators stay valid while the job exists: a page can be read again.
    again = client.get(url + "/results", params={"maxRecords": "1000", "locator": encode_locator(1000)})
    assert read_csv(again.text)[1] == rows[1000]


def test_csv_quotes_every_value_and_honours_delimiter_and_line_ending(client: TestClient, clock: Clock) -> None:
    job = create(
        client,
        "SELECT Name, NumberOfEmployees FROM Account WHERE NumberOfEmployees < 2 ORDER BY Name",
        columnDelimiter="PIPE",
        lineEnding="CRLF",
    )
    clock.now += timedelta(seconds=10)
    text = client.get(f"{JOBS}/{job['id']}/results").text
    assert text == '"Name"|"NumberOfEmployees"\r\n"Account 0001"|"1"\r\n"Acme, ""0"""|"0"\r\n'


def test_query_all_includes_deleted(client: TestClient, clock: Clock) -> None:
    response = client.post(JOBS, json={"operation": "queryAll", "query": "SELECT Id, IsDeleted FROM Account"})
    job = response.json()
    clock.now += timedelta(seconds=10)
    body = client.get(f"{JOBS}/{job['id']}/results").text
    rows = read_csv(body)[1:]
    assert len(rows) == 2500
    assert [r for r in rows if r[1] == "true"] != []


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("SELECT Id FORM Account", "MALFORMED_QUERY"),
        ("SELECT Id FROM Nothing", "INVALID_TYPE"),
        ("SELECT Bogus FROM Account", "INVALID_FIELD"),
        ("SELECT COUNT() FROM Account", "Aggregate queries are not supported"),
        ("SELECT BillingAddress FROM Account", "compound data not supported"),
    ],
)
def test_bad_queries_fail_the_job(client: TestClient, clock: Clock, query: str, fragment: str) -> None:
    job = create(client, query)
    clock.now += timedelta(seconds=10)
    info = client.get(f"{JOBS}/{job['id']}").json()
    assert info["state"] == "Failed"
    assert fragment in info["errorMessage"]
    assert client.get(f"{JOBS}/{job['id']}/results").status_code == 400


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"operation": "insert", "query": "SELECT Id FROM Account"}, "INVALIDJOB"),
        ({"operation": "query"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Account", "columnDelimiter": "SPACE"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Account", "lineEnding": "CR"}, "INVALIDJOB"),
        ({"operation": "query", "query": "SELECT Id FROM Account", "contentType": "JSON"}, "INVALIDJOB"),
        ([1, 2], "JSON_PARSER_ERROR"),
    ],
)
def test_invalid_job_requests(client: TestClient, body: object, code: str) -> None:
    response = client.post(JOBS, json=body)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == code


def test_bad_json_body(client: TestClient) -> None:
    response = client.post(JOBS, content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_abort_delete_and_list(client: TestClient, clock: Clock) -> None:
    running = create(client, "SELECT Id FROM Account")
    done = create(client, "SELECT Id FROM User")
    listed = client.get(JOBS).json()
    assert listed["done"] is True
    assert {j["id"] for j in listed["records"]} == {running["id"], done["id"]}

    aborted = client.patch(f"{JOBS}/{running['id']}", json={"state": "Aborted"})
    assert aborted.status_code == 200
    assert aborted.json()["state"] == "Aborted"
    assert client.get(f"{JOBS}/{running['id']}").json()["state"] == "Aborted"
    again = client.patch(f"{JOBS}/{running['id']}", json={"state": "Aborted"})
    assert again.status_code == 400
    assert again.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    wrong = client.patch(f"{JOBS}/{done['id']}", json={"state": "UploadComplete"})
    assert wrong.status_code == 400

    clock.now += timedelta(seconds=10)
    assert client.get(f"{JOBS}/{done['id']}").json()["state"] == "JobComplete"
    assert client.delete(f"{JOBS}/{done['id']}").status_code == 204
    assert client.get(f"{JOBS}/{done['id']}").status_code == 404
    assert client.get(f"{JOBS}/{done['id']}/results").json()[0]["errorCode"] == "NOT_FOUND"

    # Terminal jobs are removed after seven days.
    clock.now += timedelta(days=7, seconds=1)
    assert client.get(JOBS).json()["records"] == []


def test_jobs_are_private_to_their_org(jobs: BulkQueryJobs, client: TestClient) -> None:
    job = create(client, "SELECT Id FROM Account")
    other = make_client(jobs, org="00D5g0000000002AAA")
    assert other.get(f"{JOBS}/{job['id']}").status_code == 404
    assert other.get(JOBS).json()["records"] == []


def test_results_parameters(client: TestClient, clock: Clock) -> None:
    job = create(client, "SELECT Id FROM Account")
    clock.now += timedelta(seconds=10)
    url = f"{JOBS}/{job['id']}/results"
    assert client.get(url, params={"locator": "!!!"}).json()[0]["errorCode"] == "INVALIDLOCATOR"
    assert client.get(url, params={"locator": encode_locator(99_999)}).status_code == 400
    assert client.get(url, params={"maxRecords": "0"}).status_code == 400
    assert client.get(url, params={"maxRecords": "ten"}).status_code == 400
    whole = client.get(url)
    assert whole.headers["Sforce-Locator"] == "null"
    assert whole.headers["Sforce-NumberOfRecords"] == "2499"


def test_unsupported_version_is_not_found(client: TestClient) -> None:
    assert client.get("/services/data/v45.0/jobs/query").status_code == 404


@pytest.mark.parametrize("offset", [0, 1, 2000, 10_000, 123_456])
def test_locators_round_trip(offset: int) -> None:
    assert decode_locator(encode_locator(offset)) == offset
    assert "=" not in encode_locator(offset)


def test_locator_looks_like_salesforce() -> None:
    assert encode_locator(10000) == "MTAwMDA"


def test_csv_datetimes_keep_four_digit_years() -> None:
    assert csv_cell("datetime", "0001-01-01T00:00:00.000+0000") == "0001-01-01T00:00:00.000Z"
    assert csv_cell("datetime", "0999-12-31T23:59:59.999+0000") == "0999-12-31T23:59:59.999Z"
    assert csv_cell("datetime", "2024-05-01T14:00:00.123+0200") == "2024-05-01T12:00:00.123Z"
