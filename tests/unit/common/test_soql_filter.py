"""Pair filters: parsing (and every syntax error, with its position), checking against describe,
evaluating on one record with SOQL's semantics, and rendering back to SOQL."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.soql_filter import (
    And,
    BooleanValue,
    Comparison,
    Condition,
    DateTimeValue,
    DateValue,
    FilterError,
    FilterProblem,
    Includes,
    InList,
    Like,
    MissingFieldError,
    Not,
    NullValue,
    NumberValue,
    Or,
    StringValue,
    Value,
    Where,
    check_where,
    evaluate,
    fields_of,
    parse_where,
    render,
    validated,
)

pytestmark = pytest.mark.unit

OWNER = "005000000000001AAA"  # a valid 18-character id (all digits: the suffix is AAA)
ACCOUNT: dict[str, str] = {
    "Id": "id",
    "Name": "string",
    "Type": "picklist",
    "Industry": "picklist",
    "Website": "url",
    "Email__c": "email",
    "Phone": "phone",
    "AnnualRevenue": "currency",
    "NumberOfEmployees": "int",
    "Score__c": "double",
    "Share__c": "percent",
    "Description": "textarea",
    "Active__c": "boolean",
    "Since__c": "date",
    "CreatedDate": "datetime",
    "OwnerId": "reference",
    "Tags__c": "multipicklist",
    "BillingAddress": "address",
    "Photo__c": "base64",
}


def problem(text: str) -> FilterProblem:
    with pytest.raises(FilterError) as info:
        parse_where(text)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def check(text: str) -> tuple[FilterProblem, ...]:
    return check_where(parse_where(text), ACCOUNT, object_name="Account")


def holds(text: str, record: Mapping[str, object]) -> bool:
    return evaluate(validated(text, ACCOUNT, object_name="Account"), record)


def cond(text: str) -> Condition:
    return parse_where(text).condition


def eq(name: str, value: Value, op: str = "=") -> Comparison:
    return Comparison(name, op, value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Parsing


PARSED: list[tuple[str, Condition]] = [
    ("Type = 'Customer'", eq("Type", StringValue("Customer"))),
    *[
        (f"NumberOfEmployees {op} 10", eq("NumberOfEmployees", NumberValue(Decimal(10)), norm))
        for op, norm in [("=", "="), ("!=", "!="), ("<>", "!="), ("<", "<"), ("<=", "<="), (">", ">"), (">=", ">=")]
    ],
    ("AnnualRevenue>-1.50", eq("AnnualRevenue", NumberValue(Decimal("-1.50")), ">")),
    ("Active__c = TRUE", eq("Active__c", BooleanValue(True))),
    ("Active__c = False", eq("Active__c", BooleanValue(False))),
    ("Type = NULL", eq("Type", NullValue())),
    ("Since__c = 2024-02-29", eq("Since__c", DateValue(date(2024, 2, 29)))),
    ("CreatedDate > 2024-05-01T12:00:00Z", eq("CreatedDate", DateTimeValue(datetime(2024, 5, 1, 12, tzinfo=UTC)), ">")),
    (
        "CreatedDate < 2024-05-01T12:00:00.250+02:00",
        eq(
            "CreatedDate",
            DateTimeValue(datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))),
            "<",
        ),
    ),
    # An instant is an instant, whatever the offset it is written in.
    (
        "CreatedDate = 2024-05-01T10:00:00Z",
        eq("CreatedDate", DateTimeValue(datetime.fromisoformat("2024-05-01T12:00+02:00"))),
    ),
    (r"Name = 'O\'Brien \\ \"x\" \n\t\r\b\f \N\T'", eq("Name", StringValue('O\'Brien \\ "x" \n\t\r\b\f \n\t'))),
    ("Name = ''", eq("Name", StringValue(""))),
    ("Type IN ('a', 'b')", InList("Type", (StringValue("a"), StringValue("b")))),
    ("Type not in ('a')", InList("Type", (StringValue("a"),), negated=True)),
    ("Name LIKE 'Acme%'", Like("Name", "Acme%")),
    # \% and \_ stay escaped in the pattern; \\ too, so that a backslash always escapes.
    (r"Name like '50\%\_\\%'", Like("Name", r"50\%\_\\%")),
    ("Tags__c INCLUDES ('a;b', 'c')", Includes("Tags__c", (StringValue("a;b"), StringValue("c")))),
    ("Tags__c excludes ('a')", Includes("Tags__c", (StringValue("a"),), excludes=True)),
    (
        "a = 1 AND b = 2 AND c = 3",
        And((eq("a", NumberValue(Decimal(1))), eq("b", NumberValue(Decimal(2))), eq("c", NumberValue(Decimal(3))))),
    ),
    ("a = 1 or b = 2", Or((eq("a", NumberValue(Decimal(1))), eq("b", NumberValue(Decimal(2)))))),
    # NOT binds tighter than AND; parentheses group; nesting is kept as written.
    ("NOT a = 1 AND b = 2", And((Not(eq("a", NumberValue(Decimal(1)))), eq("b", NumberValue(Decimal(2)))))),
    ("NOT (a = 1 AND b = 2)", Not(And((eq("a", NumberValue(Decimal(1))), eq("b", NumberValue(Decimal(2))))))),
    (
        "(a = 1 OR b = 2) AND c = 3",
        And(
            (Or((eq("a", NumberValue(Decimal(1))), eq("b", NumberValue(Decimal(2))))), eq("c", NumberValue(Decimal(3))))
        ),
    ),
    (
        "a = 1 AND (b = 2 AND c = 3)",
        And(
            (
                eq("a", NumberValue(Decimal(1))),
                And((eq("b", NumberValue(Decimal(2))), eq("c", NumberValue(Decimal(3))))),
            )
        ),
    ),
    ("((a = 1))", eq("a", NumberValue(Decimal(1)))),
    ("ns__Tier__c = 'Gold'", eq("ns__Tier__c", StringValue("Gold"))),
]


@pytest.mark.parametrize(("text", "expected"), PARSED, ids=[t for t, _ in PARSED])
def test_parses(text: str, expected: Condition) -> None:
    assert parse_where(text) == Where(expected)


def test_positions_point_at_tokens() -> None:
    c = cond("  Name   LIKE 'x' AND NOT Type IN ('a', 5)")
    assert isinstance(c, And)
    like, negation = c.items
    assert isinstance(like, Like)
    assert (like.position, like.op_position, like.pattern_position) == (2, 9, 14)
    assert isinstance(negation, Not)
    assert negation.position == 22
    assert isinstance(negation.item, InList)
    assert [v.position for v in negation.item.values] == [35, 40]


SYNTAX_ERRORS: list[tuple[str, int, str]] = [
    ("", 0, "the filter is empty"),
    ("   \n ", 0, "the filter is empty"),
    ("(Type = 'a'", 0, "unbalanced parentheses: '(' at column 1 is never closed"),
    ("(a = 1) AND (b = 2", 12, "unbalanced parentheses: '(' at column 13 is never closed"),
    ("Type IN ('a', 'b'", 8, "unbalanced parentheses: '(' at column 9 is never closed"),
    ("Type = 'a')", 10, "unbalanced parentheses: ')' at column 11 has no matching '('"),
    ("()", 0, "empty parentheses"),
    ("Name = 'abc", 7, "unterminated string starting at column 8"),
    (r"Name = 'abc\'", 7, "unterminated string"),
    ('Name = "abc"', 7, "single quotes"),
    ("Type = ", 7, "missing value after '='"),
    ("Type = AND b = 1", 7, "missing value after '=', found 'AND'"),
    ("Name LIKE", 9, "missing value after 'LIKE'"),
    ("Type IN ()", 9, "missing value in the list after '('"),
    ("Type IN ('a',)", 13, "missing value in the list after ','"),
    ("AND a = 1", 0, "missing condition before AND"),
    ("a = 1 AND", 9, "missing condition after 'AND'"),
    ("a = 1 AND OR b = 2", 10, "missing condition between AND and OR"),
    ("NOT", 3, "missing condition after 'NOT'"),
    ("Type", 4, "incomplete condition: field 'Type' needs an operator and a value"),
    ("Type 'a'", 5, "missing operator after field 'Type'"),
    ("Type == 'a'", 5, "unknown operator '=='"),
    ("Type =< 1", 5, "unknown operator '=<'"),
    ("Type ! 1", 5, "unknown operator '!'"),
    ("Name CONTAINS 'a'", 5, "unknown operator 'CONTAINS'"),
    ("Type NOT = 'a'", 9, "unexpected '=' after 'NOT'; expected IN"),
    ("Name ~ 'x'", 5, "unexpected character '~'"),
    ("Type = 'a' 'b'", 11, "unexpected 'b' after a complete condition"),
    ("Type = 'a' Industry = 'b'", 11, "unexpected 'Industry' after a complete condition (missing AND or OR?)"),
    ("Type = 'a' ORDER BY Name", 11, "unexpected 'ORDER' after a complete condition"),
    ("a = 1, b = 2", 5, "unexpected ',' after a complete condition"),
    ("Type IN ('a' 'b')", 13, "expected ',' or ')' in the value list, found 'b'"),
    ("5 = a", 0, "a condition must start with a field name, found '5'"),
    # SOQL refuses AND and OR side by side without parentheses.
    ("a = 1 AND b = 2 OR c = 3", 16, "OR cannot follow AND without parentheses"),
    ("a = 1 OR b = 2 AND c = 3", 15, "AND cannot follow OR without parentheses"),
    ("(a = 1 OR b = 2 AND c = 3)", 16, "AND cannot follow OR without parentheses"),
    ("NOT a = 1 AND b = 1 OR c = 1", 20, "OR cannot follow AND"),
    # Literals that lex but are not SOQL.
    ("n = 1.", 4, "invalid number 1."),
    ("n = +1", 4, "invalid number +1"),
    ("n = .5", 4, "invalid number .5"),
    ("d = 2024-02-30", 4, "invalid date 2024-02-30"),
    ("d = 2024-2-3", 4, "invalid date or datetime 2024-2-3"),
    ("d = 2024-02-03T10:00:00", 4, "invalid date or datetime"),  # no time zone
    ("d = 2024-02-03T10:00:00.5Z", 4, "invalid date or datetime"),  # milliseconds are 3 digits
    ("d = 2024-02-03T25:00:00Z", 4, "invalid datetime"),
    ("d = 2024-02-03T10:00:00+15:00", 4, "invalid datetime"),
    (r"Name = 'a\qb'", 9, r"invalid escape sequence '\q'"),
    (r"Name = '\u0041'", 8, r"invalid escape sequence '\u'"),
    (r"Name = '50\%'", 10, r"'\%' only has a meaning in a LIKE pattern"),
    ("Name LIKE 5", 10, "LIKE needs a quoted pattern"),
    ("Tags__c INCLUDES (1)", 18, "INCLUDES takes quoted picklist values"),
    ("Type = Customer", 7, "'Customer' is not a value: quote strings ('Customer')"),
]


@pytest.mark.parametrize(("text", "position", "message"), SYNTAX_ERRORS, ids=[t for t, _, _ in SYNTAX_ERRORS])
def test_syntax_errors_name_the_problem_and_its_position(text: str, position: int, message: str) -> None:
    found = problem(text)
    assert message in found.message
    assert found.position == position
    assert str(found).startswith(f"column {position + 1}: ")


UNSUPPORTED: list[tuple[str, int, str]] = [
    ("Account.Name = 'x'", 0, "relationship path 'Account.Name' is not supported in a pair filter"),
    ("Id IN (SELECT AccountId FROM Contact)", 7, "semi-join or subquery (IN (SELECT ...)) is not supported"),
    ("Id NOT IN (select Id FROM X)", 11, "semi-join"),
    ("CreatedDate = TODAY", 14, "date literal TODAY is not supported in a pair filter"),
    ("CreatedDate > last_n_days:30", 14, "date literal last_n_days:30 is not supported"),
    ("Since__c < THIS_FISCAL_QUARTER", 11, "date literal THIS_FISCAL_QUARTER"),
    ("CALENDAR_YEAR(CreatedDate) = 2020", 0, "function CALENDAR_YEAR() is not supported in a pair filter"),
    ("toLabel(Type) = 'x'", 0, "function toLabel() is not supported"),
    ("Name = :name", 7, "bind variable ':name' is not supported"),
]


@pytest.mark.parametrize(("text", "position", "message"), UNSUPPORTED, ids=[t for t, _, _ in UNSUPPORTED])
def test_what_one_record_cannot_decide_is_refused(text: str, position: int, message: str) -> None:
    found = problem(text)
    assert message in found.message
    assert found.position == position


def test_every_unsupported_construct_is_reported_at_once() -> None:
    with pytest.raises(FilterError) as info:
        parse_where(r"Account.Name = 'x' AND CreatedDate = TODAY AND Name = 'a\z'")
    assert [p.position for p in info.value.problems] == [0, 37, 56]
    assert info.value.problems[0].field == "Account.Name"
    assert str(info.value).startswith("column 1: relationship path 'Account.Name'")
    assert "; column 38: date literal TODAY" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Checking against describe


CHECK_PROBLEMS: list[tuple[str, int, str]] = [
    ("Tpye = 'x'", 0, "unknown field 'Tpye' on Account; did you mean Type?"),
    ("AnualRevenue > 0", 0, "did you mean AnnualRevenue?"),
    ("Zzz = 1", 0, "unknown field 'Zzz' on Account"),
    ("Description = 'x'", 0, "Description is a text area, which a pair filter cannot use"),
    ("Description LIKE '%x%'", 0, "text area"),
    ("BillingAddress = null", 0, "BillingAddress is of type address, which is not supported"),
    ("Photo__c != null", 0, "of type base64"),
    # Operators the field's type does not take.
    ("AnnualRevenue LIKE '1%'", 14, "LIKE only matches text, and AnnualRevenue is of type currency"),
    ("Active__c LIKE 't%'", 10, "LIKE only matches text"),
    ("Since__c LIKE '2024%'", 9, "LIKE only matches text"),
    ("OwnerId LIKE '005%'", 8, "LIKE only matches text"),
    ("Active__c < true", 10, "'<' does not apply to boolean field Active__c"),
    ("Active__c >= false", 10, "'>=' does not apply to boolean field"),
    ("Active__c IN (true)", 10, "IN is not supported in a pair filter on boolean field Active__c"),
    ("Type INCLUDES ('a')", 5, "INCLUDES only applies to multi-select picklists, and Type is of type picklist"),
    ("Name EXCLUDES ('a')", 5, "EXCLUDES only applies to multi-select picklists"),
    ("Tags__c IN ('a')", 8, "IN does not apply to multi-select picklist Tags__c"),
    ("Tags__c LIKE 'a%'", 8, "LIKE does not apply to multi-select picklist"),
    ("Tags__c < 'a'", 8, "'<' does not apply to multi-select picklist"),
    ("Name < 'M'", 5, "'<' on text field Name is not supported in a pair filter"),
    ("Type >= 'a'", 5, "on text field Type"),
    ("Id > '001000000000000'", 3, "'>' on id field Id is not supported"),
    # Literals of the wrong kind for the field.
    ("Name = 5", 7, "Name is of type string: its value must be a quoted string, e.g. '5'"),
    ("Type IN ('a', true)", 14, "its value must be a quoted string"),
    ("Tags__c = 1", 10, "quoted string"),
    ("AnnualRevenue = '5'", 16, "its value must be an unquoted number, e.g. 5"),
    ("NumberOfEmployees IN (1, 'x')", 25, "NumberOfEmployees is of type int: its value must be an unquoted number"),
    ("Score__c > 2024-01-01", 11, "unquoted number"),
    ("Active__c = 'true'", 12, "Active__c is of type boolean: its value must be true or false, unquoted"),
    ("Active__c = 1", 12, "true or false"),
    ("Since__c = '2024-01-01'", 11, "Since__c is of type date: its value must be an unquoted date, e.g. 2024-01-31"),
    ("Since__c = 2024-01-01T00:00:00Z", 11, "unquoted date"),
    ("CreatedDate = 2024-01-01", 14, "CreatedDate is of type datetime: its value must be an unquoted datetime"),
    ("CreatedDate = '2024-01-01T00:00:00Z'", 14, "unquoted datetime"),
    ("OwnerId = 5", 10, "OwnerId is of type reference: its value must be a quoted id"),
    ("OwnerId = 'abc'", 10, "'abc' is not a Salesforce id"),
    ("Id IN ('005000000000001aaa')", 7, "is not a Salesforce id"),  # a miscased 18-character id
    ("Id = '005000000000001AAB'", 5, "is not a Salesforce id"),  # a suffix that does not match
    # null only with = and !=.
    ("AnnualRevenue < null", 16, "null can only be compared with = or != (not <)"),
    ("Since__c >= null", 12, "null can only be compared with = or !="),
    ("Type IN ('a', null)", 14, "null is only allowed with = and != (write Type = null OR Type IN (...))"),
    ("Type NOT IN (null)", 13, "null is only allowed with = and !="),
]


@pytest.mark.parametrize(("text", "position", "message"), CHECK_PROBLEMS, ids=[t for t, _, _ in CHECK_PROBLEMS])
def test_check_names_the_problem_and_its_position(text: str, position: int, message: str) -> None:
    problems = check(text)
    assert len(problems) == 1, problems
    assert message in problems[0].message
    assert problems[0].position == position
    assert problems[0].field == parse_where(text).condition.field  # type: ignore[union-attr]


ACCEPTED = [
    "Type = 'Customer' AND AnnualRevenue > 0",
    "type = 'a' AND annualrevenue >= 10.5",  # names are case-insensitive
    "Name = null OR Name != null",
    "Name LIKE 'A%' AND Website LIKE '%.com' AND Email__c LIKE '%@x.org' AND Phone LIKE '+33%'",
    "Type LIKE 'Cust%'",
    "Industry NOT IN ('Energy', 'Retail')",
    "NumberOfEmployees IN (1, 2.5) AND Score__c <= -1 AND Share__c > 12.5",
    "Active__c = true AND Active__c != false AND Active__c = null",
    "Since__c >= 2024-01-01 AND Since__c IN (2024-02-01) AND Since__c != null",
    "CreatedDate < 2024-01-01T00:00:00Z AND CreatedDate NOT IN (2024-01-01T00:00:00.123+05:30)",
    "OwnerId = '005000000000001' OR OwnerId = '005000000000001AAA' OR OwnerId = null",
    "Id NOT IN ('001000000000001')",
    "Tags__c INCLUDES ('a;b', 'c') AND Tags__c EXCLUDES ('d') AND Tags__c = 'a;b' AND Tags__c != null",
    "NOT (Type = 'a' OR (Industry = 'b' AND Name LIKE 'x%'))",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_check_accepts_what_salesforce_and_one_record_both_decide(text: str) -> None:
    assert check(text) == ()


def test_check_reports_every_problem_in_text_order() -> None:
    problems = check("Tpye = 'x' AND (AnnualRevenue LIKE '1%' OR Active__c = 'yes') AND Description = null")
    assert [(p.position, p.field) for p in problems] == [
        (0, "Tpye"),
        (30, "AnnualRevenue"),
        (55, "Active__c"),
        (66, "Description"),
    ]


def test_no_suggestion_for_a_name_close_to_nothing() -> None:
    (found,) = check("Quux = 1")
    assert found.message == "unknown field 'Quux' on Account"


def test_validated_raises_with_all_problems() -> None:
    with pytest.raises(FilterError) as info:
        validated("Tpye = 'x' AND AnnualRevenue = 'big'", ACCOUNT, object_name="Account")
    assert str(info.value) == (
        "column 1: unknown field 'Tpye' on Account; did you mean Type?; "
        "column 32: AnnualRevenue is of type currency: its value must be an unquoted number"
    )
    assert isinstance(info.value, ValueError)


def test_validated_reports_unsupported_constructs_and_describe_problems_together() -> None:
    with pytest.raises(FilterError) as info:
        validated(
            "Account.Name = 'x' AND Tpye = 'y' AND CreatedDate > TODAY AND AnnualRevenue = 'z' AND Name = 'a\\q'",
            ACCOUNT,
            object_name="Account",
        )
    # Nothing about the predicates already refused (no "unknown field 'Account'", no "null with >").
    assert [(p.position, p.field) for p in info.value.problems] == [
        (0, "Account.Name"),
        (23, "Tpye"),
        (52, None),
        (78, "AnnualRevenue"),
        (95, None),
    ]


def test_validated_raises_syntax_errors_too() -> None:
    with pytest.raises(FilterError, match=r"^column 12: unknown operator '=='"):
        validated("Type = 'x' == 1", ACCOUNT, object_name="Account")


def test_validated_keeps_the_types_evaluate_needs() -> None:
    where = validated("ownerid = '005000000000001' AND Tags__c = 'a'", ACCOUNT, object_name="Account")
    assert where.field_types == (("ownerid", "reference"), ("tags__c", "multipicklist"))
    assert where == parse_where("ownerid = '005000000000001' AND Tags__c = 'a'")


def test_fields_of_lists_names_as_written() -> None:
    where = parse_where("type = 'a' AND (NOT Name LIKE 'x' OR Tags__c INCLUDES ('a')) AND Type IN ('b')")
    assert fields_of(where) == frozenset({"type", "Name", "Tags__c", "Type"})


# ---------------------------------------------------------------------------------------------
# Evaluation

RECORD: dict[str, object] = {
    "Id": "001000000000001AAA",
    "Name": "Acme Corp",
    "Type": "Customer",
    "Industry": None,
    "Website": "https://acme.example",
    "Email__c": None,
    "Phone": "+33 1 23",
    "AnnualRevenue": 1000.5,
    "NumberOfEmployees": 50,
    "Score__c": None,
    "Share__c": Decimal("12.50"),
    "Active__c": False,
    "Since__c": "2024-01-31",
    "CreatedDate": "2024-05-01T12:00:00.000+0000",
    "OwnerId": OWNER,
    "Tags__c": "Gold;Silver",
}

EVALUATED: list[tuple[str, bool]] = [
    # Text: case-insensitive =, != and IN.
    ("Type = 'customer'", True),
    ("Type = 'CUSTOMER'", True),
    ("Type != 'customer'", False),
    ("Type = 'Customer '", False),
    ("Type IN ('partner', 'CUSTOMER')", True),
    ("Type NOT IN ('partner', 'CUSTOMER')", False),
    # Nulls: no three-valued logic.
    ("Industry = null", True),
    ("Industry != null", False),
    ("Industry = 'Energy'", False),
    ("Industry != 'Energy'", True),  # a null field IS selected by != 'x' in SOQL
    ("NOT Industry = 'Energy'", True),
    ("Industry IN ('Energy')", False),
    ("Industry NOT IN ('Energy')", True),
    ("Industry LIKE '%'", False),
    ("NOT Industry LIKE '%'", True),
    ("Score__c > 0", False),
    ("Score__c < 0", False),
    ("Score__c <= 0 OR Score__c >= 0", False),
    ("Score__c != 5", True),
    ("Type != null", True),
    # A checkbox is never null: = null means = false.
    ("Active__c = null", True),
    ("Active__c != null", False),
    ("Active__c = false", True),
    ("Active__c != true", True),
    # LIKE: % and _, case-insensitive, whole value, escapes.
    ("Name LIKE 'acme%'", True),
    ("Name LIKE 'ACME'", False),
    ("Name LIKE '%corp'", True),
    ("Name LIKE 'acm_ corp'", True),
    ("Name LIKE 'acm_corp'", False),
    ("Name LIKE '%'", True),
    ("Website LIKE '%.example'", True),
    # Numbers: numerically, whatever Python type holds them.
    ("AnnualRevenue > 1000", True),
    ("AnnualRevenue = 1000.50", True),
    ("AnnualRevenue >= 1000.5 AND AnnualRevenue <= 1000.5", True),
    ("AnnualRevenue < 1000.5", False),
    ("NumberOfEmployees = 50.0", True),
    ("NumberOfEmployees IN (49, 50)", True),
    ("Share__c = 12.5", True),
    # Dates and datetimes.
    ("Since__c = 2024-01-31", True),
    ("Since__c > 2024-01-30 AND Since__c < 2024-02-01", True),
    ("Since__c IN (2024-01-01, 2024-01-31)", True),
    ("CreatedDate = 2024-05-01T14:00:00+02:00", True),  # the same instant
    ("CreatedDate > 2024-05-01T11:59:59.999Z", True),
    ("CreatedDate < 2024-05-01T12:00:00.001Z", True),
    ("CreatedDate >= 2024-05-01T08:00:01-04:00", False),
    # Ids: the first 15 characters, so 15- and 18-character forms are the same record.
    ("OwnerId = '005000000000001'", True),
    ("OwnerId = '005000000000001AAA'", True),
    ("OwnerId IN ('005000000000002', '005000000000001')", True),
    ("OwnerId != '005000000000001'", False),
    ("Id = '001000000000001'", True),
    # Multi-select picklists.
    ("Tags__c INCLUDES ('gold')", True),
    ("Tags__c INCLUDES ('Gold;Silver')", True),
    ("Tags__c INCLUDES ('Gold;Bronze')", False),  # ; is AND
    ("Tags__c INCLUDES ('Gold;Bronze', 'Silver')", True),  # , is OR
    ("Tags__c EXCLUDES ('Bronze')", True),
    ("Tags__c EXCLUDES ('Bronze', 'silver')", False),
    ("Tags__c = 'Silver;Gold'", True),  # = compares the selection, not the spelling
    ("Tags__c = 'Gold'", False),
    ("Tags__c != 'Gold'", True),
    # AND, OR, NOT and parentheses.
    ("Type = 'Customer' AND (Industry = 'Energy' OR NumberOfEmployees > 10)", True),
    ("(Type = 'Customer' AND Industry = 'Energy') OR NumberOfEmployees > 100", False),
    ("Type = 'Partner' OR (Industry = null AND NOT NumberOfEmployees < 50)", True),
    ("NOT (Type = 'Customer' AND NumberOfEmployees = 50)", False),
    ("NOT NOT Type = 'Customer'", True),
    ("NOT Type = 'Partner' AND NOT Industry = 'Energy'", True),
]


@pytest.mark.parametrize(("text", "expected"), EVALUATED, ids=[t for t, _ in EVALUATED])
def test_evaluate_follows_soql(text: str, expected: bool) -> None:
    assert holds(text, RECORD) is expected


def test_record_keys_are_case_insensitive() -> None:
    assert holds("Type = 'Customer' AND annualrevenue > 5", {"TYPE": "customer", "AnnualRevenue": 6})


def test_a_key_twice_with_different_values_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        holds("Type = 'a'", {"Type": "a", "TYPE": "b"})


def test_an_absent_field_is_never_read_as_null() -> None:
    with pytest.raises(MissingFieldError) as info:
        holds("Industry = null", {"Type": "Customer"})
    assert info.value.field == "Industry"
    assert "give the full state" in str(info.value)
    assert isinstance(info.value, KeyError)


def test_an_absent_field_is_refused_even_when_the_outcome_does_not_depend_on_it() -> None:
    with pytest.raises(MissingFieldError, match="Industry"):
        holds("Type = 'Customer' OR Industry = 'Energy'", {"Type": "Customer"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("AnnualRevenue > 5", "7"),
        ("AnnualRevenue > 5", True),
        ("AnnualRevenue > 5", float("nan")),
        ("Name = 'x'", 5),
        ("Name LIKE 'x%'", 5),
        ("Active__c = true", "true"),
        ("Since__c = 2024-01-01", "2024-01-01T00:00:00Z"),
        ("Since__c = 2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
        ("CreatedDate > 2024-01-01T00:00:00Z", "2024-01-01"),
        ("CreatedDate > 2024-01-01T00:00:00Z", 1704067200000),
        ("Tags__c INCLUDES ('a')", 5),
    ],
)
def test_a_value_of_the_wrong_kind_is_an_error_not_a_mismatch(text: str, value: object) -> None:
    name = next(iter(fields_of(parse_where(text))))
    with pytest.raises(TypeError, match=name):
        holds(text, {name: value})


def test_values_in_python_form() -> None:
    record = {
        "Since__c": date(2024, 1, 31),
        "CreatedDate": datetime(2024, 5, 1, 12, tzinfo=UTC),
        "AnnualRevenue": Decimal("0.1"),
        "Score__c": 0.1,
        "Tags__c": ("Gold", "Silver"),
    }
    assert holds(
        "Since__c = 2024-01-31 AND CreatedDate = 2024-05-01T12:00:00Z AND AnnualRevenue = 0.1 AND Score__c = 0.1"
        " AND Tags__c INCLUDES ('silver') AND Tags__c = 'Silver;Gold'",
        record,
    )


def test_a_naive_datetime_is_utc() -> None:
    assert holds("CreatedDate = 2024-05-01T12:00:00Z", {"CreatedDate": datetime(2024, 5, 1, 12)})
    assert holds("CreatedDate = 2024-05-01T12:00:00Z", {"CreatedDate": "2024-05-01T12:00:00"})


def test_floats_compare_as_their_decimal_text() -> None:
    # 0.1 + 0.2 is 0.30000000000000004: not 0.3, as in Salesforce's exact decimals.
    assert not holds("Score__c = 0.3", {"Score__c": 0.1 + 0.2})
    assert holds("Score__c = 0.3", {"Score__c": 0.3})
    assert holds("NumberOfEmployees = 5", {"NumberOfEmployees": 5})


def test_an_empty_multi_select_is_null() -> None:
    assert holds("Tags__c EXCLUDES ('a')", {"Tags__c": None})
    assert not holds("Tags__c INCLUDES ('a')", {"Tags__c": None})
    assert holds("Tags__c = null", {"Tags__c": None})


def test_without_types_a_quoted_literal_compares_as_text() -> None:
    # parse_where alone knows no types: an id is then text (case-insensitive, whole value).
    where = parse_where("OwnerId = '005000000000001'")
    assert not evaluate(where, {"OwnerId": OWNER})
    assert evaluate(validated(render(where), ACCOUNT, object_name="Account"), {"OwnerId": OWNER})


def test_ids_compare_case_sensitively() -> None:
    # Two 15-character ids differing only in case are two records.
    assert not holds("Id = '001A00000000001'", {"Id": "001a00000000001"})
    assert holds("Id = '001A00000000001'", {"Id": "001A00000000001"})


def test_like_escapes_keep_wildcards_literal() -> None:
    assert holds(r"Name LIKE '100\%'", {"Name": "100%"})
    assert not holds(r"Name LIKE '100\%'", {"Name": "1000"})
    assert holds(r"Name LIKE 'a\_b'", {"Name": "a_b"})
    assert not holds(r"Name LIKE 'a\_b'", {"Name": "axb"})
    assert holds(r"Name LIKE 'a\\%'", {"Name": "a\\ anything"})
    assert holds("Name LIKE 'a.c*'", {"Name": "a.c*"})  # regex characters are literal
    assert not holds("Name LIKE 'a.c*'", {"Name": "abcc"})
    assert holds("Name LIKE 'line%'", {"Name": "line1\nline2"})


# ---------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type='a'", "type = 'a'"),
        ("Type <> 'a'", "Type != 'a'"),
        ("a = 1 and b = -2.50", "a = 1 AND b = -2.50"),
        ("a = true or b = FALSE or c = NULL", "a = true OR b = false OR c = null"),
        ("not a = 1", "NOT (a = 1)"),
        ("(a = 1 or b = 2) and (c = 3)", "(a = 1 OR b = 2) AND c = 3"),
        ("a = 1 and (b = 2 and c = 3)", "a = 1 AND (b = 2 AND c = 3)"),
        ("d = 2024-01-31 and t = 2024-01-31T09:30:00.000Z", "d = 2024-01-31 AND t = 2024-01-31T09:30:00Z"),
        ("t = 2024-01-31T09:30:00.120-05:30", "t = 2024-01-31T09:30:00.120-05:30"),
        ("x in ('a','b') and y not in (1)", "x IN ('a', 'b') AND y NOT IN (1)"),
        ("m includes ('a;b','c') or m excludes ('d')", "m INCLUDES ('a;b', 'c') OR m EXCLUDES ('d')"),
        (r"n = 'it\'s \\ \"q\" \N'", r"n = 'it\'s \\ \"q\" \n'"),
        (r"n like '50\%\_\\%'", r"n LIKE '50\%\_\\%'"),
        (r"n like 'it\'s%'", r"n LIKE 'it\'s%'"),
    ],
)
def test_render_is_canonical(text: str, expected: str) -> None:
    assert render(parse_where(text)) == expected
    assert parse_where(expected) == parse_where(text)


def test_hand_built_trees_cannot_render_into_other_soql() -> None:
    with pytest.raises(ValueError, match="not a field name"):
        Comparison("Name = 'x' OR Id", "=", StringValue("y"))
    with pytest.raises(ValueError, match="backslash"):
        Like("Name", "ends with a backslash \\")
    with pytest.raises(ValueError, match="comparison operator"):
        Comparison("Name", "LIKE", StringValue("y"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        NumberValue(Decimal("NaN"))
    with pytest.raises(ValueError, match="SOQL datetime"):
        DateTimeValue(datetime(2024, 1, 1))  # naive
    with pytest.raises(ValueError, match="SOQL datetime"):
        DateTimeValue(datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC))  # finer than milliseconds
    with pytest.raises(TypeError):
        DateValue(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="at least two"):
        And((eq("a", NullValue()),))
    with pytest.raises(ValueError, match="at least one"):
        InList("a", ())
    # A quote or a backslash in a value cannot end the string early.
    where = Where(eq("Name", StringValue("x' OR Name != 'y\\")))
    assert render(where) == r"Name = 'x\' OR Name != \'y\\'"
    assert parse_where(render(where)) == where


# -- properties ---------------------------------------------------------------------------------

_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES", "TRUE", "FALSE", "NULL", "SELECT"}
names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n.upper() not in _KEYWORDS)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])
values: st.SearchStrategy[Value] = st.one_of(
    st.text().map(StringValue),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12).map(NumberValue),
    st.booleans().map(BooleanValue),
    st.just(NullValue()),
    st.dates().map(DateValue),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets).map(
        lambda d: DateTimeValue(d.replace(microsecond=d.microsecond // 1000 * 1000))
    ),
)
patterns = st.lists(
    st.one_of(st.characters(exclude_characters="\\"), st.sampled_from(["%", "_", r"\%", r"\_", "\\\\"]))
).map("".join)
operators = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
predicates: st.SearchStrategy[Condition] = st.one_of(
    st.builds(Comparison, names, operators, values),
    st.builds(InList, names, st.lists(values, min_size=1, max_size=3).map(tuple), st.booleans()),
    st.builds(Like, names, patterns),
    st.builds(Includes, names, st.lists(st.text().map(StringValue), min_size=1, max_size=3).map(tuple), st.booleans()),
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    predicates,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        inner.map(Not),
    ),
    max_leaves=8,
)


@settings(max_examples=400)
@given(conditions)
def test_render_round_trips(condition: Condition) -> None:
    where = Where(condition)
    assert parse_where(render(where)) == where


# Typed fields with values of their kind, for properties of evaluation.
TYPED = {"T": "string", "N": "double", "B": "boolean", "D": "date", "M": "multipicklist"}
texts = st.sampled_from(["a", "A", "b", "ab", "a%", "", "B_"])
typed_literals: dict[str, st.SearchStrategy[Value]] = {
    "T": texts.map(StringValue),
    "N": st.sampled_from(["-1", "0", "0.5", "1", "2"]).map(lambda n: NumberValue(Decimal(n))),
    "B": st.booleans().map(BooleanValue),
    "D": st.sampled_from([date(2024, 1, 1), date(2024, 6, 1)]).map(DateValue),
    "M": st.sampled_from(["a", "b", "a;b", "B;c"]).map(StringValue),
}
typed_predicates: st.SearchStrategy[Condition] = st.one_of(
    *[
        st.builds(
            Comparison,
            st.just(name),
            st.sampled_from(["=", "!="]),
            st.one_of(typed_literals[name], st.just(NullValue())),
        )
        for name in TYPED
    ],
    # Only numbers and dates take ordering comparisons, and never with null.
    *[
        st.builds(Comparison, st.just(name), st.sampled_from(["<", "<=", ">", ">="]), typed_literals[name])
        for name in ("N", "D")
    ],
    st.builds(InList, st.just("N"), st.lists(typed_literals["N"], min_size=1, max_size=3).map(tuple), st.booleans()),
    st.builds(Like, st.just("T"), st.sampled_from(["a%", "%", "_", "A_", r"a\%"])),
    st.builds(Includes, st.just("M"), st.lists(typed_literals["M"], min_size=1, max_size=2).map(tuple), st.booleans()),
)
typed_conditions: st.SearchStrategy[Condition] = st.recursive(
    typed_predicates,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        inner.map(Not),
    ),
    max_leaves=6,
)
records = st.fixed_dictionaries(
    {
        "T": st.one_of(st.none(), st.sampled_from(["a", "A", "ab", "a%", "xb", "B_"])),
        "N": st.one_of(st.none(), st.sampled_from([-1, 0, 0.5, 1, Decimal("2.0"), 3])),
        "B": st.booleans(),
        "D": st.one_of(st.none(), st.sampled_from(["2023-12-31", "2024-01-01", "2024-06-01"])),
        "M": st.one_of(st.none(), st.sampled_from(["a", "b", "a;b", "A;B;C", "c"])),
    }
)


def _selected(text: object) -> set[str]:
    return {part.lower() for part in str(text or "").split(";") if part}


def _plain(field: str, value: Any) -> Any:
    if field == "T":
        return str(value).lower()
    return Decimal(str(value)) if field == "N" else date.fromisoformat(value)


def reference(condition: Condition, record: Mapping[str, Any]) -> bool:
    """A deliberately naive second reading of SOQL's rules, for the typed fields above."""
    if isinstance(condition, And):
        return all(reference(c, record) for c in condition.items)
    if isinstance(condition, Or):
        return any(reference(c, record) for c in condition.items)
    if isinstance(condition, Not):
        return not reference(condition.item, record)
    v = record[condition.field]
    if isinstance(condition, Like):
        regex = "".join(
            re.escape(m[1]) if m[1] else ".*" if m[0] == "%" else "." if m[0] == "_" else re.escape(m[0])
            for m in re.finditer(r"\\(.)|.", condition.pattern, re.S)
        )
        return v is not None and re.fullmatch(regex, str(v), re.I | re.S) is not None
    if isinstance(condition, Includes):
        hit = any(_selected(s.value) <= _selected(v) for s in condition.values)
        return hit != condition.excludes
    if isinstance(condition, InList):
        hit = any(
            v is not None and isinstance(lit, NumberValue) and Decimal(str(v)) == lit.value for lit in condition.values
        )
        return hit != condition.negated
    lit: Any = condition.value
    if condition.field == "B":
        same = v is (lit.value if isinstance(lit, BooleanValue) else False)
    elif isinstance(lit, NullValue):
        same = v is None
    elif v is None:
        return condition.op == "!="  # and never a range
    elif condition.field == "M":
        same = _selected(v) == _selected(lit.value)
    else:
        mine, theirs = (
            _plain(condition.field, v),
            _plain(condition.field, lit.value) if condition.field == "T" else lit.value,
        )
        ordered = {"<": mine < theirs, "<=": mine <= theirs, ">": mine > theirs, ">=": mine >= theirs}
        if condition.op in ordered:
            return bool(ordered[condition.op])
        same = mine == theirs
    return same if condition.op == "=" else not same


@settings(max_examples=500)
@given(typed_conditions, records)
def test_evaluate_agrees_with_a_naive_reference(condition: Condition, record: dict[str, object]) -> None:
    where = validated(render(Where(condition)), TYPED, object_name="X")
    assert evaluate(where, record) is reference(condition, record)
    assert evaluate(Where(Not(condition), where.field_types), record) is not evaluate(where, record)
