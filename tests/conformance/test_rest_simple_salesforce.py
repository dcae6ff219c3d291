"""simple-salesforce, unchanged, against the emulator process over HTTPS: CRUD, upsert, query and
query_all with paging, describe, collections, composite, getUpdated/getDeleted, Bulk API 2.0
ingest and query, API usage from Sforce-Limit-Info, and every error code Duplex relies on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from devstack.emulator import EmulatorProcess
from tests.fixtures.emulator import simple_salesforce

pytestmark = pytest.mark.conformance


# simple-salesforce resolves objects dynamically (sf.Account, sf.bulk2.Account), which mypy cannot
# follow, so the client is typed Any here.
SF = Any


@pytest.fixture(scope="module")
def sf(emulator: EmulatorProcess) -> SF:
    return simple_salesforce(emulator, client="conformance")


def unique(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_code(exc: Any) -> str:
    return str(exc.content[0]["errorCode"])


def test_crud_round_trip(sf: SF) -> None:
    created = sf.Account.create({"Name": "Conformance Ltd", "BillingCity": "Lyon", "AnnualRevenue": 2_000_000})
    assert created["success"] is True
    account_id = created["id"]
    assert len(account_id) == 18
    assert account_id.startswith("001")

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

    updated = sf.Account.updated(start, end)
    deleted = sf.Account.deleted(start, end)

    # Salesforce covers whole minutes only: latestDateCovered is floored to the minute, and a
    # change is listed once the covered window has passed it.
    covered = datetime.strptime(updated["latestDateCovered"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert (covered.second, covered.microsecond) == (0, 0)
    assert covered <= datetime.now(UTC)
    assert (kept in updated["ids"]) is (modstamp(sf, kept) < covered)
    # A deleted record's SystemModstamp (read with queryAll) is its deletion time.
    assert (gone in [d["id"] for d in deleted["deletedRecords"]]) is (modstamp(sf, gone) < covered)
    assert "earliestDateAvailable" in deleted


def modstamp(sf: SF, record_id: str) -> datetime:
    soql = f"SELECT SystemModstamp FROM Account WHERE Id = '{record_id}'"
    [row] = sf.query_all(soql, include_deleted=True)["records"]
    return datetime.strptime(row["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.%f%z")


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
