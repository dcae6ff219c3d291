"""Pair filters agree with the emulator's SOQL engine: for each clause, the Accounts that
``evaluate`` selects one record at a time are exactly those ``SELECT Id FROM Account WHERE
(<render>)`` returns. The engine runs in-process over plain rows (no server).

Where the emulator departs from Salesforce's documented semantics, the test says so and is
marked xfail (strict: it starts failing, as a reminder, once the emulator is fixed).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.soql_filter import (
    And,
    BooleanValue,
    Comparison,
    Condition,
    DateTimeValue,
    DateValue,
    InList,
    Like,
    Not,
    NullValue,
    NumberValue,
    Or,
    StringValue,
    Value,
    Where,
    evaluate,
    render,
    validated,
)
from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.ids import IdFactory
from services.salesforce_emulator.schema import ACCOUNT, STANDARD_OBJECTS, FieldDef
from services.salesforce_emulator.soql_engine import InMemoryRecords, compile_query, execute
from services.salesforce_emulator.soql_parser import parse

pytestmark = pytest.mark.integration

TIERS = ("Gold", "Silver", "Bronze")
ACCOUNT_PLUS = ACCOUNT.with_fields(
    [
        FieldDef("Active__c", "boolean", "Active", custom=True, nillable=False, defaulted_on_create=True),
        FieldDef("Since__c", "date", "Customer Since", custom=True),
        FieldDef("Score__c", "double", "Score", precision=10, scale=3, custom=True),
        FieldDef("Tier__c", "picklist", "Tier", custom=True, picklist_values=TIERS),
        FieldDef("Tags__c", "multipicklist", "Tags", custom=True, picklist_values=TIERS),
    ]
)
OBJECTS = {**{o.name: o for o in STANDARD_OBJECTS}, "Account": ACCOUNT_PLUS}
DESCRIBE = {f.name: f.type for f in ACCOUNT_PLUS.fields}
ORG = "00D000000000001"

IDS = IdFactory()
USERS = (IDS.next("005"), IDS.next("005"))
ACCOUNT_IDS = [IDS.next("001") for _ in range(50)]

# Value pools: the rows draw from them, and so do generated literals, so that filters match some rows.
NAMES = ("Acme", "acme corp", "ACME Industries", "Globex", "Initech 100%", "Umbrella_Co", "O'Brien & Sons", "Hooli")
TYPES = ("Prospect", "Customer - Direct", "Customer - Channel", "Partner", "Other")
INDUSTRIES = ("Agriculture", "Banking", "Energy", "Retail", "Technology")
REVENUES: tuple[int | float | None, ...] = (None, 0, 0.5, 1000, 1000.5, 250000.0, -10, 1000000)
EMPLOYEES = (None, 0, 1, 10, 50, 500, 10000)
SCORES = (None, 0.1, 0.2, 0.3, 1.5, -2.25, 100)
SINCE = (None, "2020-01-01", "2023-12-31", "2024-01-01", "2024-06-15")
CREATED = (
    "2023-12-31T23:00:00.000+0000",
    "2024-01-01T00:00:00.000+0000",
    "2024-05-01T09:59:59.000+0000",
    "2024-05-01T12:00:00.000+0000",
)
PHONES = (None, "+1 415 555 0100", "+33 1 23 45 67 89", "555-0199")


def _rows() -> list[dict[str, JsonValue]]:
    rng = random.Random(20240501)
    rows: list[dict[str, JsonValue]] = []
    for i, record_id in enumerate(ACCOUNT_IDS):
        rows.append(
            {
                "Id": record_id,
                "IsDeleted": False,
                "Name": rng.choice(NAMES) + (f" {i}" if rng.random() < 0.3 else ""),
                "Type": rng.choice((*TYPES, None)),
                "Industry": rng.choice((*INDUSTRIES, None, None)),
                "AnnualRevenue": rng.choice(REVENUES),
                "NumberOfEmployees": rng.choice(EMPLOYEES),
                "Phone": rng.choice(PHONES),
                "Website": rng.choice((None, "https://example.com", "http://acme.example.org")),
                "Active__c": rng.random() < 0.5,
                "Since__c": rng.choice(SINCE),
                "CreatedDate": rng.choice(CREATED),
                "OwnerId": rng.choice(USERS),
                "ParentId": rng.choice((None, None, *ACCOUNT_IDS[:3])),
                "Score__c": rng.choice(SCORES),
                "Tier__c": rng.choice((*TIERS, None)),
                "Tags__c": rng.choice((None, "Gold", "Gold;Silver", "Bronze")),
            }
        )
    return rows


ROWS = _rows()


def emulator_ids(clause: str, rows: Sequence[Mapping[str, JsonValue]] = ROWS) -> set[str]:
    soql = f"SELECT Id FROM Account WHERE ({clause})"
    plan = compile_query(soql, parse(soql), OBJECTS)
    return {str(row["Id"]) for row in execute(plan, InMemoryRecords({"Account": rows}), ORG).rows}


def duplex_ids(where: Where, rows: Sequence[Mapping[str, JsonValue]] = ROWS) -> set[str]:
    return {str(row["Id"]) for row in rows if evaluate(where, row)}


def assert_agree(text: str, rows: Sequence[Mapping[str, JsonValue]] = ROWS) -> set[str]:
    where = validated(text, DESCRIBE, object_name="Account")
    mine = duplex_ids(where, rows)
    assert mine == emulator_ids(render(where), rows), render(where)
    return mine


OWNER_15 = USERS[0][:15]
PARENTS = ACCOUNT_IDS[:3]

CLAUSES = [
    "Type = 'Customer - Direct'",
    "type = 'customer - DIRECT'",
    "Type != 'Prospect'",
    "Type = null",
    "Type <> null AND Industry = null",
    "Industry IN ('Energy', 'retail')",
    "Industry NOT IN ('Energy', 'Retail')",
    "AnnualRevenue > 0",
    "AnnualRevenue >= 1000.5",
    "AnnualRevenue < 1000 OR AnnualRevenue = null",
    "AnnualRevenue != 1000",
    "NumberOfEmployees IN (0, 10, 500)",
    "NumberOfEmployees NOT IN (10)",
    "NumberOfEmployees <= 50 AND NumberOfEmployees > 0",
    "Name LIKE 'acme%'",
    "Name LIKE '%100\\%%'",
    "Name LIKE '%\\_%'",
    "Name LIKE '_lobex%'",
    "Name = 'O\\'Brien & Sons'",
    "NOT Name LIKE 'a%'",
    "Active__c = true",
    "Active__c != true",
    "Active__c = false AND Tier__c != 'Gold'",
    "Since__c > 2023-12-31",
    "Since__c = null OR Since__c < 2024-01-01",
    "Since__c IN (2020-01-01, 2024-06-15)",
    "CreatedDate >= 2024-05-01T12:00:00Z",
    "CreatedDate < 2024-05-01T14:00:00+02:00",
    "CreatedDate = 2024-05-01T05:59:59-04:00",
    "CreatedDate NOT IN (2024-01-01T00:00:00.000Z)",
    f"OwnerId = '{OWNER_15}'",
    f"OwnerId != '{USERS[1]}'",
    "ParentId != null",
    f"ParentId IN ('{PARENTS[0]}', '{PARENTS[1][:15]}')",
    f"ParentId NOT IN ('{PARENTS[2]}')",
    "Score__c = 0.3",
    "Score__c > 0.1 AND Score__c < 1.5",
    "(Type = 'Partner' OR Industry = 'Energy') AND AnnualRevenue > 0",
    "Type = 'Partner' OR (Industry = 'Energy' AND NOT AnnualRevenue > 0)",
    "NOT (Tier__c IN ('Gold', 'Silver') OR Tier__c = null)",
    "Phone LIKE '+1%' AND Website != null",
    "NOT (NOT Active__c = true)",
    "Tags__c = null OR Tags__c = 'Gold'",
]


@pytest.mark.parametrize("text", CLAUSES)
def test_hand_written_filters_select_what_the_emulator_selects(text: str) -> None:
    assert_agree(text)


def test_the_clauses_are_selective() -> None:
    # Agreement on empty (or full) selections would prove little.
    sizes = [len(assert_agree(text)) for text in CLAUSES]
    assert sum(0 < n < len(ROWS) for n in sizes) >= len(CLAUSES) - 3, sizes


# -- generated filters ----------------------------------------------------------------------------

# Field, describe type and the literals worth comparing it with.
TEXT_FIELDS = {
    "Name": [*NAMES, "Acme 3", "acme"],
    "Type": list(TYPES),
    "Industry": list(INDUSTRIES),
    "Tier__c": list(TIERS),
    "Phone": [p for p in PHONES if p],
}
NUMBER_FIELDS = {
    "AnnualRevenue": ["0", "0.5", "1000", "1000.5", "-10", "999999.99"],
    "NumberOfEmployees": ["0", "1", "10", "50", "49.5"],
    "Score__c": ["0.1", "0.2", "0.3", "1.5", "-2.25", "100"],
}


def _text(name: str) -> st.SearchStrategy[StringValue]:
    return st.sampled_from(TEXT_FIELDS[name]).flatmap(
        lambda v: st.sampled_from([v, v.upper(), v.lower()]).map(StringValue)
    )


def _number(name: str) -> st.SearchStrategy[NumberValue]:
    return st.sampled_from(NUMBER_FIELDS[name]).map(lambda n: NumberValue(Decimal(n)))


dates = st.sampled_from([s for s in SINCE if s]).map(lambda d: DateValue(date.fromisoformat(d)))
datetimes = st.sampled_from(CREATED).map(lambda d: DateTimeValue(datetime.fromisoformat(d)))
ids = st.sampled_from([*USERS, *PARENTS]).flatmap(lambda i: st.sampled_from([i, i[:15]])).map(StringValue)
equality = st.sampled_from(["=", "!="])
ordering = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])


def _eq_or_list(
    name: str, literal: st.SearchStrategy[Value], ops: st.SearchStrategy[str]
) -> st.SearchStrategy[Condition]:
    return st.one_of(
        st.builds(Comparison, st.just(name), ops, literal),
        st.builds(Comparison, st.just(name), equality, st.just(NullValue())),
        st.builds(InList, st.just(name), st.lists(literal, min_size=1, max_size=3).map(tuple), st.booleans()),
    )


like_patterns = st.lists(
    st.one_of(st.sampled_from(["%", "_", "a", "c", "me", " ", "\\%", "\\_", "'"])), min_size=1, max_size=4
).map("".join)

predicates: st.SearchStrategy[Condition] = st.one_of(
    *[_eq_or_list(name, _text(name), equality) for name in TEXT_FIELDS],
    *[_eq_or_list(name, _number(name), ordering) for name in NUMBER_FIELDS],
    _eq_or_list("Since__c", dates, ordering),
    _eq_or_list("CreatedDate", datetimes, ordering),
    _eq_or_list("OwnerId", ids, equality),
    _eq_or_list("ParentId", ids, equality),
    st.builds(Comparison, st.just("Active__c"), equality, st.booleans().map(BooleanValue)),
    st.builds(Like, st.sampled_from(["Name", "Type", "Phone", "Industry"]), like_patterns),
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    predicates,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        inner.map(Not),
    ),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conditions)
def test_generated_filters_select_what_the_emulator_selects(condition: Condition) -> None:
    assert_agree(render(Where(condition)))


# -- where the emulator departs from Salesforce -------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="emulator: a checkbox = null matches nothing (Salesforce: = null means = false, != null means = true)",
)
@pytest.mark.parametrize("text", ["Active__c = null", "Active__c != null"])
def test_checkbox_null_is_false(text: str) -> None:
    assert_agree(text)


def test_checkbox_null_is_false_in_duplex() -> None:
    where = validated("Active__c = null", DESCRIBE, object_name="Account")
    assert duplex_ids(where) == {str(r["Id"]) for r in ROWS if r["Active__c"] is False}


BACKSLASH_ROWS: list[dict[str, JsonValue]] = [
    {"Id": IDS.next("001"), "IsDeleted": False, "Name": "a\\ and more"},
    {"Id": IDS.next("001"), "IsDeleted": False, "Name": "a%"},
]


@pytest.mark.xfail(
    strict=True,
    reason="emulator: LIKE 'a\\\\%' (an escaped backslash, then a wildcard) is read as an escaped %",
)
def test_like_escaped_backslash_then_wildcard() -> None:
    assert_agree("Name LIKE 'a\\\\%'", BACKSLASH_ROWS)


@pytest.mark.xfail(
    strict=True,
    reason="emulator: numbers compare as floats, so 0.10000000000000000001 equals 0.1 (Salesforce: exact decimals)",
)
def test_number_literals_beyond_float_precision() -> None:
    assert_agree("Score__c = 0.10000000000000000001")


@pytest.mark.xfail(
    strict=True, raises=SalesforceError, reason="emulator: no INCLUDES/EXCLUDES (multi-select picklists)"
)
def test_includes_and_excludes() -> None:
    assert_agree("Tags__c INCLUDES ('Gold;Silver', 'Bronze') OR Tags__c EXCLUDES ('Gold')")
