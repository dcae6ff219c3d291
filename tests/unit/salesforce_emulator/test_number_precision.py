"""Numbers and a field's precision and scale, as Salesforce applies them on every write path.

Salesforce rounds a value with more decimals than the field's scale to the scale, half away from
zero (2.345 -> 2.35, -2.345 -> -2.35), scale 0 included, and refuses a value with more integer
digits than ``precision - scale`` (an int's ``digits``) for that record only:
``NUMBER_OUTSIDE_VALID_RANGE``, ``<Label>: value outside of valid range on numeric field: <value>``.
"""

from __future__ import annotations

import csv
import io
import json
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
from services.salesforce_emulator.errors import SalesforceError, install_error_handlers
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.rest import build_data_router, field_describe
from services.salesforce_emulator.schema import (
    ACCOUNT,
    OPPORTUNITY,
    STANDARD_OBJECTS,
    FieldDef,
    ObjectDef,
    custom_object,
)
from services.salesforce_emulator.store import RecordStore
from services.salesforce_emulator.validation import coerce, deserialize, plan_for, validate

pytestmark = pytest.mark.unit

ORG = "00D5g0000000001AAA"
USER = "0055g0000000001AAA"
B = "/services/data/v62.0"
MEASURE = custom_object(
    "Measure__c",
    "a09",
    "Measure",
    [
        FieldDef("Ext__c", "string", "Ext", length=40, external_id=True, custom=True),
        # Four integer digits and three decimals.
        FieldDef("Rate__c", "double", "Rate", precision=7, scale=3, custom=True),
        # No decimals: rounded to a whole number.
        FieldDef("Units__c", "double", "Units", precision=5, scale=0, custom=True),
        FieldDef("Share__c", "percent", "Share", precision=5, scale=2, custom=True),
        FieldDef("Count__c", "int", "Count", precision=4, custom=True),
        # An int field whose definition sets no digits: only its 32 bits bound it.
        FieldDef("Free__c", "int", "Free", custom=True),
    ],
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, MEASURE)}


def field(name: str) -> FieldDef:
    f = MEASURE.field(name)
    assert f is not None
    return f


# --- coerce: rounding to the scale --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "stored"),
    [
        ("Rate__c", 2.3455, 2.346),
        ("Rate__c", -2.3455, -2.346),
        ("Rate__c", 2.3454, 2.345),
        # round() would give 0.124 (half to even) and 1.00 (the double below 1.0005).
        ("Rate__c", 0.1235, 0.124),
        ("Rate__c", 1.0005, 1.001),
        ("Rate__c", "1.0005", 1.001),
        ("Rate__c", 7, 7.0),
        ("Rate__c", 1e-300, 0.0),
        # Scale 0 rounds too: half away from zero, not to even.
        ("Units__c", 2.5, 3.0),
        ("Units__c", -2.5, -3.0),
        ("Units__c", 0.5, 1.0),
        ("Units__c", 1.4999, 1.0),
        ("Units__c", "12.5", 13.0),
        ("Share__c", 2.345, 2.35),
        ("Share__c", -2.345, -2.35),
    ],
)
def test_decimals_beyond_the_scale_are_rounded_half_away_from_zero(name: str, raw: Any, stored: float) -> None:
    value = coerce(field(name), raw)

    assert value == stored
    assert isinstance(value, float)


def test_opportunity_amount_rounds_to_cents() -> None:
    amount = OPPORTUNITY.field("Amount")
    assert amount is not None
    assert (coerce(amount, 2.345), coerce(amount, -2.345), coerce(amount, 10.005)) == (2.35, -2.35, 10.01)


# --- check_values: the integer digits -----------------------------------------------------------


def check(obj: ObjectDef, body: dict[str, Any]) -> dict[str, Any]:
    """Bind and check ``body`` as an update does; the values as they would be stored."""
    plan = plan_for(obj)
    values, _ = deserialize(plan, body)
    validate(plan, values, "update")
    return values


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        ({"Rate__c": 9999.999}, 9999.999),
        ({"Rate__c": -9999.999}, -9999.999),
        ({"Rate__c": 0.0004}, 0.0),
        ({"Units__c": 99999}, 99999.0),
        ({"Units__c": 99999.4}, 99999.0),
        ({"Share__c": 999.994}, 999.99),
        ({"Count__c": 9999}, 9999),
        ({"Count__c": -9999}, -9999),
        ({"Free__c": 2**31 - 1}, 2**31 - 1),
    ],
)
def test_numbers_within_the_integer_digits_are_kept(body: dict[str, Any], stored: Any) -> None:
    assert check(MEASURE, body) == {next(iter(body)): stored}


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"Rate__c": 10000}, "Rate: value outside of valid range on numeric field: 10000.0"),
        ({"Rate__c": -10000.5}, "Rate: value outside of valid range on numeric field: -10000.5"),
        # Rounded to the scale first: 9999.9995 is 10000.000, which has five integer digits.
        ({"Rate__c": 9999.9995}, "Rate: value outside of valid range on numeric field: 10000.0"),
        ({"Units__c": 99999.5}, "Units: value outside of valid range on numeric field: 100000.0"),
        ({"Units__c": "1e19"}, "Units: value outside of valid range on numeric field: 1.0E19"),
        ({"Share__c": 1000}, "Share: value outside of valid range on numeric field: 1000.0"),
        ({"Count__c": 10000}, "Count: value outside of valid range on numeric field: 10000"),
        ({"Count__c": -10000}, "Count: value outside of valid range on numeric field: -10000"),
        # Shown as Java shows a double: scientific from 10 million up.
        ({"Rate__c": -12345678.5}, "Rate: value outside of valid range on numeric field: -1.23456785E7"),
        ({"Units__c": 1.5e300}, "Units: value outside of valid range on numeric field: 1.5E300"),
    ],
)
def test_more_integer_digits_than_the_field_holds_is_outside_the_valid_range(body: dict[str, Any], shown: str) -> None:
    with pytest.raises(SalesforceError) as refused:
        check(MEASURE, body)

    assert (refused.value.error_code, refused.value.message, refused.value.fields) == (
        "NUMBER_OUTSIDE_VALID_RANGE",
        shown,
        list(body),
    )


def test_standard_fields_hold_their_documented_digits() -> None:
    # AnnualRevenue: currency(18, 0); NumberOfEmployees: int, 8 digits; Probability: percent(3, 0).
    assert check(ACCOUNT, {"AnnualRevenue": 123456789012345678, "NumberOfEmployees": 99_999_999}) == {
        "AnnualRevenue": 123456789012345678.0,
        "NumberOfEmployees": 99_999_999,
    }
    beyond: list[tuple[ObjectDef, dict[str, Any]]] = [
        (ACCOUNT, {"AnnualRevenue": 1e19}),
        (ACCOUNT, {"NumberOfEmployees": 100_000_000}),
        (OPPORTUNITY, {"Probability": 999.5}),
        (OPPORTUNITY, {"Amount": 1e14}),
    ]
    for obj, body in beyond:
        with pytest.raises(SalesforceError) as refused:
            check(obj, body)
        assert refused.value.error_code == "NUMBER_OUTSIDE_VALID_RANGE", body
    with pytest.raises(SalesforceError) as annual:
        check(ACCOUNT, {"AnnualRevenue": 1e19})
    assert annual.value.message == "Annual Revenue: value outside of valid range on numeric field: 1.0E19"


# --- describe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "numbers"),
    [
        (field("Rate__c"), {"precision": 7, "scale": 3, "digits": 0}),
        (field("Units__c"), {"precision": 5, "scale": 0, "digits": 0}),
        (field("Count__c"), {"precision": 0, "scale": 0, "digits": 4}),
        (OPPORTUNITY.field("Amount"), {"precision": 16, "scale": 2, "digits": 0}),
        (OPPORTUNITY.field("Probability"), {"precision": 3, "scale": 0, "digits": 0}),
        (ACCOUNT.field("AnnualRevenue"), {"precision": 18, "scale": 0, "digits": 0}),
        (ACCOUNT.field("NumberOfEmployees"), {"precision": 0, "scale": 0, "digits": 8}),
        (ACCOUNT.field("BillingLatitude"), {"precision": 18, "scale": 15, "digits": 0}),
        (ACCOUNT.field("Name"), {"precision": 0, "scale": 0, "digits": 0}),
    ],
)
def test_describe_reports_precision_and_scale_or_digits(f: FieldDef | None, numbers: dict[str, int]) -> None:
    assert f is not None
    described = field_describe(f)
    assert {key: described[key] for key in numbers} == numbers


# --- every write path, through HTTP -------------------------------------------------------------


@dataclass
class Env:
    client: TestClient
    store: RecordStore
    ingest: BulkIngest

    def create(self, body: dict[str, Any]) -> str:
        r = self.client.post(f"{B}/sobjects/Measure__c", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def read(self, record_id: str) -> dict[str, Any]:
        r = self.client.get(f"{B}/sobjects/Measure__c/{record_id}")
        assert r.status_code == 200, r.text
        row: dict[str, Any] = r.json()
        return row

    def bulk(self, spec: dict[str, Any], csv_text: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Run a Bulk API 2.0 ingest job; its successful and failed results."""
        job = self.client.post(f"{B}/jobs/ingest", json={"contentType": "CSV", **spec}).json()
        url = f"{B}/jobs/ingest/{job['id']}"
        put = self.client.put(f"{url}/batches", content=csv_text.encode(), headers={"Content-Type": "text/csv"})
        assert put.status_code == 201, put.text
        self.client.patch(url, json={"state": "UploadComplete"})
        self.ingest.wait_idle()
        deadline = time.monotonic() + 10
        while self.client.get(url).json()["state"] not in ("JobComplete", "Failed", "Aborted"):
            assert time.monotonic() < deadline, "the job did not finish"
            self.ingest.wait_idle()
        ok = list(csv.DictReader(io.StringIO(self.client.get(f"{url}/successfulResults/").text)))
        failed = list(csv.DictReader(io.StringIO(self.client.get(f"{url}/failedResults/").text)))
        return ok, failed


@pytest.fixture
def env() -> Iterator[Env]:
    published: list[CommittedTransaction] = []

    class Sink:
        def publish(self, t: CommittedTransaction) -> None:
            published.append(t)

    store = RecordStore(":memory:", schema_for=lambda _o: OBJECTS, faults_for=lambda _o: OrgFaults(), sink=Sink())
    ctx = CallContext(ORG, USER, "62.0", client="duplex")
    ingest = BulkIngest(store, chunk_size=10)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_data_router(store, lambda: ctx, query_handler=lambda c, url, headers: None))
    app.include_router(build_bulk_ingest_router(store, lambda: ctx, ingest=ingest))
    with TestClient(app) as client:
        yield Env(client, store, ingest)
    ingest.wait_idle()
    store.close()


def errors(r: Any) -> list[str]:
    return [str(e["errorCode"]) for e in r.json()]


def test_rest_sobject_create_and_update_round_and_refuse(env: Env) -> None:
    a = env.create({"Name": "A", "Rate__c": 1.0005, "Units__c": 2.5, "Count__c": 12})
    assert {k: env.read(a)[k] for k in ("Rate__c", "Units__c", "Count__c")} == {
        "Rate__c": 1.001,
        "Units__c": 3.0,
        "Count__c": 12,
    }

    url = f"{B}/sobjects/Measure__c/{a}"
    refused = env.client.patch(url, json={"Rate__c": 12345.6, "Units__c": 4})
    assert (refused.status_code, errors(refused)) == (400, ["NUMBER_OUTSIDE_VALID_RANGE"])
    assert refused.json()[0]["fields"] == ["Rate__c"]
    # The record is untouched: the whole update was refused, not just its bad field.
    assert env.read(a)["Units__c"] == 3.0

    created = env.client.post(f"{B}/sobjects/Measure__c", json={"Name": "B", "Count__c": 123456})
    assert (created.status_code, errors(created)) == (400, ["NUMBER_OUTSIDE_VALID_RANGE"])


def test_rest_upsert_by_external_id_refuses_too(env: Env) -> None:
    r = env.client.patch(f"{B}/sobjects/Measure__c/Ext__c/x1", json={"Name": "X", "Share__c": 1000})
    assert (r.status_code, errors(r)) == (400, ["NUMBER_OUTSIDE_VALID_RANGE"])
    ok = env.client.patch(f"{B}/sobjects/Measure__c/Ext__c/x1", json={"Name": "X", "Share__c": -2.345})
    assert ok.status_code == 201, ok.text
    assert env.read(ok.json()["id"])["Share__c"] == -2.35


def test_a_collection_refuses_the_record_out_of_range_only(env: Env) -> None:
    records = [
        {"attributes": {"type": "Measure__c"}, "Name": "a", "Units__c": 100000},
        {"attributes": {"type": "Measure__c"}, "Name": "b", "Units__c": -0.5},
    ]
    r = env.client.post(f"{B}/composite/sobjects", json={"allOrNone": False, "records": records})

    assert r.status_code == 200, r.text
    first, second = r.json()
    assert (first["success"], first["errors"][0]["statusCode"]) == (False, "NUMBER_OUTSIDE_VALID_RANGE")
    assert first["errors"][0]["fields"] == ["Units__c"]
    assert second["success"] is True
    assert env.read(second["id"])["Units__c"] == -1.0


def test_a_composite_subrequest_refuses_its_record(env: Env) -> None:
    a = env.create({"Name": "A"})
    subrequests = [
        {"method": "PATCH", "url": f"{B}/sobjects/Measure__c/{a}", "referenceId": "bad", "body": {"Count__c": 10000}},
        {"method": "PATCH", "url": f"{B}/sobjects/Measure__c/{a}", "referenceId": "good", "body": {"Rate__c": 0.0005}},
    ]
    r = env.client.post(f"{B}/composite", json={"compositeRequest": subrequests})

    assert r.status_code == 200, r.text
    bad, good = r.json()["compositeResponse"]
    assert (bad["httpStatusCode"], bad["body"][0]["errorCode"]) == (400, "NUMBER_OUTSIDE_VALID_RANGE")
    assert good["httpStatusCode"] == 204
    assert env.read(a)["Rate__c"] == 0.001
    assert env.read(a)["Count__c"] is None


def test_bulk_csv_rounds_and_refuses_per_row(env: Env) -> None:
    ok, failed = env.bulk(
        {"object": "Measure__c", "operation": "insert"},
        "Name,Rate__c,Units__c,Count__c\na,2.3455,0.5,1\nb,1,1,99999\nc,10000,1,1\nd,-9999.9994,-2.5,-9999\n",
    )

    assert [row["Name"] for row in ok] == ["a", "d"]
    assert [(row["Name"], row["sf__Error"].split(":")[0]) for row in failed] == [
        ("b", "NUMBER_OUTSIDE_VALID_RANGE"),
        ("c", "NUMBER_OUTSIDE_VALID_RANGE"),
    ]
    stored = {r["Name"]: r for r in env.store.rows(ORG, "Measure__c")}
    assert {name: (r["Rate__c"], r["Units__c"], r["Count__c"]) for name, r in stored.items()} == {
        "a": (2.346, 1.0, 1),
        "d": (-9999.999, -3.0, -9999),
    }


def test_numeric_text_is_rounded_and_checked_like_a_number(env: Env) -> None:
    a = env.create({"Name": "A", "Rate__c": "0.1235"})
    assert json.loads(env.client.get(f"{B}/sobjects/Measure__c/{a}").content)["Rate__c"] == 0.124
    # 999.995 rounds to 1000.00: four integer digits where three are allowed.
    r = env.client.post(f"{B}/sobjects/Measure__c", json={"Name": "B", "Share__c": "999.995"})
    assert (r.status_code, errors(r)) == (400, ["NUMBER_OUTSIDE_VALID_RANGE"])
