"""The REST data API through HTTP (FastAPI TestClient): shapes, statuses and one test per error code."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from services.salesforce_emulator import cdc
from services.salesforce_emulator.changes import CommittedTransaction
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, install_error_handlers
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.query_api import QueryService, run_query_url
from services.salesforce_emulator.rest import build_data_router
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.store import RecordStore

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
B = "/services/data/v62.0"
EMPLOYEE = custom_object(
    "Employee__c",
    "a00",
    "Employee",
    [
        FieldDef("Ext__c", "string", "Ext", length=40, external_id=True, custom=True),
        FieldDef("Badge__c", "string", "Badge", length=20, unique=True, custom=True),
    ],
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, EMPLOYEE)}


@dataclass
class Env:
    client: TestClient
    store: RecordStore
    published: list[CommittedTransaction]
    faults: OrgFaults
    clock: list[float]
    readonly: set[str] = field(default_factory=set)

    def create(self, obj: str, body: dict[str, Any]) -> str:
        r = self.client.post(f"{B}/sobjects/{obj}", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture
def env() -> Iterator[Env]:
    published: list[CommittedTransaction] = []
    faults, clock, readonly = OrgFaults(), [1_714_564_800.0], set[str]()

    class Sink:
        def publish(self, t: CommittedTransaction) -> None:
            published.append(t)

    store = RecordStore(
        ":memory:",
        schema_for=lambda _o: OBJECTS,
        faults_for=lambda _o: faults,
        sink=Sink(),
        readonly_fields_for=lambda _o, _u: readonly,
        clock=lambda: clock[0],
    )
    queries = QueryService.with_clock(store, store.objects, lambda: clock[0])
    ctx = CallContext(ORG, USER, "62.0", client="duplex")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(
        build_data_router(
            store, lambda: ctx, query_handler=lambda c, url, headers: run_query_url(queries, c, url, headers)
        )
    )
    with TestClient(app) as client:
        yield Env(client, store, published, faults, clock, readonly)
    store.close()


def error(r: Any) -> tuple[int, str]:
    body = r.json()
    return r.status_code, body[0]["errorCode"]


# --- versions and describe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"), [("30.0", (410, "GONE")), ("99.0", (404, "NOT_FOUND")), ("abc", (404, "NOT_FOUND"))]
)
def test_versions_salesforce_does_not_serve(env: Env, version: str, expected: tuple[int, str]) -> None:
    # The data API judges versions itself too, so Composite subrequests get the same answers.
    assert error(env.client.get(f"/services/data/v{version}/sobjects/")) == expected
    sub = {"method": "GET", "url": f"/services/data/v{version}/sobjects/", "referenceId": "old"}
    body = env.client.post(f"{B}/composite", json={"compositeRequest": [sub]}).json()["compositeResponse"][0]
    assert (body["httpStatusCode"], body["body"][0]["errorCode"]) == expected


def test_describe_global(env: Env) -> None:
    body = env.client.get(f"{B}/sobjects/").json()
    assert body["encoding"] == "UTF-8"
    assert body["maxBatchSize"] == 200
    account = next(s for s in body["sobjects"] if s["name"] == "Account")
    expected = {
        "activateable", "createable", "custom", "customSetting", "deletable", "deprecatedAndHidden", "feedEnabled",
        "hasSubtypes", "isSubtype", "keyPrefix", "label", "labelPlural", "layoutable", "mergeable", "mruEnabled",
        "name", "queryable", "replicateable", "retrieveable", "searchable", "triggerable", "undeletable",
        "updateable", "urls",
    }  # fmt: skip
    assert expected <= set(account)
    assert account["keyPrefix"] == "001"
    assert account["urls"]["sobject"] == f"{B}/sobjects/Account"
    assert next(s for s in body["sobjects"] if s["name"] == "Employee__c")["custom"] is True


def test_basic_info_lists_recent_items(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    body = env.client.get(f"{B}/sobjects/account").json()
    assert body["objectDescribe"]["name"] == "Account"
    assert body["recentItems"] == [
        {"attributes": {"type": "Account", "url": f"{B}/sobjects/Account/{a}"}, "Id": a, "Name": "A"}
    ]


def test_describe_fields_and_if_modified_since(env: Env) -> None:
    r = env.client.get(f"{B}/sobjects/Opportunity/describe")
    assert r.status_code == 200
    body = r.json()
    for key in ("fields", "childRelationships", "recordTypeInfos", "keyPrefix", "urls", "undeletable"):
        assert key in body
    fields = {f["name"]: f for f in body["fields"]}
    closed = fields["IsClosed"]
    assert closed["calculated"] is True
    assert closed["calculatedFormula"] == "StageName IN ('Closed Won', 'Closed Lost')"
    assert closed["createable"] is False
    stage = fields["StageName"]
    assert stage["type"] == "picklist"
    assert stage["picklistValues"][0] == {
        "active": True,
        "defaultValue": False,
        "label": "Prospecting",
        "validFor": None,
        "value": "Prospecting",
    }
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert fields["Amount"]["soapType"] == "xsd:double"
    assert (fields["Amount"]["precision"], fields["Amount"]["scale"]) == (16, 2)
    assert fields["Name"]["byteLength"] == 360
    assert fields["Id"]["idLookup"] is True
    required_keys = {
        "aggregatable", "autoNumber", "byteLength", "calculated", "calculatedFormula", "compoundFieldName",
        "createable", "custom", "defaultValue", "defaultedOnCreate", "digits", "externalId", "filterable",
        "idLookup", "label", "length", "name", "nameField", "nillable", "picklistValues", "precision",
        "referenceTo", "relationshipName", "scale", "soapType", "sortable", "type", "unique", "updateable",
    }  # fmt: skip
    assert required_keys <= set(closed)
    account_children = env.client.get(f"{B}/sobjects/Account/describe").json()["childRelationships"]
    assert {"childSObject": "Contact", "field": "AccountId"}.items() <= next(
        c for c in account_children if c["childSObject"] == "Contact"
    ).items()
    again = env.client.get(
        f"{B}/sobjects/Opportunity/describe", headers={"If-Modified-Since": r.headers["Last-Modified"]}
    )
    assert again.status_code == 304
    older = env.client.get(
        f"{B}/sobjects/Opportunity/describe", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert older.status_code == 200


def test_case_number_describe_is_autonumber(env: Env) -> None:
    fields = {f["name"]: f for f in env.client.get(f"{B}/sobjects/Case/describe").json()["fields"]}
    assert fields["CaseNumber"]["autoNumber"] is True
    assert fields["BillingAddress" if False else "Status"]["defaultedOnCreate"] is True


# --- CRUD -----------------------------------------------------------------------------------------


def test_crud_round_trip(env: Env) -> None:
    r = env.client.post(f"{B}/sobjects/Account/", json={"Name": "Acme", "BillingCity": "Paris"})
    assert r.status_code == 201
    assert r.json() == {"id": r.json()["id"], "success": True, "errors": []}
    a = r.json()["id"]
    record = env.client.get(f"{B}/sobjects/Account/{a}").json()
    assert list(record)[:2] == ["attributes", "Id"]
    assert record["attributes"] == {"type": "Account", "url": f"{B}/sobjects/Account/{a}"}
    assert record["BillingAddress"]["city"] == "Paris"
    assert record["CreatedDate"] == "2024-05-01T12:00:00.000+0000"
    some = env.client.get(f"{B}/sobjects/Account/{a[:15]}?fields=Name,Phone").json()
    assert some == {"attributes": record["attributes"], "Name": "Acme", "Phone": None}
    assert env.client.patch(f"{B}/sobjects/Account/{a}", json={"Phone": "1"}).status_code == 204
    assert env.client.get(f"{B}/sobjects/Account/{a}").json()["Phone"] == "1"
    assert env.client.delete(f"{B}/sobjects/Account/{a}").status_code == 204
    assert error(env.client.get(f"{B}/sobjects/Account/{a}")) == (404, "NOT_FOUND")
    assert [t.changes[0].change_type for t in env.published] == ["CREATE", "UPDATE", "DELETE"]
    assert env.published[0].change_origin == "com/salesforce/api/rest/62.0;client=duplex"


def test_get_and_delete_by_external_id(env: Env) -> None:
    e = env.create("Employee__c", {"Name": "a", "Ext__c": "E-1"})
    r = env.client.get(f"{B}/sobjects/Employee__c/Ext__c/e-1")
    assert r.status_code == 200
    assert r.json()["Id"] == e
    env.create("Employee__c", {"Name": "b", "Ext__c": "E-1"})
    several = env.client.get(f"{B}/sobjects/Employee__c/Ext__c/E-1")
    assert several.status_code == 300
    assert several.json()[0] == f"{B}/sobjects/Employee__c/{e}"
    assert error(env.client.get(f"{B}/sobjects/Employee__c/Ext__c/none")) == (404, "NOT_FOUND")
    only = env.create("Employee__c", {"Name": "c", "Ext__c": "E-2"})
    assert env.client.delete(f"{B}/sobjects/Employee__c/Ext__c/E-2").status_code == 204
    assert env.store.get(ORG, "Employee__c", only)["IsDeleted"] is True  # type: ignore[index]


def test_upsert_statuses(env: Env) -> None:
    created = env.client.patch(f"{B}/sobjects/Employee__c/Ext__c/U1", json={"Name": "a"})
    assert created.status_code == 201
    body = created.json()
    assert body == {"id": body["id"], "success": True, "errors": [], "created": True}
    updated = env.client.patch(f"{B}/sobjects/Employee__c/Ext__c/U1", json={"Name": "b"})
    assert updated.status_code == 200
    assert updated.json() == {"id": body["id"], "success": True, "errors": [], "created": False}
    env.create("Employee__c", {"Name": "dup", "Ext__c": "U1"})
    several = env.client.patch(f"{B}/sobjects/Employee__c/Ext__c/U1", json={"Name": "c"})
    assert several.status_code == 300
    assert len(several.json()) == 2
    with_id = env.client.patch(f"{B}/sobjects/Employee__c/Ext__c/U2", json={"Id": body["id"], "Name": "x"})
    assert error(with_id) == (400, "INVALID_FIELD")
    with_ext = env.client.patch(f"{B}/sobjects/Employee__c/Ext__c/U2", json={"Ext__c": "U2", "Name": "x"})
    assert error(with_ext) == (400, "INVALID_FIELD")
    assert error(env.client.patch(f"{B}/sobjects/Employee__c/Name/U2", json={})) == (404, "NOT_FOUND")


def test_create_with_id_as_external_id(env: Env) -> None:
    r = env.client.post(f"{B}/sobjects/Account/Id", json={"Name": "A"})
    assert r.status_code == 201
    assert r.json()["created"] is True
    rid = r.json()["id"]
    r = env.client.patch(f"{B}/sobjects/Account/Id/{rid}", json={"Name": "B"})
    assert (r.status_code, r.json()["created"]) == (200, False)


# --- one test per error code ------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, str, str, Any, int, str]] = [
    ("required", "POST", "/sobjects/Account", {"Phone": "1"}, 400, "REQUIRED_FIELD_MISSING"),
    ("unknown field", "POST", "/sobjects/Account", {"Name": "a", "Foo": 1}, 400, "INVALID_FIELD"),
    ("too long", "POST", "/sobjects/Account", {"Name": "x" * 256}, 400, "STRING_TOO_LONG"),
    ("wrong json type", "POST", "/sobjects/Account", {"Name": "a", "NumberOfEmployees": "x"}, 400, "JSON_PARSER_ERROR"),
    ("not an object", "POST", "/sobjects/Account", [1], 400, "JSON_PARSER_ERROR"),
    ("readonly", "POST", "/sobjects/Account", {"Name": "a", "IsDeleted": True}, 400, "INSUFFICIENT_ACCESS_OR_READONLY"),
    ("malformed path id", "GET", "/sobjects/Account/xyz", None, 400, "MALFORMED_ID"),
    ("malformed ref", "POST", "/sobjects/Contact", {"LastName": "l", "AccountId": "x"}, 400, "MALFORMED_ID"),
    (
        "bad cross reference",
        "POST",
        "/sobjects/Contact",
        {"LastName": "l", "AccountId": "0015g0000000099AAA"},
        400,
        "INVALID_CROSS_REFERENCE_KEY",
    ),
    ("unknown object", "GET", "/sobjects/Nope__c/describe", None, 404, "NOT_FOUND"),
    ("missing record", "GET", "/sobjects/Account/0015g0000000099AAA", None, 404, "NOT_FOUND"),
    ("wrong type for path id", "GET", "/sobjects/Contact/0015g0000000099AAA", None, 404, "NOT_FOUND"),
    ("bad email", "POST", "/sobjects/Contact", {"LastName": "l", "Email": "x"}, 400, "INVALID_EMAIL_ADDRESS"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_codes(env: Env, method: str, path: str, body: Any, status: int, code: str) -> None:
    r = env.client.request(method, B + path, json=body)
    assert error(r) == (status, code)
    assert env.published == []


def test_bad_json_body(env: Env) -> None:
    r = env.client.post(f"{B}/sobjects/Account", content=b"{nope", headers={"Content-Type": "application/json"})
    assert error(r) == (400, "JSON_PARSER_ERROR")
    assert error(env.client.post(f"{B}/sobjects/Account", content=b"")) == (400, "JSON_PARSER_ERROR")


def strict_json(content: bytes) -> Any:
    """JSON as Salesforce writes it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(content, parse_constant=refuse)


# Bodies no Salesforce field can hold: not JSON, or JSON no field's value can come from.
UNPARSABLE_BODIES = [
    ("NaN", b'{"Name": "a", "AnnualRevenue": NaN}'),
    ("-Infinity", b'{"Name": "a", "AnnualRevenue": -Infinity}'),
    ("nesting deeper than the parser goes", b'{"Name": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("lone surrogate in text", b'{"Name": "a\\ud800b"}'),
    ("lone surrogate in a number field", b'{"Name": "a", "AnnualRevenue": "\\udc00"}'),
    ("lone surrogate in a name", b'{"Name": "a", "N\\udfffame": "b"}'),
    ("surrogates in the wrong order", b'{"Name": "\\udc00\\ud800"}'),
    ("an integer of 5,000 digits", b'{"Name": "a", "NumberOfEmployees": 1' + b"0" * 5000 + b"}"),
]


@pytest.mark.parametrize("body", [b for _, b in UNPARSABLE_BODIES], ids=[name for name, _ in UNPARSABLE_BODIES])
def test_bodies_no_field_can_hold_are_json_parser_errors(env: Env, body: bytes) -> None:
    r = env.client.post(f"{B}/sobjects/Account", content=body, headers={"Content-Type": "application/json"})

    assert error(r) == (400, "JSON_PARSER_ERROR")
    assert strict_json(r.content)[0]["message"].isascii()
    assert env.published == []


def test_a_surrogate_pair_is_text_like_any_other(env: Env) -> None:
    r = env.client.post(
        f"{B}/sobjects/Account", content=b'{"Name": "\\ud83d\\ude00"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 201, r.text
    assert env.client.get(f"{B}/sobjects/Account/{r.json()['id']}").json()["Name"] == "\U0001f600"


def test_an_error_quoting_a_lone_surrogate_still_renders() -> None:
    refused = SalesforceError(400, "INVALID_FIELD", "No such column 'a\ud800' on sobject of type Account", ["a\ud800"])

    rendered = JSONResponse(refused.rest_body(), status_code=refused.http_status)

    assert strict_json(bytes(rendered.body)) == [
        {
            "message": "No such column 'a\\ud800' on sobject of type Account",
            "errorCode": "INVALID_FIELD",
            "fields": ["a\\ud800"],
        }
    ]


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1" + "0" * 400, '"1E+400"'])
def test_a_number_beyond_a_double_is_outside_the_valid_range(env: Env, value: str) -> None:
    a = env.create("Account", {"Name": "A", "AnnualRevenue": 5})
    r = env.client.patch(
        f"{B}/sobjects/Account/{a}",
        content=f'{{"AnnualRevenue": {value}}}'.encode(),
        headers={"Content-Type": "application/json"},
    )

    assert error(r) == (400, "NUMBER_OUTSIDE_VALID_RANGE")
    assert r.json()[0]["fields"] == ["AnnualRevenue"]
    assert strict_json(env.client.get(f"{B}/sobjects/Account/{a}").content)["AnnualRevenue"] == 5.0


def test_an_int_field_holds_its_digits_within_32_bits(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    url = f"{B}/sobjects/Account/{a}"

    assert env.client.patch(url, json={"NumberOfEmployees": 99_999_999}).status_code == 204
    # Eight digits fit NumberOfEmployees (describe's digits); 2**31 - 1 is a Java int with ten.
    assert error(env.client.patch(url, json={"NumberOfEmployees": 2**31 - 1})) == (400, "NUMBER_OUTSIDE_VALID_RANGE")
    assert error(env.client.patch(url, json={"NumberOfEmployees": 2**31})) == (400, "JSON_PARSER_ERROR")
    assert error(env.client.patch(url, json={"NumberOfEmployees": -(10**30)})) == (400, "JSON_PARSER_ERROR")
    assert env.client.get(url).json()["NumberOfEmployees"] == 99_999_999


def test_a_number_out_of_range_fails_its_record_only_in_a_collection(env: Env) -> None:
    body = {"allOrNone": False, "records": [acc("a", AnnualRevenue="INFINITE"), acc("b", AnnualRevenue=7)]}
    content = json.dumps(body).replace('"INFINITE"', "1e400").encode()

    r = env.client.post(f"{B}/composite/sobjects", content=content, headers={"Content-Type": "application/json"})

    assert r.status_code == 200
    first, second = r.json()
    assert (first["success"], first["errors"][0]["statusCode"]) == (False, "NUMBER_OUTSIDE_VALID_RANGE")
    assert second["success"] is True


def test_a_date_before_year_1000_is_stored_and_streamed_with_four_digits(env: Env) -> None:
    # Stored as "1-01-01" once: the write succeeded, and its change event failed to encode.
    o = env.create("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "0001-01-01T10:00:00Z"})

    assert env.client.get(f"{B}/sobjects/Opportunity/{o}").json()["CloseDate"] == "0001-01-01"
    (event,) = [e for t in env.published for e in cdc.change_events(t, OBJECTS)]
    record = cdc.change_event_schema(OBJECTS["Opportunity"]).decode(event.payload)
    assert record["CloseDate"] == -719_162  # days from 1970-01-01 back to 0001-01-01


def test_duplicate_value(env: Env) -> None:
    env.create("Employee__c", {"Name": "a", "Badge__c": "B"})
    r = env.client.post(f"{B}/sobjects/Employee__c", json={"Name": "b", "Badge__c": "B"})
    assert error(r) == (400, "DUPLICATE_VALUE")
    assert r.json()[0]["fields"] == ["Badge__c"]


def test_entity_is_deleted(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.client.delete(f"{B}/sobjects/Account/{a}")
    assert error(env.client.delete(f"{B}/sobjects/Account/{a}")) == (404, "ENTITY_IS_DELETED")
    assert error(env.client.patch(f"{B}/sobjects/Account/{a}", json={"Name": "x"})) == (404, "ENTITY_IS_DELETED")


def test_per_user_readonly_field(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.readonly.add("Account.Phone")
    r = env.client.patch(f"{B}/sobjects/Account/{a}", json={"Phone": "1"})
    assert error(r) == (400, "INSUFFICIENT_ACCESS_OR_READONLY")


def test_unable_to_lock_row(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    env.faults.lock_ratio = 1.0
    r = env.client.patch(f"{B}/sobjects/Account/{a}", json={"Name": "B"})
    assert error(r) == (400, "UNABLE_TO_LOCK_ROW")
    items = env.client.patch(
        f"{B}/composite/sobjects", json={"records": [{"attributes": {"type": "Account"}, "id": a, "Name": "C"}]}
    ).json()
    assert items[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"


def test_picklists_are_unrestricted(env: Env) -> None:
    a = env.create("Account", {"Name": "A", "Industry": "Space"})
    assert env.client.get(f"{B}/sobjects/Account/{a}").json()["Industry"] == "Space"


# --- sObject Collections ------------------------------------------------------------------------


def acc(name: str | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"attributes": {"type": "Account"}, **extra}
    if name is not None:
        record["Name"] = name
    return record


def test_collection_create_partial_success_in_input_order(env: Env) -> None:
    r = env.client.post(
        f"{B}/composite/sobjects", json={"allOrNone": False, "records": [acc("a"), acc(None), acc("c")]}
    )
    assert r.status_code == 200
    items = r.json()
    assert [i["success"] for i in items] == [True, False, True]
    assert items[1] == {
        "success": False,
        "errors": [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [Name]",
                "fields": ["Name"],
            }
        ],
    }
    assert len(env.published) == 1
    assert [c.record_ids[0] for c in env.published[0].changes] == [items[0]["id"], items[2]["id"]]


def test_collection_all_or_none_rolls_back_with_placeholders(env: Env) -> None:
    r = env.client.post(f"{B}/composite/sobjects", json={"allOrNone": True, "records": [acc("a"), acc(None)]})
    items = r.json()
    assert items[0] == {
        "success": False,
        "errors": [
            {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the request was using "
                "AllOrNone header",
                "fields": [],
            }
        ],
    }
    assert items[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert list(env.store.rows(ORG, "Account", include_deleted=True)) == []
    assert env.published == []


def test_collection_mixed_types_update_and_delete(env: Env) -> None:
    created = env.client.post(
        f"{B}/composite/sobjects",
        json={"records": [acc("a"), {"attributes": {"type": "Contact"}, "LastName": "L"}]},
    ).json()
    a, c = created[0]["id"], created[1]["id"]
    assert c.startswith("003")
    updated = env.client.patch(
        f"{B}/composite/sobjects",
        json={"records": [acc("a2", id=a), {"attributes": {"type": "Contact"}, "Id": c, "Title": "T"}, acc("x")]},
    ).json()
    assert [u["success"] for u in updated] == [True, True, False]
    assert updated[2]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
    deleted = env.client.delete(f"{B}/composite/sobjects?ids={a},{c},0015g0000000099AAA&allOrNone=false").json()
    assert [d["success"] for d in deleted] == [True, True, False]
    assert deleted[2]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    again = env.client.delete(f"{B}/composite/sobjects?ids={a}").json()
    assert again[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


def test_collection_upsert(env: Env) -> None:
    def emp(ext: str, name: str) -> dict[str, Any]:
        return {"attributes": {"type": "Employee__c"}, "Ext__c": ext, "Name": name}

    first = env.client.patch(f"{B}/composite/sobjects/Employee__c/Ext__c", json={"records": [emp("1", "a")]}).json()
    assert first[0]["created"] is True
    r = env.client.patch(
        f"{B}/composite/sobjects/Employee__c/Ext__c",
        json={"allOrNone": False, "records": [emp("1", "b"), emp("2", "c"), emp("3", "d"), emp("3", "e")]},
    ).json()
    assert [(i["success"], i["created"]) for i in r] == [(True, False), (True, True), (False, False), (False, False)]
    assert r[0]["id"] == first[0]["id"]
    assert r[2]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"


def test_collection_limits_and_whole_request_errors(env: Env) -> None:
    too_many = env.client.post(f"{B}/composite/sobjects", json={"records": [acc(str(i)) for i in range(201)]})
    assert error(too_many) == (400, "EXCEEDED_ID_LIMIT")
    unknown = env.client.post(f"{B}/composite/sobjects", json={"records": [acc("a"), acc("b", Foo=1)]})
    assert error(unknown) == (400, "INVALID_FIELD")
    untyped = env.client.post(f"{B}/composite/sobjects", json={"records": [{"Name": "a"}]})
    assert error(untyped) == (400, "INVALID_TYPE")
    assert env.published == []


def test_collection_of_200_is_one_transaction(env: Env) -> None:
    r = env.client.post(f"{B}/composite/sobjects", json={"records": [acc(str(i)) for i in range(200)]})
    assert all(i["success"] for i in r.json())
    assert len(env.published) == 1
    assert len(env.published[0].changes) == 200


# --- Composite --------------------------------------------------------------------------------------


def test_composite_references_and_statuses(env: Env) -> None:
    body = {
        "compositeRequest": [
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "acct", "body": {"Name": "A"}},
            {
                "method": "POST",
                "url": f"{B}/sobjects/Contact",
                "referenceId": "con",
                "body": {"LastName": "L", "AccountId": "@{acct.id}"},
            },
            {"method": "GET", "url": f"{B}/sobjects/Contact/@{{con.id}}?fields=AccountId", "referenceId": "get"},
            {
                "method": "PATCH",
                "url": f"{B}/composite/sobjects",
                "referenceId": "coll",
                "body": {"records": [{"attributes": {"type": "Account"}, "id": "@{acct.id}", "Phone": "1"}]},
            },
            {
                "method": "PATCH",
                "url": f"{B}/sobjects/Account/@{{coll[0].id}}",
                "referenceId": "upd",
                "body": {"Website": "w"},
            },
        ]
    }
    out = env.client.post(f"{B}/composite", json=body).json()["compositeResponse"]
    assert [o["httpStatusCode"] for o in out] == [201, 201, 200, 200, 204]
    assert [o["referenceId"] for o in out] == ["acct", "con", "get", "coll", "upd"]
    acct = out[0]["body"]["id"]
    assert out[0]["httpHeaders"] == {"Location": f"{B}/sobjects/Account/{acct}"}
    assert out[2]["body"]["AccountId"] == acct
    assert out[4]["body"] is None
    # Without allOrNone every write subrequest commits on its own; the GET writes nothing.
    assert len(env.published) == 4


def test_composite_all_or_none_halts_and_rolls_back(env: Env) -> None:
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "ok", "body": {"Name": "A"}},
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "bad", "body": {}},
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "later", "body": {"Name": "C"}},
        ],
    }
    out = env.client.post(f"{B}/composite", json=body).json()["compositeResponse"]
    assert [o["httpStatusCode"] for o in out] == [400, 400, 400]
    assert out[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert out[1]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert out[2]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert list(env.store.rows(ORG, "Account", include_deleted=True)) == []
    assert env.published == []


def test_composite_all_or_none_success_is_one_transaction(env: Env) -> None:
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "a", "body": {"Name": "A"}},
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "b", "body": {"Name": "B"}},
        ],
    }
    out = env.client.post(f"{B}/composite", json=body).json()["compositeResponse"]
    assert [o["httpStatusCode"] for o in out] == [201, 201]
    assert len(env.published) == 1
    assert len(env.published[0].changes) == 2


def test_composite_reference_to_failed_subrequest_is_processing_halted(env: Env) -> None:
    body = {
        "compositeRequest": [
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "bad", "body": {}},
            {"method": "GET", "url": f"{B}/sobjects/Account/@{{bad.id}}", "referenceId": "next"},
        ]
    }
    out = env.client.post(f"{B}/composite", json=body).json()["compositeResponse"]
    assert out[1]["httpStatusCode"] == 400
    assert out[1]["body"][0]["errorCode"] == "PROCESSING_HALTED"


def test_composite_query_subrequests_see_earlier_subrequests(env: Env) -> None:
    body = {
        "compositeRequest": [
            {"method": "POST", "url": f"{B}/sobjects/Account", "referenceId": "a", "body": {"Name": "Q"}},
            {"method": "GET", "url": f"{B}/query/?q=SELECT+Name+FROM+Account+WHERE+Id='@{{a.id}}'", "referenceId": "q"},
        ]
    }
    out = env.client.post(f"{B}/composite", json=body).json()["compositeResponse"]
    assert [o["httpStatusCode"] for o in out] == [201, 200]
    assert out[1]["body"]["totalSize"] == 1
    assert [r["Name"] for r in out[1]["body"]["records"]] == ["Q"]


def test_composite_limit(env: Env) -> None:
    subs = [{"method": "GET", "url": f"{B}/sobjects/", "referenceId": f"r{i}"} for i in range(26)]
    assert env.client.post(f"{B}/composite", json={"compositeRequest": subs}).status_code == 400


# --- getUpdated / getDeleted ----------------------------------------------------------------------------


def test_get_updated_and_deleted(env: Env) -> None:
    a = env.create("Account", {"Name": "A"})
    b = env.create("Account", {"Name": "B"})
    env.clock[0] += 120
    env.client.delete(f"{B}/sobjects/Account/{b}")
    env.clock[0] += 600
    start, end = "2024-05-01T11:59:00%2B00:00", "2024-05-01T12:30:00Z"
    updated = env.client.get(f"{B}/sobjects/Account/updated/?start={start}&end={end}").json()
    assert updated == {"ids": [a], "latestDateCovered": "2024-05-01T12:12:00.000+0000"}
    deleted = env.client.get(f"{B}/sobjects/Account/deleted/?start={start}&end={end}").json()
    assert deleted["deletedRecords"] == [{"id": b, "deletedDate": "2024-05-01T12:02:00.000+0000"}]
    assert deleted["latestDateCovered"] == "2024-05-01T12:12:00.000+0000"
    assert deleted["earliestDateAvailable"] == "2024-05-01T12:00:00.000+0000"


@pytest.mark.parametrize(
    ("resource", "query"),
    [
        ("updated", "start=2024-03-01T00:00:00Z&end=2024-05-01T00:00:00Z"),
        ("deleted", "start=2024-04-10T00:00:00Z&end=2024-05-01T00:00:00Z"),
        ("updated", "start=2024-05-01T00:00:00Z&end=2024-04-30T00:00:00Z"),
        ("updated", "start=garbage&end=2024-04-30T00:00:00Z"),
    ],
)
def test_replication_windows_are_checked(env: Env, resource: str, query: str) -> None:
    r = env.client.get(f"{B}/sobjects/Account/{resource}/?{query}")
    assert error(r) == (400, "INVALID_REPLICATION_DATE")
