"""The pair page's draft: the page's controls laid over the document, each button's edit, the API's
suggestions and errors shown against the draft, and a plan in words. Pure functions, no browser."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from services.admin.console.mappings import (
    ADD,
    SUGGESTIONS,
    DraftError,
    drift_of,
    filter_messages,
    ignoring,
    laid_over,
    load_draft,
    new_rule,
    not_ignoring,
    place,
    plan_lines,
    poll_choice,
    removed_rules,
    rule_rows,
    sample_columns,
    schedule_of,
    spliced,
    suggestion_rows,
    transform_text,
    with_rule,
    without_rule,
)
from services.common.tenant_config import parse_tenant_config, to_document
from tests.fixtures.documents import tenant_document

pytestmark = pytest.mark.unit

PARTNERS: dict[str, Any] = {
    "name": "partners",
    "app": {"object": "partners"},
    "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
    "deletePolicy": "soft_delete",
    "softDeleteField": {"app": "archived", "salesforce": "Archived__c"},
    "filter": {"app": [{"field": "status", "in": ["active"]}]},
    "fields": [
        {"app": "name", "salesforce": "Name"},
        {"app": "phone", "salesforce": "Phone", "conflictPolicy": "app_unless_blank"},
        {"app": "status", "salesforce": "Status__c"},
        {"app": "archived", "salesforce": "Archived__c"},
    ],
    "ignoredFields": ["legacy_code"],
}


def document() -> dict[str, Any]:
    """The document as the API answers it: every default explicit."""
    return to_document(parse_tenant_config(tenant_document([copy.deepcopy(PARTNERS)])))


def partners(doc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = doc["spec"]["objects"][0]
    return found


def rules(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["app"]: r for r in partners(doc)["fields"]}


def valid(doc: dict[str, Any]) -> None:
    parse_tenant_config(doc)


def test_the_draft_must_be_a_document_holding_the_pair() -> None:
    assert load_draft(json.dumps(document()), "partners") == document()
    for text in (None, "", "{", "[]", json.dumps({"spec": "x"})):
        with pytest.raises(DraftError, match="cannot be read"):
            load_draft(text, "partners")
    with pytest.raises(DraftError, match="no object pair 'contacts'"):
        load_draft(json.dumps(document()), "contacts")


def test_the_pages_controls_are_laid_over_the_draft_which_is_not_changed_in_place() -> None:
    before = document()
    kept = copy.deepcopy(before)
    edited = laid_over(
        before,
        "partners",
        {
            "direction": "both",
            "conflictPolicy": "crm_wins",
            "deletePolicy": "soft_delete",
            "softDeleteApp": " archived ",
            "softDeleteSalesforce": "Archived__c",
            "reconcile": "daily",
            "poll": "300",
            "rule-direction-status": "app_to_crm",
            "rule-policy-name": "app_wins",
            "rule-policy-phone": "",
        },
    )
    assert before == kept
    pair = partners(edited)
    assert (pair["conflictPolicy"], pair["schedule"]) == (
        "crm_wins",
        {"reconcile": "daily", "pollIntervalSeconds": 300},
    )
    assert pair["softDeleteField"] == {"app": "archived", "salesforce": "Archived__c"}
    assert rules(edited)["status"]["direction"] == "app_to_crm"
    assert rules(edited)["name"]["conflictPolicy"] == "app_wins"
    # Blank is the pair's: the key is left out.
    assert "conflictPolicy" not in rules(edited)["phone"]
    valid(edited)
    # Controls the form did not send leave their parts alone.
    assert laid_over(before, "partners", {}) == before


def test_a_rule_made_one_way_loses_its_conflict_policy() -> None:
    edited = laid_over(document(), "partners", {"rule-direction-phone": "crm_to_app"})
    assert rules(edited)["phone"] == {
        "app": "phone",
        "salesforce": "Phone",
        "direction": "crm_to_app",
        "allowNulls": False,
    }
    valid(edited)
    # So does every rule left to follow a pair made one-way.
    one_way = laid_over(
        document(), "partners", {"direction": "app_to_crm", "rule-policy-name": "app_wins", "deletePolicy": "propagate"}
    )
    assert all("conflictPolicy" not in r for r in partners(one_way)["fields"])
    valid(one_way)


def test_a_soft_delete_field_is_only_kept_with_the_soft_delete_policy() -> None:
    form = {"deletePolicy": "propagate", "softDeleteApp": "archived", "softDeleteSalesforce": "Archived__c"}
    edited = laid_over(document(), "partners", form)
    assert "softDeleteField" not in partners(edited)
    valid(edited)


def test_the_schedule_from_its_controls_and_back() -> None:
    assert schedule_of("", "", "") == {}
    assert schedule_of("weekly", "custom", " 45 ") == {"reconcile": "weekly", "pollIntervalSeconds": 45}
    # Not a number: kept as typed, for the API to say so next to it.
    assert schedule_of("", "custom", "soon") == {"pollIntervalSeconds": "soon"}
    assert schedule_of("", "600", "45") == {"pollIntervalSeconds": 600}
    assert poll_choice(None) == ("", "")
    assert poll_choice({"pollIntervalSeconds": 60}) == ("60", "")
    assert poll_choice({"pollIntervalSeconds": 45}) == ("custom", "45")
    cleared = laid_over(
        laid_over(document(), "partners", {"reconcile": "hourly"}), "partners", {"reconcile": "", "poll": ""}
    )
    assert "schedule" not in partners(cleared)


def test_the_soql_box_sets_or_clears_the_filter() -> None:
    edited = laid_over(document(), "partners", {"soql": "  Type = 'A'\r\n AND Name != null ", "onLeave": "delete"})
    assert partners(edited)["filter"] == {
        "app": [{"field": "status", "in": ["active"]}],
        "salesforce": [],
        "soql": "Type = 'A'\n AND Name != null",
        "onLeave": "delete",
    }
    valid(edited)
    cleared = laid_over(edited, "partners", {"soql": ""})
    assert partners(cleared)["filter"] == {
        "app": [{"field": "status", "in": ["active"]}],
        "salesforce": [],
        "onLeave": "delete",
    }
    # With no condition left, no filter: onLeave alone means nothing.
    bare = copy.deepcopy(cleared)
    partners(bare)["filter"]["app"] = []
    assert "filter" not in partners(laid_over(bare, "partners", {"soql": " "}))


def test_a_new_rule() -> None:
    assert new_rule(" zip ", "BillingPostalCode") == {"app": "zip", "salesforce": "BillingPostalCode"}
    assert new_rule("zip", "Zip__c", conflict_policy="app_wins", transform_type="string") == {
        "app": "zip",
        "salesforce": "Zip__c",
        "conflictPolicy": "app_wins",
        "transform": {"type": "string"},
    }
    # A conflict policy only on a rule syncing both ways; a read-only field only flows to the app.
    assert new_rule("zip", "Zip__c", direction="app_to_crm", conflict_policy="app_wins") == {
        "app": "zip",
        "salesforce": "Zip__c",
        "direction": "app_to_crm",
    }
    assert new_rule("seen", "LastViewedDate", conflict_policy="app_wins", writable=False) == {
        "app": "seen",
        "salesforce": "LastViewedDate",
        "direction": "crm_to_app",
    }


def test_adding_a_rule_maps_an_ignored_field_and_refuses_what_is_mapped() -> None:
    edited = with_rule(document(), "partners", new_rule("legacy_code", "Legacy__c"))
    assert rules(edited)["legacy_code"] == {"app": "legacy_code", "salesforce": "Legacy__c"}
    assert "ignoredFields" not in partners(edited)
    valid(edited)
    for rule, message in [
        (new_rule("name", "Other__c"), "name already has a rule \\(to Name\\)"),
        (new_rule("title", "NAME"), "Name is already mapped from name"),
        (new_rule("title", ""), "name both"),
    ]:
        with pytest.raises(DraftError, match=message) as refused:
            with_rule(document(), "partners", rule)
        assert refused.value.where == ADD


def test_removing_ignoring_and_minding_again() -> None:
    assert "phone" not in rules(without_rule(document(), "partners", "phone"))
    ignored = ignoring(document(), "partners", "favourite_color")
    assert partners(ignored)["ignoredFields"] == ["legacy_code", "favourite_color"]
    assert ignoring(ignored, "partners", "favourite_color") == ignored
    valid(ignored)
    assert partners(not_ignoring(ignored, "partners", "legacy_code"))["ignoredFields"] == ["favourite_color"]
    with pytest.raises(DraftError, match="phone is mapped") as refused:
        ignoring(document(), "partners", "phone")
    assert refused.value.where == SUGGESTIONS


ACCOUNT_FIELDS = [
    {"name": n, "label": n, "type": "string", "createable": True, "updateable": True, "calculated": False}
    for n in ("Name", "Phone", "Duplex_Id__c", "BillingPostalCode", "ShippingPostalCode", "Fax")
] + [{"name": "Id", "label": "Account ID", "type": "id", "createable": False, "updateable": False}]


def candidate(name: str, confidence: float) -> dict[str, Any]:
    return {"salesforce": name, "confidence": confidence, "reasons": ["name"]}


def test_suggestions_as_the_draft_stands() -> None:
    draft = with_rule(document(), "partners", new_rule("zip", "BillingPostalCode"))
    draft = without_rule(draft, "partners", "phone")
    suggested: list[dict[str, Any]] = [
        {"app": "name", "status": "mapped", "mappedTo": "Name", "candidates": [candidate("Name", 1.0)]},
        {"app": "phone", "status": "mapped", "mappedTo": "Phone", "candidates": [candidate("Fax", 0.7)]},
        {"app": "zip", "status": "auto", "mappedTo": None, "candidates": [candidate("BillingPostalCode", 0.95)]},
        {
            "app": "post",
            "status": "suggested",
            "mappedTo": None,
            "candidates": [candidate("BillingPostalCode", 0.8), candidate("ShippingPostalCode", 0.7)],
        },
        {"app": "legacy_code", "status": "ignored", "mappedTo": None, "candidates": []},
        {"app": "status", "status": "mapped", "mappedTo": "Status__c", "candidates": [candidate("Fax", 0.4)]},
    ]
    rows = {r.app: r for r in suggestion_rows(suggested, partners(draft), ACCOUNT_FIELDS)}

    assert (rows["name"].status, rows["name"].mapped_to, rows["name"].instead, rows["name"].changed) == (
        "mapped",
        "Name",
        None,
        False,
    )
    # A mapped field whose best candidate is another says which.
    assert rows["status"].instead == candidate("Fax", 0.4)
    # The rule the draft removed: open again, with what is free.
    assert (rows["phone"].status, rows["phone"].best, rows["phone"].changed) == ("suggested", "Fax", True)
    assert (rows["zip"].status, rows["zip"].mapped_to, rows["zip"].changed) == ("mapped", "BillingPostalCode", True)
    # A candidate the draft maps elsewhere is offered no more, nor in the other fields.
    assert [c["salesforce"] for c in rows["post"].candidates] == ["ShippingPostalCode"]
    assert rows["post"].best == "ShippingPostalCode"
    others = [c.name for c in rows["post"].others]
    assert others == ["Fax", "Id", "Phone"]
    assert [c.text for c in rows["post"].others][1] == "Id (Account ID, id, read-only)"
    assert (rows["legacy_code"].status, rows["legacy_code"].changed) == ("ignored", False)
    unignored = not_ignoring(draft, "partners", "legacy_code")
    again = {r.app: r for r in suggestion_rows(suggested, partners(unignored), ACCOUNT_FIELDS)}
    assert (again["legacy_code"].status, again["legacy_code"].changed) == ("unmapped", True)


def test_the_apis_errors_are_placed_next_to_what_they_name() -> None:
    errors = [
        {"field": "spec.objects[0].fields[1].conflictPolicy", "message": "only both ways"},
        {"field": "spec.objects[0].fields[2]", "message": "whole rule"},
        {"field": "spec.objects[0].fields", "message": "requires LastName"},
        {"field": "spec.objects[0].filter.soql", "message": "column 3: unknown field"},
        {"field": "spec.objects[0].filter.app[0].field", "message": "not mapped"},
        {"field": "soql", "message": "column 1: bad"},
        {"field": "spec.objects[0].softDeleteField.salesforce", "message": "required"},
        {"field": "spec.objects[0].schedule.pollIntervalSeconds", "message": "at least 5"},
        {"field": "spec.objects[0].ignoredFields[0]", "message": "mapped"},
        {"field": "spec.objects[0].salesforce.externalIdField", "message": "not Id"},
        {"field": "spec.objects[0].fields[9].app", "message": "a rule the page does not show"},
        {"field": "spec.objects[1].fields[0].app", "message": "another pair"},
        {"field": "metadata.name", "message": "must be acme"},
        {"field": "", "message": "no field"},
    ]
    placed = place(errors, 0, ["name", "phone", "status"])
    assert placed.rules == {"phone": ["conflictPolicy: only both ways"], "status": ["whole rule"]}
    assert placed.rules_table == ["requires LastName", "a rule the page does not show"]
    assert placed.filter == ["column 3: unknown field", "app[0].field: not mapped", "column 1: bad"]
    assert placed.settings == {
        "softDeleteField": ["salesforce: required"],
        "schedule": ["pollIntervalSeconds: at least 5"],
        "": ["salesforce.externalIdField: not Id"],
    }
    assert placed.ignored == ["mapped"]
    assert placed.other == [
        "spec.objects[1].fields[0].app: another pair",
        "metadata.name: must be acme",
        "no field",
    ]
    assert placed
    assert not place([], 0, [])


def test_a_filter_problem_points_at_its_column() -> None:
    soql = "Type = 'A' AND (X > 0"
    (at_paren, no_column, past_end) = filter_messages(
        ["column 16: '(' is never closed", "use parentheses", "column 22: unexpected end"], soql
    )
    assert (at_paren.column, at_paren.before, at_paren.at, at_paren.after) == (16, "Type = 'A' AND ", "(", "X > 0")
    assert (no_column.column, no_column.message) == (None, "use parentheses")
    assert (past_end.before, past_end.at, past_end.after) == (soql, " ", "")


def test_rule_rows_say_what_the_draft_changed_and_what_drift_touches() -> None:
    saved = partners(document())
    draft = laid_over(document(), "partners", {"rule-direction-status": "crm_to_app"})
    draft = with_rule(without_rule(draft, "partners", "phone"), "partners", new_rule("zip", "Zip__c"))
    warnings: list[dict[str, Any]] = [
        {"objectPair": "partners", "appField": "status", "paused": True, "message": "Status__c: not in the org"},
        {"objectPair": "partners", "appField": None, "paused": False, "message": "Account: not selected for CDC"},
        {"objectPair": "contacts", "appField": "name", "paused": True, "message": "elsewhere"},
    ]
    by_rule, own = drift_of(warnings, "partners")
    assert list(by_rule) == ["status"]
    assert own == ["Account: not selected for CDC"]
    placed = place([{"field": "spec.objects[0].fields[3]", "message": "bad"}], 0, ["name", "status", "archived", "zip"])
    rows = {r.app: r for r in rule_rows(partners(draft), saved, by_rule, placed)}
    assert [(a, r.mark) for a, r in rows.items()] == [
        ("name", ""),
        ("status", "changed"),
        ("archived", ""),
        ("zip", "added"),
    ]
    assert (rows["status"].paused, rows["status"].one_way, rows["status"].direction) == (True, True, "crm_to_app")
    assert (rows["name"].paused, rows["name"].one_way, rows["name"].direction) == (False, False, "")
    assert rows["zip"].errors == ["bad"]
    assert removed_rules(partners(draft), saved) == ["phone"]


def test_transforms_in_words() -> None:
    assert transform_text({"app": "a", "salesforce": "A"}) == "—"
    assert transform_text({"transform": {"type": "string", "maxLength": 40}, "allowNulls": True}) == (
        "string, at most 40 characters; blanks overwrite"
    )
    assert transform_text({"transform": {"type": "picklist", "valueMap": {"gold": "Gold"}}}) == "picklist: gold → Gold"
    reference = {"transform": {"type": "reference"}, "reference": {"object": "partners", "onUnresolved": "omit"}}
    assert transform_text(reference) == "reference; reference to partners (omit until linked)"


def test_a_plan_in_words() -> None:
    lines = plan_lines(
        [
            {
                "objectPair": "partners",
                "appField": None,
                "change": "changed",
                "before": {"direction": "both", "ignoredFields": []},
                "after": {"direction": "both", "ignoredFields": ["x"]},
            },
            {
                "objectPair": "partners",
                "appField": "phone",
                "change": "changed",
                "before": {"app": "phone", "conflictPolicy": "app_wins"},
                "after": {"app": "phone", "direction": "crm_to_app"},
            },
            {"objectPair": "partners", "appField": "zip", "change": "added", "before": None, "after": {"app": "zip"}},
            {"objectPair": "leads", "appField": None, "change": "removed", "before": {"name": "leads"}, "after": None},
        ]
    )
    assert [(line.what, line.kind) for line in lines] == [
        ("partners: the pair's settings", "changed"),
        ("partners: rule phone", "changed"),
        ("partners: rule zip", "added"),
        ("leads: the pair", "removed"),
    ]
    assert lines[0].details == [("ignoredFields", "[]", '["x"]')]
    assert lines[1].details == [("direction", "—", "crm_to_app"), ("conflictPolicy", "app_wins", "—")]
    assert lines[2].details == []
    assert sample_columns([{"Id": "1", "Name": "a"}, {"Id": "2", "Type": "b"}]) == ["Id", "Name", "Type"]


def test_a_saved_draft_replaces_its_own_pair_only() -> None:
    def document(contacts_cap: str, partners_direction: str) -> dict[str, Any]:
        return {
            "spec": {
                "objects": [
                    {"name": "partners", "direction": partners_direction},
                    {"name": "contacts", "direction": contacts_cap},
                ]
            }
        }

    draft = document("both", "app_to_crm")  # the page changed partners
    current = document("crm_to_app", "both")  # someone changed contacts meanwhile
    merged = spliced(current, draft, "partners")
    assert merged["spec"]["objects"] == [
        {"name": "partners", "direction": "app_to_crm"},
        {"name": "contacts", "direction": "crm_to_app"},
    ]
    assert current["spec"]["objects"][0]["direction"] == "both"  # not changed in place
    # A pair removed meanwhile comes back with the draft.
    gone = {"spec": {"objects": [{"name": "contacts", "direction": "crm_to_app"}]}}
    assert [p["name"] for p in spliced(gone, draft, "partners")["spec"]["objects"]] == ["contacts", "partners"]
