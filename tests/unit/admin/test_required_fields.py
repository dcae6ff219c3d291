"""Each pair must give every field a create needs on the side it creates records in: Salesforce's
standard objects as the emulator describes them (Contact LastName; Lead LastName and Company;
Opportunity Name, StageName and CloseDate), and the app's declared required fields."""

from __future__ import annotations

from typing import Any

import pytest

from services.admin.required_fields import MissingFields, filter_problems, missing_required
from services.common.schema import AppField, AppObject, CrmObject, crm_object
from services.common.tenant_config import TenantConfig
from services.salesforce_emulator.rest import object_describe
from services.salesforce_emulator.schema import STANDARD_OBJECTS
from tests.fixtures.documents import tenant_config

DESCRIBED = {
    o.name.lower(): crm_object(object_describe(o, {s.name: s for s in STANDARD_OBJECTS}, "62.0"))
    for o in STANDARD_OBJECTS
}


def config(pairs: list[dict[str, Any]]) -> TenantConfig:
    return tenant_config(pairs)


def pair(sobject: str, fields: dict[str, str], direction: str = "both", **rules: str) -> dict[str, Any]:
    return {
        "name": sobject.lower(),
        "app": {"object": sobject.lower()},
        "salesforce": {"object": sobject, "externalIdField": "Duplex_Id__c"},
        "direction": direction,
        "fields": [
            {"app": app, "salesforce": sf, **({"direction": rules[app]} if app in rules else {})}
            for app, sf in fields.items()
        ],
    }


def messages(found: list[MissingFields]) -> list[tuple[str, str]]:
    return [(m.where, m.message) for m in found]


@pytest.mark.parametrize(
    ("sobject", "mapped", "lacking"),
    [
        ("Contact", {"email": "Email"}, "LastName"),
        ("Lead", {"email": "Email"}, "LastName and Company"),
        ("Opportunity", {"amount": "Amount"}, "Name, StageName and CloseDate"),
        ("Opportunity", {"name": "Name", "amount": "Amount"}, "StageName and CloseDate"),
    ],
)
def test_a_pair_creating_salesforce_records_must_send_each_required_field(
    sobject: str, mapped: dict[str, str], lacking: str
) -> None:
    found = missing_required(config([pair(sobject, mapped)]), DESCRIBED, {})
    them = "it" if " " not in lacking else "them"
    assert messages(found) == [
        (
            "spec.objects[0].fields",
            f"pair {sobject.lower()} creates Salesforce {sobject} records, which require {lacking} on create: map"
            f" {them} with a rule flowing to Salesforce (direction both or app_to_crm)",
        )
    ]


def test_mapped_required_fields_defaults_and_the_external_id_satisfy_salesforce() -> None:
    complete = pair("Opportunity", {"name": "Name", "stage": "StageName", "close": "CloseDate"})
    contact = pair("Contact", {"last": "LastName"})
    # OwnerId is required by nothing: Salesforce defaults it. Duplex_Id__c is Duplex's to set.
    assert missing_required(config([complete, contact]), DESCRIBED, {}) == []


def test_a_rule_flowing_only_to_the_app_does_not_send_a_required_field() -> None:
    found = missing_required(config([pair("Contact", {"last": "LastName"}, last="crm_to_app")]), DESCRIBED, {})
    assert "require LastName" in found[0].message


def test_a_pair_that_never_creates_in_salesforce_needs_nothing_there_and_unknown_objects_are_not_checked() -> None:
    assert missing_required(config([pair("Contact", {"email": "Email"}, direction="crm_to_app")]), DESCRIBED, {}) == []
    assert missing_required(config([pair("Contact", {"email": "Email"})]), {}, {}) == []


def test_the_app_schema_required_fields_bind_pairs_that_create_app_records() -> None:
    app = {"contact": AppObject("contact", (AppField("id", required=True), AppField("full_name", required=True)))}
    found = missing_required(config([pair("Contact", {"last": "LastName"}, direction="crm_to_app")]), DESCRIBED, app)
    assert messages(found) == [
        (
            "spec.objects[0].fields",
            "pair contact creates app contact records, which require full_name on create: map it with a rule flowing"
            " to the app (direction both or crm_to_app)",
        )
    ]
    sent = pair("Contact", {"last": "LastName", "full_name": "Name"}, direction="crm_to_app")
    assert missing_required(config([sent]), DESCRIBED, app) == []
    assert (
        missing_required(config([pair("Contact", {"last": "LastName"}, direction="app_to_crm")]), DESCRIBED, app) == []
    )


def test_describe_reads_required_as_salesforce_defines_it() -> None:
    contact: CrmObject = DESCRIBED["contact"]
    assert sorted(f.name for f in contact.fields if f.required) == ["LastName"]


def test_each_typed_filter_clause_is_checked_against_describe() -> None:
    typed = pair("Account", {"name": "Name"})
    typed["fields"].append(
        {
            "app": "kind",
            "salesforce": "Type",
            "direction": "crm_to_app",
            "classify": [{"soql": "Type = 'Partner'", "value": "p"}, {"soql": "Tpye = 'Prospect'", "value": "q"}],
        }
    )
    typed["filter"] = {"soql": "AnnualRevenue > 'big'"}
    found = filter_problems(config([typed]), DESCRIBED)
    assert [where for where, _ in found] == [
        "spec.objects[0].filter.soql",
        "spec.objects[0].fields[1].classify[1].soql",
    ]
    assert found[1][1] == "column 1: unknown field 'Tpye' on Account; did you mean Type?"
