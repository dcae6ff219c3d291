"""The dry run's pure part: rules compared by name, and what to count for each changed filter."""

from __future__ import annotations

import copy
from typing import Any

from services.admin.plan import FilterQuestion, backfill_calls, filter_questions, rule_changes
from services.common.tenant_config import TenantConfig
from tests.fixtures.documents import tenant_config

PAIRS: list[dict[str, Any]] = [
    {
        "name": "partners",
        "app": {"object": "partners"},
        "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
        "fields": [{"app": "name", "salesforce": "Name"}, {"app": "phone", "salesforce": "Phone"}],
    }
]


def config(edit: Any = None) -> TenantConfig:
    pairs = copy.deepcopy(PAIRS)
    if edit is not None:
        edit(pairs)
    return tenant_config(pairs)


def test_rules_are_compared_by_name_not_by_position() -> None:
    def reordered(pairs: Any) -> None:
        pairs[0]["fields"].reverse()

    assert rule_changes(config(), config(reordered)) == []

    def edited(pairs: Any) -> None:
        pairs[0]["fields"] = [
            {"app": "name", "salesforce": "Name", "direction": "crm_to_app"},
            {"app": "web", "salesforce": "Website"},
        ]
        pairs.append(
            {
                **copy.deepcopy(pairs[0]),
                "name": "contacts",
                "salesforce": {"object": "Contact", "externalIdField": "X__c"},
            }
        )

    found = {(c.pair, c.app_field, c.kind) for c in rule_changes(config(), config(edited))}
    assert found == {
        ("partners", "name", "changed"),
        ("partners", "web", "added"),
        ("partners", "phone", "removed"),
        ("contacts", None, "added"),
    }
    assert {(c.pair, c.app_field, c.kind) for c in rule_changes(None, config())} == {("partners", None, "added")}


def test_each_changed_filter_asks_for_the_records_entering_and_leaving_it() -> None:
    def filtered(clause: str) -> Any:
        def edit(pairs: Any) -> None:
            pairs[0]["filter"] = {"soql": clause}

        return edit

    assert filter_questions(config(), config()) == []
    assert filter_questions(config(), config(filtered("type = 'A'"))) == [
        FilterQuestion("partners", "Account", "", "NOT (type = 'A')", new_pair=False)
    ]
    assert filter_questions(config(filtered("Type = 'A'")), config(filtered("Type = 'B'"))) == [
        FilterQuestion(
            "partners", "Account", "(Type = 'B') AND NOT (Type = 'A')", "(Type = 'A') AND NOT (Type = 'B')", False
        )
    ]
    assert filter_questions(config(filtered("Type = 'A'")), config()) == [
        FilterQuestion("partners", "Account", "NOT (Type = 'A')", "", new_pair=False)
    ]
    assert filter_questions(None, config(filtered("Type = 'A'"))) == [
        FilterQuestion("partners", "Account", "Type = 'A'", None, new_pair=True)
    ]


def test_backfill_calls_grow_with_the_records_and_switch_to_bulk() -> None:
    assert [backfill_calls(n) for n in (0, 2000, 2001, 100_000)] == [2, 2, 6, 15]
