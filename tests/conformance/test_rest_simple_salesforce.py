"""simple-salesforce, unchanged, against the emulator process over HTTPS: CRUD, upsert, query and
query_all with paging, describe, collections, composite, getUpdated/getDeleted, Bulk API 2.0
ingest and query, API usage from Sforce-Limit-Info, and every error code Duplex relies on."""

from __future__ import annotations

import csv
import io
import string
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceOperationError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from devstack.emulator import API_VERSION, EmulatorProcess
from tests.fixtures.emulator import simple_salesforce

pytestmark = pytest.mark.conformance


# simple-salesforce resolves objects dynamically (sf.Account, sf.bulk2.Account), which mypy cannot
# follow, so the client is typed Any here.
SF = Any


@pytest.fixture(scope="module")
def sf(emulator: EmulatorProcess) -> SF:
    return simple_salesforce(emulator, client="conformance")


@pytest.fixture
def fresh_sf(emulator: EmulatorProcess) -> SF:
    """A session of its own: the module's ``sf`` does not survive the session-expiry test."""
    return simple_salesforce(emulator, client="conformance")


def unique(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_code(exc: Any) -> str:
    return str(exc.content[0]["errorCode"])


def case_safe_suffix(id15: str) -> str:
    """The 18-character id suffix, from the documented algorithm (not the emulator's code): per
    5-character chunk, bit j is set when character j is an uppercase letter, and the bits index
    ``A-Z0-5``."""
    alphabet = string.ascii_uppercase + "012345"
    chunks = (id15[i : i + 5] for i in (0, 5, 10))
    return "".join(
        alphabet[sum(1 << j for j, ch in enumerate(chunk) if ch in string.ascii_uppercase)] for chunk in chunks
    )


def test_crud_round_trip(sf: SF) -> None:
    created = sf.Account.create({"Name": "Conformance Ltd", "BillingCity": "Lyon", "AnnualRevenue": 2_000_000})
    assert created["success"] is True
    account_id = created["id"]
    assert len(account_id) == 18
    assert account_id.startswith("001")
    assert case_safe_suffix("001A0000006Vm9r") == "IAC"  # the helper itself, on a hand-checked vector
    assert account_id[15:] == case_safe_suffix(account_id[:15])

    record = sf.Account.get(account_id)
    assert record["attributes"]["type"] == "Account"
    assert record["Name"] == "Conformance Ltd"
    assert record["BillingCity"] == "Lyon"
    assert record["Is_Key_Account__c"] is True  # formula computed by the org

    assert sf.Account.update(account_id, {"Name": "Renamed", "BillingCity": None}) == 204
    assert sf.Account.get(account_id)["Name"] == "Renamed"
    assert sf.Account.get(account_id)["BillingCity"] is None

    assert sf.Account.delete(account_id) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(account_id)


def test_upsert_by_external_id_creates_then_updates(sf: SF) -> None:
    key = unique()
    assert sf.Account.upsert(f"Duplex_Id__c/{key}", {"Name": "First"}) == 201
    assert sf.Account.upsert(f"Duplex_Id__c/{key}", {"Name": "Second"}) == 200

    record = sf.Account.get_by_custom_id("Duplex_Id__c", key)
    assert record["Name"] == "Second"


def test_several_matches_on_a_non_unique_external_id_are_300(sf: SF, emulator: EmulatorProcess) -> None:
    # Upsert through a field that is an external id but not unique: Salesforce answers 300.
    org = emulator.info["org_id"]
    emulator.admin(
        "PUT",
        f"/orgs/{org}/objects/Lead",
        {"fields": [{"name": "Legacy_Ref__c", "type": "string", "length": 40, "external_id": True}]},
    )
    for name in ("A", "B"):
        sf.Lead.create({"LastName": name, "Company": "Dup Co", "Legacy_Ref__c": "same"})

    with pytest.raises(SalesforceMoreThanOneRecord):
        sf.Lead.upsert("Legacy_Ref__c/same", {"LastName": "C"})


def test_query_and_query_all_page_through_next_records_url(sf: SF) -> None:
    tag = unique("page")
    records = [{"attributes": {"type": "Account"}, "Name": f"{tag} {i:04d}"} for i in range(2_500)]
    for start in range(0, len(records), 200):
        results = sf.restful(
            "composite/sobjects", method="POST", json={"allOrNone": True, "records": records[start : start + 200]}
        )
        assert all(r["success"] for r in results)

    first = sf.query(f"SELECT Id, Name FROM Account WHERE Name LIKE '{tag}%' ORDER BY Name")
    assert first["totalSize"] == 2_500
    assert first["done"] is False
    assert len(first["records"]) == 2_000
    assert first["nextRecordsUrl"].startswith("/services/data/v62.0/query/")
    rest = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert (rest["done"], len(rest["records"])) == (True, 500)

    everything = sf.query_all(f"SELECT Id FROM Account WHERE Name LIKE '{tag}%'")
    assert len(everything["records"]) == 2_500

    deleted = everything["records"][0]["Id"]
    sf.Account.delete(deleted)
    live = sf.query(f"SELECT COUNT() FROM Account WHERE Name LIKE '{tag}%'")
    including_deleted = sf.query_all(
        f"SELECT Id, IsDeleted FROM Account WHERE Name LIKE '{tag}%'", include_deleted=True
    )
    assert live["totalSize"] == 2_499
    assert len(including_deleted["records"]) == 2_500
    assert [r["IsDeleted"] for r in including_deleted["records"] if r["Id"] == deleted] == [True]


def test_relationship_fields_nest_their_parent(sf: SF) -> None:
    account = sf.Account.create({"Name": unique("parent")})["id"]
    sf.Contact.create({"LastName": "Child", "AccountId": account})

    result = sf.query(f"SELECT Id, Account.Name FROM Contact WHERE AccountId = '{account}'")

    [row] = result["records"]
    assert row["Account"]["attributes"]["type"] == "Account"
    assert row["Account"]["Name"].startswith("parent-")


def test_describe_reports_field_metadata(sf: SF) -> None:
    described = sf.Account.describe()
    fields = {f["name"]: f for f in described["fields"]}

    assert described["keyPrefix"] == "001"
    assert fields["Duplex_Id__c"]["externalId"] is True
    assert fields["Duplex_Id__c"]["unique"] is True
    assert fields["Duplex_Id__c"]["custom"] is True
    assert fields["Is_Key_Account__c"]["calculated"] is True
    assert fields["Is_Key_Account__c"]["updateable"] is False
    assert fields["Name"]["nillable"] is False
    assert fields["Name"]["length"] == 255
    assert fields["ParentId"]["referenceTo"] == ["Account"]
    assert "Customer - Direct" in [v["value"] for v in fields["Type"]["picklistValues"]]
    assert fields["BillingCity"]["compoundFieldName"] == "BillingAddress"
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert {"Account", "Contact", "Lead", "Opportunity", "Case", "User", "Partner_Tier__c"} <= names


def test_get_updated_and_get_deleted(sf: SF) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    kept = sf.Account.create({"Name": unique("window")})["id"]
    sf.Account.update(kept, {"Phone": "555"})
    gone = sf.Account.create({"Name": unique("window")})["id"]
    sf.Account.delete(gone)
    end = datetime.now(UTC) + timedelta(minutes=1)
    last_write = max(modstamp(sf, kept), modstamp(sf, gone))

    updated = sf.Account.updated(start, end)
    deleted = sf.Account.deleted(start, end)

    # Salesforce covers whole minutes only: latestDateCovered is floored to the minute, and a
    # change is listed once the covered window has passed it.
    covered = parse(updated["latestDateCovered"])
    assert (covered.second, covered.microsecond) == (0, 0)
    assert covered <= datetime.now(UTC)
    deleted_covered = parse(deleted["latestDateCovered"])
    assert deleted_covered >= covered  # the two calls may straddle a minute boundary
    assert (kept in updated["ids"]) is (modstamp(sf, kept) < covered)
    assert (gone in [d["id"] for d in deleted["deletedRecords"]]) is (modstamp(sf, gone) < deleted_covered)
    assert "earliestDateAvailable" in deleted
    if min(covered, deleted_covered) <= last_write:
        # The writes are in the current minute: wait (at most a minute) until it is covered.
        next_minute = last_write.replace(second=0, microsecond=0) + timedelta(minutes=1)
        time.sleep(max(0.0, (next_minute - datetime.now(UTC)).total_seconds()) + 0.5)
        updated = sf.Account.updated(start, end)
        deleted = sf.Account.deleted(start, end)

    assert parse(updated["latestDateCovered"]) > last_write
    assert kept in updated["ids"]
    assert gone not in updated["ids"]  # deleted records are getDeleted's business
    # A deleted record's SystemModstamp (read with queryAll) is its deletion time.
    assert {d["id"]: parse(d["deletedDate"]) for d in deleted["deletedRecords"]}.get(gone) == modstamp(sf, gone)
    assert kept not in [d["id"] for d in deleted["deletedRecords"]]


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def modstamp(sf: SF, record_id: str) -> datetime:
    soql = f"SELECT SystemModstamp FROM Account WHERE Id = '{record_id}'"
    [row] = sf.query_all(soql, include_deleted=True)["records"]
    return parse(row["SystemModstamp"])


def test_composite_with_references(sf: SF) -> None:
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {
                "method": "POST",
                "url": "/services/data/v62.0/sobjects/Account",
                "referenceId": "acct",
                "body": {"Name": unique()},
            },
            {
                "method": "POST",
                "url": "/services/data/v62.0/sobjects/Contact",
                "referenceId": "person",
                "body": {"LastName": "Ref", "AccountId": "@{acct.id}"},
            },
        ],
    }
    result = sf.restful("composite", method="POST", json=body)

    statuses = [r["httpStatusCode"] for r in result["compositeResponse"]]
    assert statuses == [201, 201]
    contact_id = result["compositeResponse"][1]["body"]["id"]
    assert sf.Contact.get(contact_id)["AccountId"] == result["compositeResponse"][0]["body"]["id"]


def test_collections_all_or_none_rolls_back_with_placeholders(sf: SF) -> None:
    tag = unique("aon")
    body = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Account"}, "Name": f"{tag} ok"},
            {"attributes": {"type": "Account"}},  # Name missing
        ],
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)

    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Name LIKE '{tag}%'")["totalSize"] == 0


def test_collections_refuse_more_than_200_records(sf: SF) -> None:
    records = [{"attributes": {"type": "Account"}, "Name": str(i)} for i in range(201)]
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects", method="POST", json={"records": records})


def test_bulk_2_ingest_and_query(sf: SF) -> None:
    tag = unique("bulk")
    rows = [{"Name": f"{tag} {i}", "Duplex_Id__c": f"{tag}-{i}"} for i in range(300)]
    rows.append({"Name": "", "Duplex_Id__c": f"{tag}-bad"})  # fails: Name is required

    [result] = sf.bulk2.Account.upsert(records=rows, external_id_field="Duplex_Id__c", wait=0.2)
    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (301, 1)
    failed = sf.bulk2.Account.get_failed_records(result["job_id"])
    assert "REQUIRED_FIELD_MISSING" in failed

    pages = list(
        sf.bulk2.Account.query(
            f"SELECT Duplex_Id__c, Name FROM Account WHERE Name LIKE '{tag}%'", max_records=100, wait=0.2
        )
    )
    lines = [line for page in pages for line in page.strip().splitlines()[1:]]
    assert len(pages) >= 3
    assert len(lines) == 300


def test_api_usage_is_parsed_from_sforce_limit_info(sf: SF) -> None:
    sf.query("SELECT Id FROM User LIMIT 1")
    first = sf.api_usage["api-usage"]
    sf.query("SELECT Id FROM User LIMIT 1")
    second = sf.api_usage["api-usage"]

    assert first.total == 15_000  # Developer Edition
    assert second.used == first.used + 1
    assert sf.limits()["DailyApiRequests"]["Max"] == 15_000


@pytest.mark.parametrize(
    ("code", "attempt"),
    [
        ("REQUIRED_FIELD_MISSING", lambda sf: sf.Account.create({"Phone": "1"})),
        ("INVALID_FIELD", lambda sf: sf.Account.create({"Name": "x", "No_Such_Field__c": 1})),
        ("STRING_TOO_LONG", lambda sf: sf.Account.create({"Name": "x" * 256})),
        ("INVALID_TYPE", lambda sf: sf.query("SELECT Id FROM No_Such_Object__c")),
        ("MALFORMED_QUERY", lambda sf: sf.query("SELECT Id FORM Account")),
        ("INVALID_FIELD", lambda sf: sf.query("SELECT Nope__c FROM Account")),
        ("MALFORMED_ID", lambda sf: sf.Contact.create({"LastName": "x", "AccountId": "not-an-id"})),
        (
            "INVALID_CROSS_REFERENCE_KEY",
            lambda sf: sf.Contact.create({"LastName": "x", "AccountId": "001000000000000AAA"}),
        ),
        ("INSUFFICIENT_ACCESS_OR_READONLY", lambda sf: sf.Account.create({"Name": "x", "Is_Key_Account__c": True})),
        ("JSON_PARSER_ERROR", lambda sf: sf.restful("sobjects/Account", method="POST", data="{not json")),
    ],
)
def test_validation_errors_carry_salesforce_codes(sf: SF, code: str, attempt: Any) -> None:
    with pytest.raises(SalesforceMalformedRequest) as raised:
        attempt(sf)

    assert raised.value.status == 400
    assert error_code(raised.value) == code


def test_duplicate_values_are_refused(sf: SF) -> None:
    key = unique()
    sf.Account.create({"Name": "one", "Duplex_Id__c": key})
    with pytest.raises(SalesforceMalformedRequest) as raised:
        sf.Account.create({"Name": "two", "Duplex_Id__c": key})
    assert error_code(raised.value) == "DUPLICATE_VALUE"


def test_writing_a_deleted_record_is_entity_is_deleted(sf: SF) -> None:
    account = sf.Account.create({"Name": unique()})["id"]
    sf.Account.delete(account)
    with pytest.raises((SalesforceMalformedRequest, SalesforceResourceNotFound)) as raised:
        sf.Account.update(account, {"Name": "again"})
    assert error_code(raised.value) == "ENTITY_IS_DELETED"


def test_unknown_records_are_not_found(sf: SF) -> None:
    with pytest.raises(SalesforceResourceNotFound) as raised:
        sf.Account.get("001000000000000AAA")
    assert error_code(raised.value) == "NOT_FOUND"


def test_per_user_read_only_fields(emulator: EmulatorProcess) -> None:
    integration: SF = simple_salesforce(
        emulator, username="integration@acme.example", password="acme-integration-password"
    )
    with pytest.raises(SalesforceMalformedRequest) as raised:
        integration.Account.create({"Name": unique(), "AnnualRevenue": 5})
    assert error_code(raised.value) == "INSUFFICIENT_ACCESS_OR_READONLY"
    assert integration.Account.create({"Name": unique()})["success"]


def test_past_the_api_limit_calls_are_refused(faults: EmulatorProcess) -> None:
    sf: SF = simple_salesforce(faults)
    sf.query("SELECT Id FROM User LIMIT 1")
    used = sf.api_usage["api-usage"].used
    faults.admin("PATCH", f"/orgs/{faults.info['org_id']}/faults", {"api_limit": used + 1})

    sf.query("SELECT Id FROM User LIMIT 1")
    with pytest.raises(SalesforceRefusedRequest) as raised:
        sf.query("SELECT Id FROM User LIMIT 1")

    assert raised.value.status == 403
    assert error_code(raised.value) == "REQUEST_LIMIT_EXCEEDED"


def test_expired_sessions_are_invalid_session_id(faults: EmulatorProcess) -> None:
    sf: SF = simple_salesforce(faults)
    faults.admin("POST", f"/orgs/{faults.info['org_id']}/tokens/expire")

    with pytest.raises(SalesforceExpiredSession) as raised:
        sf.query("SELECT Id FROM User LIMIT 1")
    assert error_code(raised.value) == "INVALID_SESSION_ID"


def soap_logged_in(emulator: EmulatorProcess, username: str, password: str) -> SF:
    """simple-salesforce's own SOAP login; the query-string trick points its URL at the emulator."""
    session = requests.Session()
    session.trust_env = False
    session.verify = emulator.ca_cert
    return Salesforce(
        username=username,
        password=password,
        security_token="",
        domain=f"{urlparse(emulator.instance_url).netloc}/services/Soap/u/{API_VERSION}?",
        version=API_VERSION,
        session=session,
    )


def test_orgs_are_isolated(emulator: EmulatorProcess) -> None:
    acme = soap_logged_in(emulator, "admin@acme.example", "acme-dev-password")
    globex = soap_logged_in(emulator, "admin@globex.example", "globex-dev-password")
    assert acme.sf_instance == globex.sf_instance  # one emulator, one instance URL, two orgs
    name = unique("isolated")
    in_acme = acme.Account.create({"Name": name})["id"]
    in_globex = globex.Account.create({"Name": name})["id"]

    for other, record_id in ((globex, in_acme), (acme, in_globex)):
        with pytest.raises(SalesforceResourceNotFound) as raised:
            other.Account.get(record_id)
        assert error_code(raised.value) == "NOT_FOUND"
        assert other.query(f"SELECT Id FROM Account WHERE Id = '{record_id}'")["totalSize"] == 0
    assert [r["Id"] for r in acme.query_all(f"SELECT Id FROM Account WHERE Name = '{name}'")["records"]] == [in_acme]
    assert [r["Id"] for r in globex.query(f"SELECT Id FROM Account WHERE Name = '{name}'")["records"]] == [in_globex]

    acme.query("SELECT Id FROM User LIMIT 1")
    acme_before = acme.api_usage["api-usage"]
    globex.query("SELECT Id FROM User LIMIT 1")
    globex_before = globex.api_usage["api-usage"]
    for _ in range(5):
        globex.query("SELECT Id FROM User LIMIT 1")
    acme.query("SELECT Id FROM User LIMIT 1")
    globex.query("SELECT Id FROM User LIMIT 1")

    assert acme.api_usage["api-usage"].used == acme_before.used + 1  # only its own call
    assert globex.api_usage["api-usage"].used == globex_before.used + 6
    assert (acme_before.total, globex_before.total) == (15_000, 150_000)  # Developer; Enterprise with 50 licences


def test_collections_update_upsert_and_delete(fresh_sf: SF) -> None:
    sf = fresh_sf
    tag = unique("coll")
    created = sf.restful(
        "composite/sobjects",
        method="POST",
        json={"records": [{"attributes": {"type": "Account"}, "Name": f"{tag} {i}"} for i in (1, 2)]},
    )
    first, second = (r["id"] for r in created)

    updated = sf.restful(
        "composite/sobjects",
        method="PATCH",
        json={"records": [{"attributes": {"type": "Account"}, "id": i, "Phone": "555-0199"} for i in (first, second)]},
    )
    assert [(r["id"], r["success"]) for r in updated] == [(first, True), (second, True)]
    assert sf.Account.get(second)["Phone"] == "555-0199"

    sf.Account.update(first, {"Duplex_Id__c": f"{tag}-1"})
    upserted = sf.restful(
        "composite/sobjects/Account/Duplex_Id__c",
        method="PATCH",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Account"}, "Duplex_Id__c": f"{tag}-1", "Name": f"{tag} renamed"},
                {"attributes": {"type": "Account"}, "Duplex_Id__c": f"{tag}-3", "Name": f"{tag} 3"},
            ],
        },
    )
    assert [(r["success"], r["created"]) for r in upserted] == [(True, False), (True, True)]
    assert upserted[0]["id"] == first
    assert sf.Account.get(first)["Name"] == f"{tag} renamed"
    third = upserted[1]["id"]

    unknown = "001000000000000AAA"
    deleted = sf.restful(
        "composite/sobjects", method="DELETE", params={"ids": f"{first},{third},{unknown}", "allOrNone": "false"}
    )
    assert [(r["success"], r.get("id")) for r in deleted[:2]] == [(True, first), (True, third)]
    assert deleted[2]["success"] is False
    assert deleted[2]["errors"][0]["statusCode"] in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND")
    remaining = sf.query(f"SELECT Id FROM Account WHERE Name LIKE '{tag}%'")["records"]
    assert [r["Id"] for r in remaining] == [second]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_bulk_2_insert_update_delete_and_their_results(fresh_sf: SF) -> None:
    sf = fresh_sf
    tag = unique("b2")
    [inserted] = sf.bulk2.Account.insert(records=[{"Name": f"{tag} {i}"} for i in range(3)], wait=0.2)
    assert (inserted["numberRecordsProcessed"], inserted["numberRecordsFailed"]) == (3, 0)
    successes = csv_rows(sf.bulk2.Account.get_successful_records(inserted["job_id"]))
    assert sorted(r["Name"] for r in successes) == [f"{tag} {i}" for i in range(3)]
    assert {r["sf__Created"] for r in successes} == {"true"}
    ids = [r["sf__Id"] for r in successes]
    assert all(i[15:] == case_safe_suffix(i[:15]) for i in ids)

    [updated] = sf.bulk2.Account.update(records=[{"Id": i, "Phone": "555-0142"} for i in ids], wait=0.2)
    assert (updated["numberRecordsProcessed"], updated["numberRecordsFailed"]) == (3, 0)
    assert {r["sf__Created"] for r in csv_rows(sf.bulk2.Account.get_successful_records(updated["job_id"]))} == {"false"}
    assert {r["Phone"] for r in sf.query(f"SELECT Phone FROM Account WHERE Name LIKE '{tag}%'")["records"]} == {
        "555-0142"
    }

    [deleted] = sf.bulk2.Account.delete(records=[{"Id": i} for i in ids[:2]], wait=0.2)
    assert (deleted["numberRecordsProcessed"], deleted["numberRecordsFailed"]) == (2, 0)
    assert sorted(r["sf__Id"] for r in csv_rows(sf.bulk2.Account.get_successful_records(deleted["job_id"]))) == sorted(
        ids[:2]
    )
    assert csv_rows(sf.bulk2.Account.get_unprocessed_records(deleted["job_id"])) == []
    assert [r["Id"] for r in sf.query(f"SELECT Id FROM Account WHERE Name LIKE '{tag}%'")["records"]] == [ids[2]]


def test_bulk_2_rows_of_a_failed_job_are_unprocessed(fresh_sf: SF) -> None:
    sf = fresh_sf
    tag = unique("b2bad")
    with pytest.raises(SalesforceOperationError):
        sf.bulk2.Account.insert(records=[{"Name": f"{tag} {i}", "No_Such_Field__c": "x"} for i in range(2)], wait=0.2)

    jobs = sf.restful("jobs/ingest")["records"]
    failed = [j for j in jobs if j["object"] == "Account" and j["state"] == "Failed"]
    unprocessed = csv_rows(sf.bulk2.Account.get_unprocessed_records(failed[-1]["id"]))
    assert [r["Name"] for r in unprocessed] == [f"{tag} 0", f"{tag} 1"]


def test_injected_outages_and_lock_errors_reach_simple_salesforce(faults: EmulatorProcess) -> None:
    sf: SF = simple_salesforce(faults)
    account = sf.Account.create({"Name": unique("faulty")})["id"]
    org = faults.info["org_id"]

    faults.admin("PATCH", f"/orgs/{org}/faults", {"lock_ratio": 1.0})
    with pytest.raises(SalesforceMalformedRequest) as locked:
        sf.Account.update(account, {"Phone": "1"})
    assert (locked.value.status, error_code(locked.value)) == (400, "UNABLE_TO_LOCK_ROW")

    faults.admin("PATCH", f"/orgs/{org}/faults", {"lock_ratio": 0, "unavailable_ratio": 1.0})
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.Account.get(account)
    assert (unavailable.value.status, error_code(unavailable.value)) == (503, "SERVER_UNAVAILABLE")

    faults.admin("PATCH", f"/orgs/{org}/faults", {"unavailable_ratio": 0})
    assert sf.Account.update(account, {"Phone": "1"}) == 204
