"""SOQL text → syntax tree, and the MALFORMED_QUERY errors Salesforce gives for bad text."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.soql_parser import (
    And,
    BoolLit,
    Comparison,
    Count,
    DateLit,
    DateTimeLit,
    FieldPath,
    InList,
    Like,
    Not,
    NullLit,
    NumberLit,
    Or,
    OrderKey,
    Query,
    RelativeDateLit,
    StringLit,
    parse,
)

pytestmark = pytest.mark.unit


def f(*parts: str) -> FieldPath:
    return FieldPath(parts)


def cmp(name: str, op: str, value: object) -> Comparison:
    return Comparison(f(*name.split(".")), op, value)  # type: ignore[arg-type]


VALID: list[tuple[str, Query]] = [
    ("SELECT Id FROM Account", Query((f("Id"),), "Account")),
    (
        "select id, name from account",
        Query((f("id"), f("name")), "account"),
    ),
    (
        "SELECT Id, Account.Name, Account.Owner.Name FROM Contact",
        Query((f("Id"), f("Account", "Name"), f("Account", "Owner", "Name")), "Contact"),
    ),
    ("SELECT COUNT() FROM Account", Query((Count(),), "Account")),
    ("SELECT COUNT(Id) FROM Account", Query((Count(f("Id")),), "Account")),
    ("SELECT count(Id) total FROM Account", Query((Count(f("Id"), "total"),), "Account")),
    ("SELECT Id FROM Account a", Query((f("Id"),), "Account", alias="a")),
    (
        "SELECT Id FROM Account WHERE Name = 'Acme'",
        Query((f("Id"),), "Account", cmp("Name", "=", StringLit("Acme"))),
    ),
    *[
        (
            f"SELECT Id FROM Account WHERE NumberOfEmployees {op} 10",
            Query((f("Id"),), "Account", cmp("NumberOfEmployees", norm, NumberLit(10.0, is_integer=True))),
        )
        for op, norm in [("=", "="), ("!=", "!="), ("<>", "!="), ("<", "<"), ("<=", "<="), (">", ">"), (">=", ">=")]
    ],
    (
        "SELECT Id FROM Account WHERE AnnualRevenue > -1.5",
        Query((f("Id"),), "Account", cmp("AnnualRevenue", ">", NumberLit(-1.5))),
    ),
    (
        "SELECT Id FROM Account WHERE Name = null AND Phone != NULL",
        Query((f("Id"),), "Account", And((cmp("Name", "=", NullLit()), cmp("Phone", "!=", NullLit())))),
    ),
    (
        "SELECT Id FROM Lead WHERE IsConverted = TRUE OR IsConverted = false",
        Query(
            (f("Id"),),
            "Lead",
            Or((cmp("IsConverted", "=", BoolLit(True)), cmp("IsConverted", "=", BoolLit(False)))),
        ),
    ),
    (
        "SELECT Id FROM Account WHERE Type IN ('Partner', 'Other')",
        Query((f("Id"),), "Account", InList(f("Type"), (StringLit("Partner"), StringLit("Other")))),
    ),
    (
        "SELECT Id FROM Account WHERE Type NOT IN ('Partner')",
        Query((f("Id"),), "Account", InList(f("Type"), (StringLit("Partner"),), negated=True)),
    ),
    (
        "SELECT Id FROM Account WHERE Name LIKE 'Ac%'",
        Query((f("Id"),), "Account", Like(f("Name"), StringLit("Ac%"))),
    ),
    (
        "SELECT Id FROM Account WHERE NOT Name LIKE 'Ac_'",
        Query((f("Id"),), "Account", Not(Like(f("Name"), StringLit("Ac_")))),
    ),
    (
        r"SELECT Id FROM Account WHERE Name = 'O\'Brien \\ \n\u00e9'",
        Query((f("Id"),), "Account", cmp("Name", "=", StringLit("O'Brien \\ \n\u00e9"))),
    ),
    (
        "SELECT Id FROM Opportunity WHERE CloseDate = 2024-05-01",
        Query((f("Id"),), "Opportunity", cmp("CloseDate", "=", DateLit(date(2024, 5, 1)))),
    ),
    *[
        (
            f"SELECT Id FROM Account WHERE SystemModstamp > {text}",
            Query((f("Id"),), "Account", cmp("SystemModstamp", ">", DateTimeLit(instant))),
        )
        for text, instant in [
            ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
            ("2024-05-01T12:00:00.000Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
            ("2024-05-01T12:00:00.000+0000", datetime(2024, 5, 1, 12, tzinfo=UTC)),
            ("2024-05-01T13:00:00+01:00", datetime(2024, 5, 1, 13, tzinfo=timezone(timedelta(hours=1)))),
            ("2024-05-01T07:30:00.25-04:30", datetime(2024, 5, 1, 7, 30, 0, 250000, timezone(-timedelta(hours=4.5)))),
        ]
    ],
    (
        "SELECT Id FROM Account WHERE CreatedDate = TODAY AND CreatedDate > LAST_N_DAYS:30",
        Query(
            (f("Id"),),
            "Account",
            And(
                (
                    cmp("CreatedDate", "=", RelativeDateLit("TODAY")),
                    cmp("CreatedDate", ">", RelativeDateLit("LAST_N_DAYS", 30)),
                )
            ),
        ),
    ),
    (
        "SELECT Id FROM Account WHERE (Name = 'a' OR Name = 'b') AND (Phone = null)",
        Query(
            (f("Id"),),
            "Account",
            And(
                (
                    Or((cmp("Name", "=", StringLit("a")), cmp("Name", "=", StringLit("b")))),
                    cmp("Phone", "=", NullLit()),
                )
            ),
        ),
    ),
    (
        "SELECT Id FROM Account WHERE NOT (Name = 'a' AND Phone = null)",
        Query(
            (f("Id"),),
            "Account",
            Not(And((cmp("Name", "=", StringLit("a")), cmp("Phone", "=", NullLit())))),
        ),
    ),
    (
        "SELECT Id FROM Account ORDER BY Name DESC NULLS LAST, Id, Phone ASC NULLS FIRST LIMIT 10 OFFSET 5",
        Query(
            (f("Id"),),
            "Account",
            order_by=(
                OrderKey(f("Name"), descending=True, nulls_first=False),
                OrderKey(f("Id")),
                OrderKey(f("Phone"), nulls_first=True),
            ),
            limit=10,
            offset=5,
        ),
    ),
    (
        "SELECT Id, SystemModstamp FROM Account WHERE SystemModstamp > 2024-05-01T00:00:00.000Z "
        "OR (SystemModstamp = 2024-05-01T00:00:00.000Z AND Id > '0015g0000000001AAA') "
        "ORDER BY SystemModstamp, Id LIMIT 2000",
        Query(
            (f("Id"), f("SystemModstamp")),
            "Account",
            Or(
                (
                    cmp("SystemModstamp", ">", DateTimeLit(datetime(2024, 5, 1, tzinfo=UTC))),
                    And(
                        (
                            cmp("SystemModstamp", "=", DateTimeLit(datetime(2024, 5, 1, tzinfo=UTC))),
                            cmp("Id", ">", StringLit("0015g0000000001AAA")),
                        )
                    ),
                )
            ),
            order_by=(OrderKey(f("SystemModstamp")), OrderKey(f("Id"))),
            limit=2000,
        ),
    ),
    (
        "SELECT Id\nFROM Account\nWHERE Name = 'multi\nline'",
        Query((f("Id"),), "Account", cmp("Name", "=", StringLit("multi\nline"))),
    ),
]


@pytest.mark.parametrize(("soql", "expected"), VALID, ids=[v[0][:70] for v in VALID])
def test_valid_queries_parse_to_the_expected_tree(soql: str, expected: Query) -> None:
    assert parse(soql) == expected


def test_like_keeps_escaped_wildcards_apart_from_real_ones() -> None:
    query = parse(r"SELECT Id FROM Account WHERE Name LIKE '100\%_'")
    assert isinstance(query.where, Like)
    assert query.where.pattern.raw == "100\\%_"


INVALID: list[tuple[str, str]] = [
    ("SELECT Id FORM Account", "unexpected token: 'FORM'"),
    ("SELECT FROM Account", "unexpected token: 'FROM'"),
    ("SELECT Id FROM", "unexpected token: <EOF>"),
    ("SELECT Id, FROM Account", "unexpected token: 'FROM'"),
    ("SELECT Id FROM Account WHERE", "unexpected token: <EOF>"),
    ("SELECT Id FROM Account WHERE Name = 'a' AND Phone = 'b' OR Id = null", "unexpected token: 'OR'"),
    ("SELECT Id FROM Account WHERE Name = 'a' OR Phone = 'b' AND Id = null", "unexpected token: 'AND'"),
    ('SELECT Id FROM Account WHERE Name = "a"', "unexpected token: '\"'"),
    ("SELECT Id FROM Account WHERE Name = 'unterminated", "unexpected token: '''"),
    (r"SELECT Id FROM Account WHERE Name = '\q'", "Illegal character sequence '\\q' in string literal"),
    ("SELECT Id FROM Account WHERE CloseDate = 2024-13-01", "unexpected token: '2024-13-01'"),
    ("SELECT Id FROM Account LIMIT -1", "unexpected token: '-1'"),
    ("SELECT Id FROM Account LIMIT 1.5", "unexpected token: '1.5'"),
    ("SELECT Id FROM Account ORDER Name", "unexpected token: 'Name'"),
    ("SELECT Id FROM Account WHERE Name LIKE 5", "LIKE requires a string literal"),
    ("SELECT Id FROM Account GROUP BY Name", "unexpected token: 'BY'"),
    ("SELECT Id FROM Account, Contact", "unexpected token: ','"),
    ("", "unexpected token: <EOF>"),
]


@pytest.mark.parametrize(("soql", "message"), INVALID, ids=[v[0][:60] or "empty" for v in INVALID])
def test_invalid_queries_are_malformed(soql: str, message: str) -> None:
    with pytest.raises(SalesforceError) as info:
        parse(soql)
    assert info.value.http_status == 400
    assert info.value.error_code == "MALFORMED_QUERY"
    assert message in info.value.message


def test_error_points_at_the_bad_token() -> None:
    with pytest.raises(SalesforceError) as info:
        parse("SELECT Id\nFORM Account")
    assert info.value.message == "\nFORM Account\n^\nERROR at Row:2:Column:1\nunexpected token: 'FORM'"
