"""SOQL semantics over in-memory rows: typing, operators, nulls, ordering, relationships, cursors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.ids import IdFactory, to18
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.soql_engine import InMemoryRecords, RestRenderer, compile_query, execute
from services.salesforce_emulator.soql_parser import parse

pytestmark = pytest.mark.unit

EMPLOYEE = custom_object(
    "Employee__c",
    "a00",
    "Employee",
    [
        FieldDef("Level__c", "int", "Level", precision=3, custom=True),
        FieldDef("Active__c", "boolean", "Active", custom=True),
        FieldDef("Started__c", "date", "Started", custom=True),
        FieldDef(
            "Account__c",
            "reference",
            "Account",
            reference_to=("Account",),
            relationship_name="Account__r",
            custom=True,
        ),
    ],
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, EMPLOYEE)}
NOW = datetime(2024, 5, 15, 10, 0, tzinfo=UTC)  # a Wednesday


def rest_dt(value: datetime) -> str:
    utc = value.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}+0000"


def run(
    soql: str,
    rows: Mapping[str, list[dict[str, JsonValue]]],
    *,
    include_deleted: bool = False,
    now: datetime = NOW,
) -> list[dict[str, Any]]:
    source = InMemoryRecords(rows)
    plan = compile_query(soql, parse(soql), OBJECTS, now=now)
    execution = execute(plan, source, "00D000000000001", include_deleted=include_deleted)
    renderer = RestRenderer(execution, "59.0")
    return [renderer.record(r) for r in execution.rows]


def count(soql: str, rows: Mapping[str, list[dict[str, JsonValue]]], *, now: datetime = NOW) -> int:
    plan = compile_query(soql, parse(soql), OBJECTS, now=now)
    return execute(plan, InMemoryRecords(rows), "00D000000000001").count


def error(soql: str) -> SalesforceError:
    with pytest.raises(SalesforceError) as info:
        compile_query(soql, parse(soql), OBJECTS, now=NOW)
    return info.value


IDS = IdFactory()
ACME, GLOBEX, INITECH, NONAME = (IDS.next("001") for _ in range(4))
USER = IDS.next("005")
ACCOUNTS: list[dict[str, JsonValue]] = [
    {
        "Id": ACME,
        "IsDeleted": False,
        "Name": "Acme",
        "NumberOfEmployees": 50,
        "AnnualRevenue": 1000.5,
        "Type": "Partner",
        "OwnerId": USER,
        "BillingCity": "Paris",
        "CreatedDate": "2024-05-15T08:00:00.000+0000",
        "SystemModstamp": "2024-05-01T12:00:00.000+0000",
    },
    {
        "Id": GLOBEX,
        "IsDeleted": False,
        "Name": "globex",
        "NumberOfEmployees": 7,
        "AnnualRevenue": None,
        "Type": "Other",
        "OwnerId": USER,
        "CreatedDate": "2024-05-14T23:59:59.000+0000",
        "SystemModstamp": "2024-05-01T13:30:00.000+0200",  # 11:30Z, before Acme's 12:00Z
    },
    {
        "Id": INITECH,
        "IsDeleted": False,
        "Name": "Initech 100%",
        "NumberOfEmployees": 300,
        "AnnualRevenue": 5.0,
        "Type": None,
        "OwnerId": None,
        "CreatedDate": "2024-04-01T00:00:00.000+0000",
        "SystemModstamp": "2024-05-01T12:00:00.000+0000",
    },
    {
        "Id": NONAME,
        "IsDeleted": True,
        "Name": "Deleted Co",
        "NumberOfEmployees": None,
        "Type": "Partner",
        "OwnerId": USER,
        "CreatedDate": "2024-01-01T00:00:00.000+0000",
        "SystemModstamp": "2024-05-02T00:00:00.000+0000",
    },
]
CONTACT_ID = IDS.next("003")
ORPHAN_ID = IDS.next("003")
DATA: dict[str, list[dict[str, JsonValue]]] = {
    "Account": ACCOUNTS,
    "User": [{"Id": USER, "IsDeleted": False, "Name": "Ursula Admin"}],
    "Contact": [
        {"Id": CONTACT_ID, "IsDeleted": False, "LastName": "Lee", "AccountId": ACME, "Birthdate": "1990-02-03"},
        {"Id": ORPHAN_ID, "IsDeleted": False, "LastName": "Orphan", "AccountId": None, "Birthdate": None},
    ],
}


def names(soql: str, **kwargs: Any) -> list[str]:
    return [r["Name"] for r in run(soql, DATA, **kwargs)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("Name = 'ACME'", {"Acme"}),
        ("Name != 'acme'", {"globex", "Initech 100%"}),
        ("Name <> 'acme'", {"globex", "Initech 100%"}),
        ("NumberOfEmployees = 50", {"Acme"}),
        ("NumberOfEmployees = 50.0", {"Acme"}),
        ("NumberOfEmployees < 50", {"globex"}),
        ("NumberOfEmployees <= 50", {"globex", "Acme"}),
        ("NumberOfEmployees > 50", {"Initech 100%"}),
        ("NumberOfEmployees >= 50", {"Acme", "Initech 100%"}),
        ("AnnualRevenue > 6", {"Acme"}),
        ("AnnualRevenue = null", {"globex"}),
        ("AnnualRevenue != null", {"Acme", "Initech 100%"}),
        ("AnnualRevenue != 5", {"Acme", "globex"}),  # null satisfies !=
        ("AnnualRevenue < 5000", {"Acme", "Initech 100%"}),  # null never satisfies a range
        ("Type IN ('partner', 'OTHER')", {"Acme", "globex"}),
        ("Type IN ('Partner', null)", {"Acme", "Initech 100%"}),
        ("Type NOT IN ('Partner')", {"globex", "Initech 100%"}),  # null satisfies NOT IN
        ("Name LIKE 'a%'", {"Acme"}),
        ("Name LIKE '%E%'", {"Acme", "globex", "Initech 100%"}),
        ("Name LIKE 'glob_x'", {"globex"}),
        ("Name LIKE 'glob_'", set()),
        (r"Name LIKE '%100\%'", {"Initech 100%"}),
        (r"Name LIKE '%0\%%'", {"Initech 100%"}),
        ("Name LIKE 'Initech 1__%'", {"Initech 100%"}),
        ("NOT Name LIKE 'a%'", {"globex", "Initech 100%"}),
        (f"Id = '{ACME}'", {"Acme"}),
        (f"Id = '{ACME[:15]}'", {"Acme"}),
        (f"Id IN ('{ACME[:15]}', '{GLOBEX}')", {"Acme", "globex"}),
        (f"Id != '{ACME}'", {"globex", "Initech 100%"}),
        (f"OwnerId = '{USER[:15]}'", {"Acme", "globex"}),
        ("OwnerId = null", {"Initech 100%"}),
        ("SystemModstamp = 2024-05-01T12:00:00Z", {"Acme", "Initech 100%"}),
        ("SystemModstamp = 2024-05-01T14:00:00+02:00", {"Acme", "Initech 100%"}),
        ("SystemModstamp < 2024-05-01T12:00:00.000+0000", {"globex"}),
        ("SystemModstamp > 2024-05-01T07:00:00-05:00", set()),
        ("SystemModstamp >= 2024-05-01T06:59:59-05:00", {"Acme", "Initech 100%"}),
        ("CreatedDate = TODAY", {"Acme"}),
        ("CreatedDate = YESTERDAY", {"globex"}),
        ("CreatedDate > YESTERDAY", {"Acme"}),
        ("CreatedDate < TODAY", {"globex", "Initech 100%"}),
        ("CreatedDate = LAST_N_DAYS:7", {"Acme", "globex"}),
        ("CreatedDate = THIS_MONTH", {"Acme", "globex"}),
        ("CreatedDate = LAST_MONTH", {"Initech 100%"}),
        ("CreatedDate = THIS_WEEK", {"Acme", "globex"}),
        ("Owner.Name = 'ursula admin'", {"Acme", "globex"}),
        ("Owner.Name = null", {"Initech 100%"}),
        ("(Name = 'Acme' OR Name = 'globex') AND NumberOfEmployees > 10", {"Acme"}),
        ("Name = 'Acme' OR (Name = 'globex' AND NumberOfEmployees > 10)", {"Acme"}),
        ("NOT (Name = 'Acme' OR Name = 'globex')", {"Initech 100%"}),
        ("name = 'acme' and numberofemployees = 50", {"Acme"}),
    ],
)
def test_where_operators(where: str, expected: set[str]) -> None:
    assert set(names(f"SELECT Name FROM Account WHERE {where}")) == expected


def test_dates_compare_as_dates() -> None:
    rows = {"Contact": DATA["Contact"]}
    ids = {r["Id"] for r in run("SELECT Id FROM Contact WHERE Birthdate < 1990-02-04", rows)}
    assert ids == {CONTACT_ID}
    assert run("SELECT Id FROM Contact WHERE Birthdate > 1990-02-03", rows) == []
    assert count("SELECT COUNT() FROM Contact WHERE Birthdate = THIS_YEAR", rows) == 0
    assert count("SELECT COUNT() FROM Contact WHERE Birthdate = null", rows) == 1


def test_booleans_and_custom_objects() -> None:
    rows: dict[str, list[dict[str, JsonValue]]] = {
        "Account": ACCOUNTS,
        "Employee__c": [
            {"Id": IDS.next("a00"), "Name": "E1", "Active__c": True, "Level__c": 3, "Account__c": ACME},
            {"Id": IDS.next("a00"), "Name": "E2", "Active__c": False, "Level__c": 1, "Account__c": None},
        ],
    }
    got = run("SELECT Name, Account__r.Name FROM employee__c WHERE active__c = TRUE", rows)
    assert [(r["Name"], r["Account__r"]["Name"]) for r in got] == [("E1", "Acme")]
    assert [r["Name"] for r in run("SELECT Name FROM Employee__c WHERE Active__c != true", rows)] == ["E2"]


def test_deleted_rows_only_with_query_all() -> None:
    assert "Deleted Co" not in names("SELECT Name FROM Account")
    assert "Deleted Co" in names("SELECT Name FROM Account", include_deleted=True)
    assert names("SELECT Name FROM Account WHERE IsDeleted = true", include_deleted=True) == ["Deleted Co"]


def test_fields_come_back_with_canonical_casing_and_attributes() -> None:
    (record,) = run("select name, NUMBEROFEMPLOYEES, owner.name from ACCOUNT where name = 'acme'", DATA)
    assert record == {
        "attributes": {"type": "Account", "url": f"/services/data/v59.0/sobjects/Account/{ACME}"},
        "Name": "Acme",
        "NumberOfEmployees": 50,
        "Owner": {
            "attributes": {"type": "User", "url": f"/services/data/v59.0/sobjects/User/{USER}"},
            "Name": "Ursula Admin",
        },
    }


def test_two_level_relationships_merge_and_null_lookups_are_null() -> None:
    got = run(
        "SELECT LastName, Account.Name, Account.Owner.Name, Account.Type FROM Contact ORDER BY LastName",
        DATA,
    )
    assert got[0]["Account"]["Name"] == "Acme"
    assert got[0]["Account"]["Type"] == "Partner"
    assert got[0]["Account"]["Owner"]["Name"] == "Ursula Admin"
    assert list(got[0]["Account"]) == ["attributes", "Name", "Owner", "Type"]
    assert got[1]["LastName"] == "Orphan"
    assert got[1]["Account"] is None


def test_alias_and_object_name_prefixes() -> None:
    got = run("SELECT a.Name FROM Account a WHERE a.NumberOfEmployees = 50", DATA)
    assert got[0]["Name"] == "Acme"
    got = run("SELECT Account.Name FROM Account WHERE Account.NumberOfEmployees = 7", DATA)
    assert got[0]["Name"] == "globex"


def test_address_compound_is_built_from_its_parts() -> None:
    got = run("SELECT BillingAddress FROM Account WHERE Name IN ('Acme', 'globex') ORDER BY Name", DATA)
    assert got[0]["BillingAddress"]["city"] == "Paris"
    assert got[0]["BillingAddress"]["street"] is None
    assert got[1]["BillingAddress"] is None


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("Name", ["Acme", "globex", "Initech 100%"]),  # case-insensitive
        ("Name DESC", ["Initech 100%", "globex", "Acme"]),
        ("AnnualRevenue", ["globex", "Initech 100%", "Acme"]),  # nulls first ascending
        ("AnnualRevenue NULLS LAST", ["Initech 100%", "Acme", "globex"]),
        ("AnnualRevenue DESC", ["Acme", "Initech 100%", "globex"]),  # nulls last descending
        ("AnnualRevenue DESC NULLS FIRST", ["globex", "Acme", "Initech 100%"]),
        ("SystemModstamp, Name DESC", ["globex", "Initech 100%", "Acme"]),  # instants, not strings
        ("SystemModstamp DESC, Name", ["Acme", "Initech 100%", "globex"]),
        ("Type NULLS LAST, NumberOfEmployees DESC", ["globex", "Acme", "Initech 100%"]),
        ("Owner.Name NULLS LAST, Name", ["Acme", "globex", "Initech 100%"]),
    ],
)
def test_order_by(order_by: str, expected: list[str]) -> None:
    assert names(f"SELECT Name FROM Account ORDER BY {order_by}") == expected


def test_limit_offset_and_counts() -> None:
    assert names("SELECT Name FROM Account ORDER BY Name LIMIT 2") == ["Acme", "globex"]
    assert names("SELECT Name FROM Account ORDER BY Name LIMIT 2 OFFSET 1") == ["globex", "Initech 100%"]
    assert names("SELECT Name FROM Account ORDER BY Name OFFSET 5") == []
    assert count("SELECT COUNT() FROM Account", DATA) == 3
    assert count("SELECT COUNT() FROM Account WHERE Type = 'Partner'", DATA) == 1
    assert count("SELECT COUNT() FROM Account LIMIT 2", DATA) == 2
    (aggregate,) = run("SELECT COUNT(Id), COUNT(AnnualRevenue) revenue FROM Account", DATA)
    assert aggregate == {"attributes": {"type": "AggregateResult"}, "expr0": 3, "revenue": 2}


@pytest.mark.parametrize(
    ("soql", "code", "text"),
    [
        ("SELECT Id FROM Foo", "INVALID_TYPE", "sObject type 'Foo' is not supported."),
        ("SELECT Foo FROM Account", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'."),
        ("SELECT Id FROM Account WHERE Foo = 1", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'."),
        ("SELECT Id FROM Account ORDER BY Foo", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'."),
        ("SELECT Owner.Foo FROM Account", "INVALID_FIELD", "No such column 'Foo' on entity 'User'."),
        ("SELECT Boss.Name FROM Account", "INVALID_FIELD", "Didn't understand relationship 'Boss'"),
        ("SELECT Account FROM Contact", "INVALID_FIELD", "No such column 'Account' on entity 'Contact'."),
        ("SELECT Id FROM Account WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field: abc"),
        ("SELECT Id FROM Account WHERE OwnerId IN ('005!')", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field"),
        ("SELECT Id FROM Account WHERE Id = 1", "INVALID_FIELD", "must be of type id"),
        ("SELECT Id FROM Account WHERE Name = 5", "INVALID_FIELD", "must be of type string"),
        ("SELECT Id FROM Account WHERE NumberOfEmployees = '5'", "INVALID_FIELD", "must be of type double"),
        ("SELECT Id FROM Account WHERE IsDeleted = 'true'", "INVALID_FIELD", "must be of type boolean"),
        ("SELECT Id FROM Account WHERE CreatedDate = 2024-05-01", "INVALID_FIELD", "must be of type dateTime"),
        ("SELECT Id FROM Account WHERE CreatedDate = '2024'", "INVALID_FIELD", "must be of type dateTime"),
        ("SELECT Id FROM Contact WHERE Birthdate = 2024-05-01T00:00:00Z", "INVALID_FIELD", "must be of type date"),
        ("SELECT Id FROM Account WHERE IsDeleted > false", "INVALID_QUERY_FILTER_OPERATOR", "boolean"),
        ("SELECT Id FROM Account WHERE NumberOfEmployees LIKE '5'", "INVALID_QUERY_FILTER_OPERATOR", "LIKE"),
        ("SELECT Id FROM Account WHERE Description = 'x'", "INVALID_FIELD", "can not be filtered"),
        ("SELECT Id FROM Account ORDER BY BillingAddress", "INVALID_FIELD", "can not be sorted"),
        ("SELECT Id FROM Account WHERE CreatedDate = SOMEDAY", "MALFORMED_QUERY", "unexpected token: 'SOMEDAY'"),
        ("SELECT Id FROM Account WHERE CreatedDate = TODAY:3", "MALFORMED_QUERY", "unexpected token: 'TODAY:3'"),
        ("SELECT Id FROM Account WHERE CreatedDate = LAST_N_DAYS", "MALFORMED_QUERY", "'LAST_N_DAYS'"),
        ("SELECT Id, Name, id FROM Account", "MALFORMED_QUERY", "duplicate field selected: Id"),
        ("SELECT Id, COUNT() FROM Account", "MALFORMED_QUERY", "COUNT() must be the only element"),
        ("SELECT Name, COUNT(Id) FROM Account", "MALFORMED_QUERY", "Field must be grouped or aggregated: Name"),
        ("SELECT COUNT(Id) FROM Account ORDER BY Name", "MALFORMED_QUERY", "must be grouped or aggregated"),
        ("SELECT Id FROM Account OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset"),
    ],
)
def test_semantic_errors(soql: str, code: str, text: str) -> None:
    err = error(soql)
    assert (err.http_status, err.error_code) == (400, code)
    assert text in err.message


def test_error_message_points_at_the_field() -> None:
    err = error("SELECT Id, Foo FROM Account")
    assert err.message.startswith("\nSELECT Id, Foo FROM Account\n           ^\nERROR at Row:1:Column:12\nNo such")


def test_relative_dates_follow_the_clock() -> None:
    later = NOW + timedelta(days=40)
    assert count("SELECT COUNT() FROM Account WHERE CreatedDate = LAST_N_DAYS:7", DATA, now=later) == 0
    assert count("SELECT COUNT() FROM Account WHERE CreatedDate = LAST_N_DAYS:60", DATA, now=later) == 2


# ------------------------------------------------------------------------------------------------
# The tuple cursor Duplex's poller uses: no row may be skipped or repeated across pages.

CURSOR_QUERY = (
    "SELECT Id, SystemModstamp FROM Account WHERE SystemModstamp > {ts} "
    "OR (SystemModstamp = {ts} AND Id > '{id}') ORDER BY SystemModstamp, Id LIMIT {limit}"
)


def _walk(rows: list[dict[str, JsonValue]], limit: int) -> list[str]:
    source = {"Account": rows}
    first = f"SELECT Id, SystemModstamp FROM Account ORDER BY SystemModstamp, Id LIMIT {limit}"
    page = run(first, source)
    seen: list[str] = []
    while page:
        seen.extend(r["Id"] for r in page)
        last = page[-1]
        soql = CURSOR_QUERY.format(ts=last["SystemModstamp"].replace("+0000", "Z"), id=last["Id"], limit=limit)
        page = run(soql, source)
    return seen


def test_tuple_cursor_never_skips_rows_sharing_one_modstamp() -> None:
    factory = IdFactory(start=10_000)
    stamp = rest_dt(datetime(2024, 5, 1, tzinfo=UTC))
    rows: list[dict[str, JsonValue]] = [
        {"Id": factory.next("001"), "IsDeleted": False, "Name": f"A{i}", "SystemModstamp": stamp} for i in range(1000)
    ]
    # Store order deliberately differs from id order.
    rows.reverse()
    rows.insert(
        500,
        {
            "Id": factory.next("001"),
            "IsDeleted": False,
            "Name": "later",
            "SystemModstamp": rest_dt(datetime(2024, 5, 1, 0, 0, 1, tzinfo=UTC)),
        },
    )
    seen = _walk(rows, limit=7)
    assert len(seen) == len(set(seen)) == 1001
    assert set(seen) == {r["Id"] for r in rows}
    assert seen[-1] == rows[500]["Id"]


def test_tuple_cursor_accepts_15_character_ids_and_offsets() -> None:
    factory = IdFactory(start=500)
    stamp = "2024-05-01T00:00:00.000+0000"
    rows: list[dict[str, JsonValue]] = [
        {"Id": factory.next("001"), "IsDeleted": False, "SystemModstamp": stamp} for _ in range(5)
    ]
    third = str(rows[2]["Id"])
    got = run(CURSOR_QUERY.format(ts="2024-05-01T02:00:00+02:00", id=third[:15], limit=10), {"Account": rows})
    assert [r["Id"] for r in got] == [r["Id"] for r in rows[3:]]


# ------------------------------------------------------------------------------------------------
# Property: the evaluator agrees with a direct Python filter for random simple WHERE clauses.

_NUMBERS = st.one_of(st.none(), st.integers(min_value=-5, max_value=5))
_TEXTS = st.one_of(st.none(), st.sampled_from(["a", "A", "b", "ab", "Ab", "ba", ""]))
_OPS = ["=", "!=", "<", "<=", ">", ">="]


def _python_compare(value: Any, op: str, literal: Any) -> bool:
    if literal is None:
        return (value is None) if op == "=" else (value is not None) if op == "!=" else False
    if value is None:
        return op == "!="
    outcomes: dict[str, bool] = {
        "=": value == literal,
        "!=": value != literal,
        "<": value < literal,
        "<=": value <= literal,
        ">": value > literal,
        ">=": value >= literal,
    }
    return outcomes[op]


@st.composite
def _clauses(draw: st.DrawFn) -> tuple[str, Any]:
    use_number = draw(st.booleans())
    op = draw(st.sampled_from(_OPS))
    if use_number:
        number = draw(st.one_of(st.none(), st.integers(min_value=-6, max_value=6)))
        text = "null" if number is None else str(number)
        return f"NumberOfEmployees {op} {text}", lambda row: _python_compare(row["NumberOfEmployees"], op, number)
    word = draw(st.one_of(st.none(), st.sampled_from(["a", "B", "ab", "zz"])))
    text = "null" if word is None else f"'{word}'"
    folded = None if word is None else word.casefold()
    return (
        f"AccountNumber {op} {text}",
        lambda row: _python_compare(
            None if row["AccountNumber"] is None else row["AccountNumber"].casefold(), op, folded
        ),
    )


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.tuples(_NUMBERS, _TEXTS), min_size=0, max_size=12),
    clauses=st.lists(_clauses(), min_size=1, max_size=3),
    joiner=st.sampled_from(["AND", "OR"]),
    negate=st.booleans(),
)
def test_evaluator_agrees_with_python(
    values: list[tuple[int | None, str | None]], clauses: list[tuple[str, Any]], joiner: str, negate: bool
) -> None:
    factory = IdFactory(start=1)
    rows: list[dict[str, JsonValue]] = [
        {"Id": factory.next("001"), "IsDeleted": False, "NumberOfEmployees": n, "AccountNumber": t} for n, t in values
    ]
    where = f" {joiner} ".join(f"({c[0]})" for c in clauses)
    if negate:
        where = f"NOT ({where})"
    got = {r["Id"] for r in run(f"SELECT Id FROM Account WHERE {where}", {"Account": rows})}

    def expected(row: dict[str, JsonValue]) -> bool:
        results = [c[1](row) for c in clauses]
        combined = all(results) if joiner == "AND" else any(results)
        return not combined if negate else combined

    assert got == {r["Id"] for r in rows if expected(r)}


def test_id_literals_are_compared_on_15_characters() -> None:
    assert to18(ACME[:15]) == ACME
    assert names(f"SELECT Name FROM Account WHERE Id > '{ACME[:15]}' ORDER BY Id") == ["globex", "Initech 100%"]
