"""REST query/queryAll through FastAPI: paging, batch sizes, snapshots, relationships, errors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, install_error_handlers
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.query_api import (
    QueryCursors,
    QueryService,
    batch_size_from_header,
    build_query_router,
    run_query,
    run_query_url,
)
from services.salesforce_emulator.schema import STANDARD_OBJECTS, ObjectDef

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
OTHER_ORG = "00D5g0000000002AAA"
USER = "0055g0000000001AAA"
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in STANDARD_OBJECTS}


class MutableRecords:
    """A writable in-memory org, so tests can change data between pages."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, JsonValue]]] = {}

    def add(self, object_name: str, row: dict[str, JsonValue]) -> None:
        row.setdefault("IsDeleted", False)
        self.tables.setdefault(object_name, []).append(row)

    def rows(
        self, org_id: str, object_name: str, /, *, include_deleted: bool = False
    ) -> Iterator[Mapping[str, JsonValue]]:
        assert org_id == ORG
        for row in list(self.tables.get(object_name, [])):
            if include_deleted or not row["IsDeleted"]:
                yield row

    def get(self, org_id: str, object_name: str, record_id: str, /) -> Mapping[str, JsonValue] | None:
        return next((r for r in self.tables.get(object_name, []) if str(r["Id"])[:15] == record_id[:15]), None)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def records() -> MutableRecords:
    data = MutableRecords()
    ids = IdFactory()
    owner = ids.next("005")
    data.add("User", {"Id": owner, "Name": "Owner One"})
    for i in range(4500):
        data.add(
            "Account",
            {
                "Id": ids.next("001"),
                "Name": f"Account {i:05d}",
                "OwnerId": owner if i % 2 == 0 else None,
                "SystemModstamp": "2024-05-01T00:00:00.000+0000",
                "IsDeleted": i % 1000 == 999,
            },
        )
    return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(records: MutableRecords, clock: Clock) -> QueryService:
    return QueryService(records, lambda org: OBJECTS, cursors=QueryCursors(clock=clock))


@pytest.fixture
def client(records: MutableRecords, service: QueryService) -> TestClient:
    return make_client(records, service, ORG)


def make_client(records: MutableRecords, service: QueryService, org: str) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    def call_context() -> CallContext:
        return CallContext(org, USER, "59.0")

    app.include_router(build_query_router(records, lambda org_id: OBJECTS, call_context, service=service))
    return TestClient(app)


def get(client: TestClient, url: str, **headers: str) -> Any:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def error_of(client: TestClient, url: str) -> tuple[int, str, str]:
    response = client.get(url)
    (body,) = response.json()
    return response.status_code, body["errorCode"], body["message"]


QUERY = "/services/data/v59.0/query/"


def test_pages_follow_next_records_url(client: TestClient) -> None:
    soql = "SELECT Id, Name FROM Account ORDER BY Name"
    first = client.get(QUERY, params={"q": soql}).json()
    assert first["totalSize"] == 4496
    assert first["done"] is False
    assert len(first["records"]) == 2000
    url = first["nextRecordsUrl"]
    assert url.startswith("/services/data/v59.0/query/01g")
    assert url.endswith("-2000")
    locator = url.rsplit("/", 1)[1].split("-")[0]
    assert len(locator) == 18
    second = get(client, url)
    assert second["nextRecordsUrl"].endswith("-4000")
    third = get(client, second["nextRecordsUrl"])
    assert third["done"] is True
    assert "nextRecordsUrl" not in third
    names = [r["Name"] for page in (first, second, third) for r in page["records"]]
    assert len(names) == 4496
    assert names == sorted(names)
    assert all(page["totalSize"] == 4496 for page in (second, third))
    # The cursor closes after its last page.
    assert error_of(client, second["nextRecordsUrl"])[:2] == (400, "INVALID_QUERY_LOCATOR")


def test_record_shape_and_relationships(client: TestClient) -> None:
    body = client.get(QUERY, params={"q": "SELECT Name, Owner.Name FROM Account ORDER BY Name LIMIT 2"}).json()
    assert body["totalSize"] == 2
    assert body["done"] is True
    first, second = body["records"]
    assert first["attributes"]["type"] == "Account"
    assert first["attributes"]["url"].startswith("/services/data/v59.0/sobjects/Account/001")
    assert first["Owner"]["attributes"]["type"] == "User"
    assert first["Owner"]["Name"] == "Owner One"
    assert second["Owner"] is None
    assert list(first) == ["attributes", "Name", "Owner"]


def test_batch_size_header(client: TestClient) -> None:
    soql = {"q": "SELECT Id FROM Account"}
    page = client.get(QUERY, params=soql, headers={"Sforce-Query-Options": "batchSize=500"}).json()
    assert len(page["records"]) == 500
    assert page["nextRecordsUrl"].endswith("-500")
    following = client.get(page["nextRecordsUrl"], headers={"Sforce-Query-Options": "batchSize=500"}).json()
    assert len(following["records"]) == 500
    assert following["nextRecordsUrl"].endswith("-1000")
    clamped = client.get(QUERY, params=soql, headers={"Sforce-Query-Options": "batchSize=10"}).json()
    assert len(clamped["records"]) == 200
    capped = client.get(QUERY, params=soql, headers={"Sforce-Query-Options": "batchSize=9000"}).json()
    assert len(capped["records"]) == 2000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("batchSize=200", 200),
        ("batchsize = 1500", 1500),
        ("x=1; batchSize=5", 200),
        ("batchSize=x", None),
    ],
)
def test_batch_size_parsing(header: str | None, expected: int | None) -> None:
    assert batch_size_from_header(header) == expected


def test_paging_is_a_snapshot(client: TestClient, records: MutableRecords) -> None:
    soql = "SELECT Id, Name FROM Account ORDER BY Name"
    before = sorted(str(r["Name"]) for r in records.tables["Account"] if not r["IsDeleted"])
    first = client.get(QUERY, params={"q": soql}).json()
    # Writes after the first page: a new row sorting first, a rename, a delete.
    records.add("Account", {"Id": "0015g0000009999AAA", "Name": "Account 00000 new"})
    records.tables["Account"][3000]["Name"] = "Renamed"
    records.tables["Account"][4000]["IsDeleted"] = True
    second = get(client, first["nextRecordsUrl"])
    third = get(client, second["nextRecordsUrl"])
    assert [r["Name"] for page in (first, second, third) for r in page["records"]] == before
    fresh = client.get(QUERY, params={"q": soql}, headers={"Sforce-Query-Options": "batchSize=2000"}).json()
    assert fresh["records"][1]["Name"] == "Account 00000 new"
    assert fresh["totalSize"] == 4496


def test_query_all_includes_deleted_rows_and_pages_under_query_all(client: TestClient) -> None:
    soql = "SELECT Id, IsDeleted FROM Account"
    first = client.get("/services/data/v60.0/queryAll/", params={"q": soql}).json()
    assert first["totalSize"] == 4500
    assert first["nextRecordsUrl"].startswith("/services/data/v60.0/queryAll/01g")
    rest = get(client, first["nextRecordsUrl"])
    rest2 = get(client, rest["nextRecordsUrl"])
    deleted = [r for page in (first, rest, rest2) for r in page["records"] if r["IsDeleted"]]
    assert len(deleted) == 4
    live = client.get(QUERY, params={"q": "SELECT COUNT() FROM Account WHERE IsDeleted = true"}).json()
    assert live == {"totalSize": 0, "done": True, "records": []}


def test_count(client: TestClient) -> None:
    body = client.get(QUERY, params={"q": "SELECT COUNT() FROM Account WHERE OwnerId != null"}).json()
    assert body == {"totalSize": 2250, "done": True, "records": []}
    body = client.get(QUERY, params={"q": "SELECT COUNT(Id) n FROM Account"}).json()
    assert body == {"totalSize": 1, "done": True, "records": [{"attributes": {"type": "AggregateResult"}, "n": 4496}]}


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        (QUERY + "?q=SELECT+Id+FORM+Account", 400, "MALFORMED_QUERY"),
        (QUERY + "?q=SELECT+Id+FROM+Foo", 400, "INVALID_TYPE"),
        (QUERY + "?q=SELECT+Foo+FROM+Account", 400, "INVALID_FIELD"),
        (QUERY + "?q=SELECT+Id+FROM+Account+WHERE+Id+%3D+%27x%27", 400, "INVALID_QUERY_FILTER_OPERATOR"),
        (QUERY, 400, "MALFORMED_QUERY"),
        ("/services/data/v59.0/query", 400, "MALFORMED_QUERY"),
        (QUERY + "01g5g0000000001AAA-2000", 400, "INVALID_QUERY_LOCATOR"),
        (QUERY + "garbage", 400, "INVALID_QUERY_LOCATOR"),
        ("/services/data/v30.0/query/?q=SELECT+Id+FROM+Account", 410, "GONE"),
        ("/services/data/v99.0/query/?q=SELECT+Id+FROM+Account", 404, "NOT_FOUND"),
    ],
)
def test_errors(client: TestClient, url: str, status: int, code: str) -> None:
    got_status, got_code, _ = error_of(client, url)
    assert (got_status, got_code) == (status, code)


def test_malformed_message_names_the_token(client: TestClient) -> None:
    _, _, message = error_of(client, QUERY + "?q=SELECT+Id+FORM+Account")
    assert message.endswith("unexpected token: 'FORM'")


def test_locators_belong_to_their_org(records: MutableRecords, service: QueryService, client: TestClient) -> None:
    first = client.get(QUERY, params={"q": "SELECT Id FROM Account"}).json()
    intruder = make_client(records, service, OTHER_ORG)
    assert error_of(intruder, first["nextRecordsUrl"])[:2] == (400, "INVALID_QUERY_LOCATOR")
    assert len(get(client, first["nextRecordsUrl"])["records"]) == 2000


def test_idle_cursors_expire(client: TestClient, clock: Clock) -> None:
    first = client.get(QUERY, params={"q": "SELECT Id FROM Account"}).json()
    clock.now += 899
    second = get(client, first["nextRecordsUrl"])
    clock.now += 901
    assert error_of(client, second["nextRecordsUrl"])[:2] == (400, "INVALID_QUERY_LOCATOR")


def test_a_user_keeps_at_most_ten_open_cursors(client: TestClient) -> None:
    urls = [client.get(QUERY, params={"q": "SELECT Id FROM Account"}).json()["nextRecordsUrl"] for _ in range(11)]
    assert error_of(client, urls[0])[:2] == (400, "INVALID_QUERY_LOCATOR")
    assert all(len(get(client, url)["records"]) == 2000 for url in urls[1:])


def test_run_query_for_composite_shares_cursors(service: QueryService, client: TestClient) -> None:
    ctx = CallContext(ORG, USER, "61.0")
    body = run_query(service, ctx, "SELECT Id FROM Account", batch_size=1000)
    assert body["nextRecordsUrl"].startswith("/services/data/v61.0/query/01g")
    assert body["nextRecordsUrl"].endswith("-1000")
    assert len(get(client, body["nextRecordsUrl"])["records"]) == 1000
    via_url = run_query_url(service, ctx, "/services/data/v62.0/queryAll/?q=SELECT+COUNT()+FROM+Account")
    assert via_url == {"totalSize": 4500, "done": True, "records": []}
    page = run_query_url(
        service, ctx, "/services/data/v59.0/query?q=SELECT+Id+FROM+Account", {"sforce-query-options": "batchSize=300"}
    )
    nxt = run_query_url(service, ctx, page["nextRecordsUrl"])
    # A cursor keeps the batch size it was opened with.
    assert len(nxt["records"]) == 300
    assert nxt["nextRecordsUrl"].endswith("-600")
    with pytest.raises(SalesforceError) as info:
        run_query_url(service, ctx, "/services/data/v59.0/sobjects/Account")
    assert info.value.error_code == "NOT_FOUND"
