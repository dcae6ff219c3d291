"""Record validation: body binding and per-record checks, with Salesforce's codes and messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.formula import FormulaError, compile_formula
from services.salesforce_emulator.schema import ACCOUNT, CONTACT, LEAD, OPPORTUNITY, FieldDef, custom_object
from services.salesforce_emulator.validation import (
    coerce,
    deserialize,
    format_datetime,
    parse_datetime,
    plan_for,
    validate,
)

pytestmark = pytest.mark.unit

EMPLOYEE = custom_object(
    "Employee__c",
    "a00",
    "Employee",
    [
        FieldDef("Ext__c", "string", "Ext", length=10, external_id=True, custom=True),
        FieldDef("Score__c", "double", "Score", precision=18, scale=2, custom=True),
        FieldDef("Code__c", "string", "Code", length=5, calculated=True, formula="UPPER(Name)", custom=True),
    ],
)

DESERIALIZE_ERRORS: list[tuple[str, Any, dict[str, Any], str, str, list[str]]] = [
    (
        "unknown field",
        ACCOUNT,
        {"Foo": 1},
        "INVALID_FIELD",
        "No such column 'Foo' on sobject of type Account",
        ["Foo"],
    ),
    (
        "string for int",
        ACCOUNT,
        {"NumberOfEmployees": "many"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of int from VALUE_STRING value many or request may be missing a required field",
        ["NumberOfEmployees"],
    ),
    (
        "fraction for int",
        ACCOUNT,
        {"NumberOfEmployees": 1.5},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of int from VALUE_NUMBER_FLOAT value 1.5 or request may be missing a required "
        "field",
        ["NumberOfEmployees"],
    ),
    (
        "object for string",
        ACCOUNT,
        {"Name": {"a": 1}},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of String from START_OBJECT value { or request may be missing a required field",
        ["Name"],
    ),
    (
        "number for boolean",
        LEAD,
        {"IsConverted": 1},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of boolean from VALUE_NUMBER_INT value 1 or request may be missing a required "
        "field",
        ["IsConverted"],
    ),
    (
        "bad date",
        OPPORTUNITY,
        {"CloseDate": "2024-13-01"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of Date from VALUE_STRING value 2024-13-01 or request may be missing a "
        "required field",
        ["CloseDate"],
    ),
    (
        "bool for currency",
        OPPORTUNITY,
        {"Amount": True},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of double from VALUE_TRUE value True or request may be missing a required field",
        ["Amount"],
    ),
    (
        # An int field is a Java int (and an Avro int in change events).
        "int beyond 32 bits",
        ACCOUNT,
        {"NumberOfEmployees": 2**31},
        "JSON_PARSER_ERROR",
        "Numeric value (2147483648) out of range of int (-2147483648 - 2147483647)",
        ["NumberOfEmployees"],
    ),
    (
        "int text beyond 32 bits",
        ACCOUNT,
        {"NumberOfEmployees": "-2147483649"},
        "JSON_PARSER_ERROR",
        "Numeric value (-2147483649) out of range of int (-2147483648 - 2147483647)",
        ["NumberOfEmployees"],
    ),
    (
        "infinity for int",
        ACCOUNT,
        {"NumberOfEmployees": "1e400"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of int from VALUE_STRING value 1e400 or request may be missing a required field",
        ["NumberOfEmployees"],
    ),
    (
        "offset rolling past year 9999",
        OPPORTUNITY,
        {"CloseDate": "9999-12-31T23:59:59.999999-14:00"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of Date from VALUE_STRING value 9999-12-31T23:59:59.999999-14:00 or request "
        "may be missing a required field",
        ["CloseDate"],
    ),
    (
        "offset rolling before year 1",
        ACCOUNT,
        {"CreatedDate": "0001-01-01T00:00:00+14:00"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of Datetime from VALUE_STRING value 0001-01-01T00:00:00+14:00 or request may "
        "be missing a required field",
        ["CreatedDate"],
    ),
]


@pytest.mark.parametrize(
    ("obj", "body", "code", "message", "fields"),
    [case[1:] for case in DESERIALIZE_ERRORS],
    ids=[case[0] for case in DESERIALIZE_ERRORS],
)
def test_deserialize_errors(obj: Any, body: dict[str, Any], code: str, message: str, fields: list[str]) -> None:
    with pytest.raises(SalesforceError) as caught:
        deserialize(plan_for(obj), body)
    assert (caught.value.http_status, caught.value.error_code, caught.value.message, caught.value.fields) == (
        400,
        code,
        message,
        fields,
    )


COERCIONS: list[tuple[str, Any, Any, Any]] = [
    ("numeric string to int", ACCOUNT.field("NumberOfEmployees"), "42", 42),
    ("integral float to int", ACCOUNT.field("NumberOfEmployees"), 42.0, 42),
    ("currency rounded to scale", OPPORTUNITY.field("Amount"), 10.005, 10.01),
    ("currency scale 0 is a float", ACCOUNT.field("AnnualRevenue"), 5, 5.0),
    ("int at the 32-bit bounds", ACCOUNT.field("NumberOfEmployees"), -(2**31), -(2**31)),
    ("int text at the 32-bit bounds", ACCOUNT.field("NumberOfEmployees"), "2147483647", 2**31 - 1),
    # Refused by the record checks, as Salesforce reports it per record.
    ("double overflowing is infinite", ACCOUNT.field("AnnualRevenue"), "1e400", math.inf),
    ("integer beyond a double is infinite", ACCOUNT.field("AnnualRevenue"), -(10**400), -math.inf),
    ("string boolean", LEAD.field("IsConverted"), "TRUE", True),
    ("number to text", ACCOUNT.field("Name"), 12, "12"),
    ("empty text is null", ACCOUNT.field("Name"), "", None),
    ("datetime Z", ACCOUNT.field("CreatedDate"), "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000+0000"),
    (
        "datetime offset",
        ACCOUNT.field("CreatedDate"),
        "2024-05-01T14:00:00.5+02:00",
        "2024-05-01T12:00:00.500+0000",
    ),
    ("datetime date only", ACCOUNT.field("CreatedDate"), "2024-05-01", "2024-05-01T00:00:00.000+0000"),
    ("date", OPPORTUNITY.field("CloseDate"), "2024-02-29", "2024-02-29"),
    ("date from datetime", OPPORTUNITY.field("CloseDate"), "2024-02-29T23:00:00Z", "2024-02-29"),
    ("date before year 1000", OPPORTUNITY.field("CloseDate"), "0001-01-01T00:00:00Z", "0001-01-01"),
    ("datetime before year 1000", ACCOUNT.field("CreatedDate"), "0999-12-31T23:59:59Z", "0999-12-31T23:59:59.000+0000"),
    ("datetime at year 1", ACCOUNT.field("CreatedDate"), "0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000+0000"),
    (
        "datetime at the end of year 9999",
        ACCOUNT.field("CreatedDate"),
        "9999-12-31T23:59:59.999Z",
        "9999-12-31T23:59:59.999+0000",
    ),
    ("null", ACCOUNT.field("Name"), None, None),
]


@pytest.mark.parametrize(("f", "raw", "expected"), [c[1:] for c in COERCIONS], ids=[c[0] for c in COERCIONS])
def test_coerce(f: FieldDef | None, raw: Any, expected: Any) -> None:
    assert f is not None
    assert coerce(f, raw) == expected
    assert type(coerce(f, raw)) is type(expected)


def test_csv_source_coerces_text_and_names_the_soap_type() -> None:
    plan = plan_for(ACCOUNT)
    values, body_id = deserialize(
        plan, {"Id": "", "Name": "A", "Phone": "#N/A", "Website": "", "NumberOfEmployees": "7"}, "csv"
    )
    assert body_id is None
    assert values == {"Name": "A", "Phone": None, "NumberOfEmployees": 7}
    with pytest.raises(SalesforceError) as caught:
        deserialize(plan, {"NumberOfEmployees": "x"}, "csv")
    assert caught.value.error_code == "INVALID_FIELD"
    assert "xsd:int" in caught.value.message


def test_deserialize_matches_fields_case_insensitively_and_returns_the_body_id() -> None:
    values, body_id = deserialize(plan_for(ACCOUNT), {"attributes": {"type": "Account"}, "name": "x", "ID": "001"})
    assert values == {"Name": "x"}
    assert body_id == "001"


CHECK_ERRORS: list[tuple[str, Any, str, dict[str, Any], list[str], str, str, list[str]]] = [
    (
        "required on create",
        ACCOUNT,
        "create",
        {"Phone": "1"},
        [],
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name]",
        ["Name"],
    ),
    (
        "several required",
        OPPORTUNITY,
        "create",
        {},
        [],
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name, StageName, CloseDate]",
        ["Name", "StageName", "CloseDate"],
    ),
    (
        "required nulled on update",
        CONTACT,
        "update",
        {"LastName": None},
        [],
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [LastName]",
        ["LastName"],
    ),
    (
        "too long",
        EMPLOYEE,
        "update",
        {"Ext__c": "x" * 11},
        [],
        "STRING_TOO_LONG",
        f"Ext__c: data value too large: {'x' * 11} (max length=10)",
        ["Ext__c"],
    ),
    (
        "formula field",
        OPPORTUNITY,
        "update",
        {"IsClosed": True},
        [],
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "Unable to create/update fields: IsClosed. Please check the security settings of this field and verify "
        "that it is read/write for your profile or permission set.",
        ["IsClosed"],
    ),
    (
        "system field",
        ACCOUNT,
        "create",
        {"Name": "a", "CreatedDate": "2024-05-01T00:00:00.000+0000"},
        [],
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "Unable to create/update fields: CreatedDate. Please check the security settings of this field and verify "
        "that it is read/write for your profile or permission set.",
        ["CreatedDate"],
    ),
    (
        "not updateable",
        LEAD,
        "update",
        {"ConvertedAccountId": "001000000000001AAA"},
        [],
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "Unable to create/update fields: ConvertedAccountId. Please check the security settings of this field and "
        "verify that it is read/write for your profile or permission set.",
        ["ConvertedAccountId"],
    ),
    (
        "per-user read-only",
        ACCOUNT,
        "update",
        {"Phone": "1"},
        ["account.phone"],
        "INSUFFICIENT_ACCESS_OR_READONLY",
        "Unable to create/update fields: Phone. Please check the security settings of this field and verify that "
        "it is read/write for your profile or permission set.",
        ["Phone"],
    ),
    (
        "malformed reference",
        CONTACT,
        "update",
        {"AccountId": "not-an-id"},
        [],
        "MALFORMED_ID",
        "AccountId: id value of incorrect type: not-an-id",
        ["AccountId"],
    ),
    (
        "bad email",
        CONTACT,
        "update",
        {"Email": "nobody"},
        [],
        "INVALID_EMAIL_ADDRESS",
        "Email: invalid email address: nobody",
        ["Email"],
    ),
    (
        "infinite currency",
        ACCOUNT,
        "update",
        {"AnnualRevenue": math.inf},
        [],
        "NUMBER_OUTSIDE_VALID_RANGE",
        "Annual Revenue: value outside of valid range on numeric field: inf",
        ["AnnualRevenue"],
    ),
    (
        "NaN double",
        EMPLOYEE,
        "create",
        {"Name": "n", "Score__c": math.nan},
        [],
        "NUMBER_OUTSIDE_VALID_RANGE",
        "Score: value outside of valid range on numeric field: nan",
        ["Score__c"],
    ),
]


@pytest.mark.parametrize(
    ("obj", "op", "values", "readonly", "code", "message", "fields"),
    [c[1:] for c in CHECK_ERRORS],
    ids=[c[0] for c in CHECK_ERRORS],
)
def test_record_checks(
    obj: Any, op: Any, values: dict[str, Any], readonly: list[str], code: str, message: str, fields: list[str]
) -> None:
    with pytest.raises(SalesforceError) as caught:
        validate(plan_for(obj), values, op, readonly)
    assert (caught.value.http_status, caught.value.error_code, caught.value.message, caught.value.fields) == (
        400,
        code,
        message,
        fields,
    )


@pytest.mark.parametrize(
    ("obj", "op", "values"),
    [
        (ACCOUNT, "create", {"Name": "ok", "Type": "Not in the picklist"}),
        (CONTACT, "update", {"Phone": None}),
        (LEAD, "create", {"LastName": "L", "Company": "C"}),
        (EMPLOYEE, "create", {"Name": "n", "Ext__c": "x" * 10}),
    ],
)
def test_valid_records_pass(obj: Any, op: Any, values: dict[str, Any]) -> None:
    validate(plan_for(obj), values, op)


def test_plan_knows_what_is_stored_and_computed() -> None:
    contact = plan_for(CONTACT)
    assert contact.derived_name
    assert "Name" not in contact.stored
    assert "MailingAddress" not in contact.stored
    assert "MailingCity" in contact.stored
    opp = plan_for(OPPORTUNITY)
    assert [f.name for f, _ in opp.formulas] == ["IsClosed"]
    assert plan_for(EMPLOYEE).indexed == ("Ext__c",)
    assert plan_for(LEAD).defaults == (("Status", "Open - Not Contacted"), ("IsConverted", False))


def test_datetime_round_trip() -> None:
    ms = parse_datetime("2013-05-07T22:07:19.000+0000")
    assert ms == 1367964439000
    assert format_datetime(ms) == "2013-05-07T22:07:19.000+0000"
    assert parse_datetime("not a date") is None
    assert parse_datetime("2024-02-30T00:00:00Z") is None


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999)))
def test_datetimes_are_exact_to_the_millisecond_in_every_year(moment: datetime) -> None:
    text = moment.isoformat(timespec="milliseconds")
    ms = parse_datetime(text + "Z")
    assert ms == (moment.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert format_datetime(ms) == text + "+0000"


FORMULAS: list[tuple[str, dict[str, Any], Any]] = [
    ("StageName IN ('Closed Won', 'Closed Lost')", {"StageName": "Closed Lost"}, True),
    ("StageName IN ('Closed Won', 'Closed Lost')", {"StageName": None}, False),
    ("StageName NOT IN ('Closed Won')", {"StageName": "Prospecting"}, True),
    ("UPPER(FirstName) & ' ' & LOWER(LastName)", {"FirstName": "ada", "LastName": "LOVELACE"}, "ADA lovelace"),
    ("FirstName & LastName", {"LastName": "X"}, "X"),
    ("Amount * 2 + 1", {"Amount": 10}, 21),
    ("Amount / 0", {"Amount": 10}, None),
    ("Amount + 1", {}, None),
    ("Amount >= 10 && Stage = 'A'", {"Amount": 10, "Stage": "A"}, True),
    ("Amount > 10 OR NOT Stage = 'A'", {"Amount": 10, "Stage": "B"}, True),
    ("Amount <> 3", {"Amount": 3}, False),
    ("IF(ISBLANK(Phone), 'none', Phone)", {}, "none"),
    ("BLANKVALUE(Phone, 'n/a')", {"Phone": "1"}, "1"),
    ("LEN(Name) - 1", {"Name": "abcd"}, 3),
    ("-Amount", {"Amount": 2}, -2),
    ("ISPICKVAL(Type, 'Partner')", {"Type": "Partner"}, True),
    ("CONTAINS(Name, 'cm')", {"Name": "Acme"}, True),
    ("ROUND(Amount, 1)", {"Amount": 1.26}, 1.3),
    ("MAX(1, Amount, 3)", {"Amount": 7}, 7),
    ("AND(TRUE, FALSE)", {}, False),
    ('TEXT(Amount) & "%"', {"Amount": 5.0}, "5%"),
]


@pytest.mark.parametrize(("source", "record", "expected"), FORMULAS, ids=[f[0] for f in FORMULAS])
def test_formula_subset(source: str, record: dict[str, Any], expected: Any) -> None:
    assert compile_formula(source).evaluate(record) == expected


@pytest.mark.parametrize("source", ["UNKNOWN(1)", "1 +", "(1", "Name $ 2", "IF(1, 2)"])
def test_formula_errors(source: str) -> None:
    with pytest.raises(FormulaError):
        compile_formula(source)


def test_formula_field_references_resolve_against_the_object() -> None:
    custom = custom_object(
        "Bad__c", "a01", "Bad", [FieldDef("F__c", "string", "F", calculated=True, formula="Nope__c")]
    )
    with pytest.raises(FormulaError):
        plan_for(custom)
