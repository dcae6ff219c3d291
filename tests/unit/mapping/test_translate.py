"""Table-driven tests of field translation between the app and Salesforce."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.common.change import Change, ChangeKind, Side
from services.common.tenant_config import FieldMapping, FieldType, ObjectPair
from services.common.tenant_config.model import RecordFilter
from services.common.values import Reference, Value
from services.mapping.translate import (
    CrmFieldInfo,
    Dropped,
    FilterOutcome,
    MappedField,
    RejectedChangeError,
    coerce,
    filter_decision,
    translate,
)

pytestmark = pytest.mark.unit

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

PAIR = ObjectPair.model_validate(
    {
        "name": "partners",
        "app": {"object": "partners"},
        "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
        "filter": {"app": [{"field": "status", "in": ["active", "onboarding"]}]},
        "fields": [
            {"app": "name", "salesforce": "Name", "transform": {"type": "string", "maxLength": 20}},
            {
                "app": "tier",
                "salesforce": "Tier__c",
                "direction": "app_to_crm",
                "transform": {"type": "picklist", "valueMap": {"gold": "Gold", "silver": "Silver"}},
            },
            {
                "app": "status",
                "salesforce": "Status__c",
                "transform": {"type": "picklist", "valueMap": {"active": "Active", "onboarding": "Onboarding"}},
            },
            {
                "app": "industries",
                "salesforce": "Industries__c",
                "transform": {"type": "multipicklist", "valueMap": {"software": "Software", "services": "Services"}},
            },
            {
                "app": "revenue",
                "salesforce": "AnnualRevenue",
                "direction": "crm_to_app",
                "transform": {"type": "decimal"},
            },
            {"app": "since", "salesforce": "Since__c", "transform": {"type": "date"}},
            {"app": "score", "salesforce": "Score__c", "transform": {"type": "double"}},
            {"app": "upper_name", "salesforce": "Upper_Name__c", "transform": {"type": "string"}},
            {"app": "owner_code", "salesforce": "Owner_Code__c"},
            {"app": "code", "salesforce": "Code__c", "transform": {"type": "string"}},
            {
                "app": "parent_id",
                "salesforce": "ParentId",
                "transform": {"type": "reference"},
                "reference": {"object": "partners", "onUnresolved": "hold"},
            },
        ],
    }
)
DESCRIBE = {
    **{
        name: CrmFieldInfo(name)
        for name in ("Id", "Duplex_Id__c", "Tier__c", "Status__c", "Industries__c", "AnnualRevenue", "Since__c")
    },
    **{name: CrmFieldInfo(name) for name in ("Score__c", "ParentId")},
    "Name": CrmFieldInfo("Name", length=255),
    "Upper_Name__c": CrmFieldInfo("Upper_Name__c", calculated=True, updateable=False, createable=False),
    "Owner_Code__c": CrmFieldInfo("Owner_Code__c", updateable=False, createable=False),
    # Only describe knows this one's length: the mapping sets none.
    "Code__c": CrmFieldInfo("Code__c", length=5),
}
LINKS = {
    ("partners", Side.APP, "app-parent"): "001000000000001AAA",
    ("partners", Side.CRM, "001000000000001AAA"): "app-parent",
}


def resolve(pair: str, side: Side, record_id: str) -> str | None:
    return LINKS.get((pair, side, record_id))


def change(
    side: Side, fields: dict[str, Value], kind: ChangeKind = ChangeKind.UPDATE, changed: set[str] | None = None
) -> Change:
    return Change(
        event_id="e1",
        tenant_id="acme",
        side=side,
        object_type="partners" if side is Side.APP else "Account",
        record_id="r1",
        kind=kind,
        fields=fields,
        at=AT,
        changed=frozenset(changed if changed is not None else fields),
    )


def by_app_field(fields: tuple[MappedField, ...]) -> dict[str, MappedField]:
    return {f.app_field: f for f in fields}


@pytest.mark.parametrize(
    ("side", "source", "app_field", "app_value", "crm_value"),
    [
        (Side.APP, {"name": "Acme"}, "name", "Acme", "Acme"),
        (Side.CRM, {"Name": "Acme"}, "name", "Acme", "Acme"),
        (Side.CRM, {"name": "Acme"}, "name", "Acme", "Acme"),  # Salesforce names are case-insensitive
        (Side.APP, {"tier": "gold"}, "tier", "gold", "Gold"),
        (Side.APP, {"status": "onboarding"}, "status", "onboarding", "Onboarding"),
        (Side.CRM, {"Status__c": "Active"}, "status", "active", "Active"),
        (
            Side.APP,
            {"industries": ("software", "services")},
            "industries",
            ("software", "services"),
            ("Software", "Services"),
        ),
        (
            Side.CRM,
            {"Industries__c": "Software;Services"},
            "industries",
            ("software", "services"),
            ("Software", "Services"),
        ),
        (Side.CRM, {"AnnualRevenue": 1250000.5}, "revenue", Decimal("1250000.5"), Decimal("1250000.5")),
        (Side.CRM, {"AnnualRevenue": "12.10"}, "revenue", Decimal("12.10"), Decimal("12.10")),
        (Side.APP, {"since": "2024-02-29"}, "since", date(2024, 2, 29), date(2024, 2, 29)),
        (Side.APP, {"score": 3}, "score", 3.0, 3.0),
        (Side.CRM, {"Upper_Name__c": "ACME"}, "upper_name", "ACME", "ACME"),
        (Side.APP, {"parent_id": "app-parent"}, "parent_id", Reference("app-parent"), Reference("001000000000001AAA")),
        (
            Side.CRM,
            {"ParentId": "001000000000001AAA"},
            "parent_id",
            Reference("app-parent"),
            Reference("001000000000001AAA"),
        ),
        (Side.APP, {"name": None}, "name", None, None),
    ],
)
def test_values_travel_in_both_sides_terms(
    side: Side, source: dict[str, Value], app_field: str, app_value: Value, crm_value: Value
) -> None:
    mapped = translate(PAIR, change(side, source), resolve=resolve, crm_fields=DESCRIBE)

    field = by_app_field(mapped.fields)[app_field]
    assert (field.app_value, field.crm_value) == (app_value, crm_value)
    assert type(field.crm_value) is type(crm_value)
    assert mapped.dropped == ()


@pytest.mark.parametrize(
    ("side", "source", "dropped"),
    [
        # As the mapping says: expected, so mapping writes no sync-log row for it.
        (Side.CRM, {"Tier__c": "Gold"}, Dropped("Tier__c", "direction is app_to_crm", as_configured=True)),
        (Side.APP, {"revenue": "10"}, Dropped("revenue", "direction is crm_to_app", as_configured=True)),
        # Formula fields flow CRM -> app only, whatever the mapping says: news to whoever mapped them.
        (Side.APP, {"upper_name": "X"}, Dropped("upper_name", "read-only in Salesforce (formula field)")),
        (Side.APP, {"owner_code": "X"}, Dropped("owner_code", "read-only in Salesforce")),
    ],
)
def test_fields_not_allowed_in_this_direction_are_dropped(
    side: Side, source: dict[str, Value], dropped: Dropped
) -> None:
    mapped = translate(PAIR, change(side, source), resolve=resolve, crm_fields=DESCRIBE)

    assert mapped.fields == ()
    assert mapped.dropped == (dropped,)


@pytest.mark.parametrize(
    ("side", "source", "code", "field"),
    [
        (Side.APP, {"name": "x" * 21}, "STRING_TOO_LONG", "Name"),
        (Side.APP, {"code": "x" * 6}, "STRING_TOO_LONG", "Code__c"),
        (Side.APP, {"tier": "platinum"}, "INVALID_PICKLIST_VALUE", "tier"),
        (Side.CRM, {"Status__c": "Dormant"}, "INVALID_PICKLIST_VALUE", "Status__c"),
        (Side.APP, {"since": "29/02/2024"}, "INVALID_VALUE", "since"),
        (Side.APP, {"score": "many"}, "INVALID_VALUE", "score"),
        (Side.APP, {"score": True}, "INVALID_VALUE", "score"),
        (Side.APP, {"score": math.inf}, "INVALID_VALUE", "score"),
        (Side.APP, {"score": "1e400"}, "INVALID_VALUE", "score"),
        # No transform: the value travels as it is, but a non-finite number has no JSON form.
        (Side.CRM, {"Owner_Code__c": math.nan}, "INVALID_VALUE", "Owner_Code__c"),
        (Side.CRM, {"Owner_Code__c": -math.inf}, "INVALID_VALUE", "Owner_Code__c"),
    ],
)
def test_invalid_values_reject_the_change_with_a_reason(
    side: Side, source: dict[str, Value], code: str, field: str
) -> None:
    with pytest.raises(RejectedChangeError) as raised:
        translate(PAIR, change(side, source), resolve=resolve, crm_fields=DESCRIBE)

    assert (raised.value.code, raised.value.field) == (code, field)


def test_a_non_finite_number_is_refused_in_a_field_without_a_transform() -> None:
    # Without describe, Owner_Code__c is writable: the value would travel as it is.
    with pytest.raises(RejectedChangeError) as raised:
        translate(PAIR, change(Side.APP, {"owner_code": math.nan}), resolve=resolve)

    assert (raised.value.code, raised.value.field) == ("INVALID_VALUE", "owner_code")


@pytest.mark.parametrize(
    ("rule", "held", "raises"),
    [("hold", ("parent_id",), False), ("omit", (), False), ("reject", (), True)],
)
def test_unresolved_references_follow_the_mapping_rule(rule: str, held: tuple[str, ...], raises: bool) -> None:
    data: dict[str, Any] = PAIR.model_dump(by_alias=True)
    for field in data["fields"]:
        if field["app"] == "parent_id":
            field["reference"]["onUnresolved"] = rule
    pair = ObjectPair.model_validate(data)
    source = change(Side.APP, {"parent_id": "not-linked-yet", "name": "Acme"})

    if raises:
        with pytest.raises(RejectedChangeError, match="no link yet"):
            translate(pair, source, resolve=resolve)
        return
    mapped = translate(pair, source, resolve=resolve)
    assert mapped.held == held
    assert [f.app_field for f in mapped.fields] == ["name"]
    assert mapped.dropped == (Dropped("parent_id", f"unresolved reference ({rule})"),)


def test_changed_flags_follow_the_change_kind() -> None:
    update = translate(
        PAIR, change(Side.CRM, {"Name": "A", "Since__c": "2024-01-01"}, changed={"Name"}), resolve=resolve
    )
    create = translate(
        PAIR, change(Side.CRM, {"Name": "A", "Since__c": "2024-01-01"}, ChangeKind.CREATE, set()), resolve=resolve
    )

    assert {f.app_field: f.changed for f in update.fields} == {"name": True, "since": False}
    assert {f.app_field: f.changed for f in create.fields} == {"name": True, "since": True}


@pytest.mark.parametrize(
    ("side", "fields", "outcome"),
    [
        (Side.APP, {"status": "active"}, FilterOutcome.MATCHES),
        (Side.APP, {"status": "suspended"}, FilterOutcome.EXCLUDED),
        # Not "passes": an update carries only what changed, so only the record's history can tell.
        (Side.APP, {"name": "no status in this change"}, FilterOutcome.UNDECIDED),
        (Side.CRM, {"Status__c": "Whatever"}, FilterOutcome.MATCHES),  # the filter only constrains the app side here
    ],
)
def test_record_filter(side: Side, fields: dict[str, Value], outcome: FilterOutcome) -> None:
    assert filter_decision(PAIR, change(side, fields)).outcome is outcome


SOQL_PAIR = PAIR.model_copy(
    update={"filter": RecordFilter(soql="Type = 'Customer' AND (AnnualRevenue > 0 OR Tier__c = 'Gold')")}
)
SOQL_TYPES = {
    "Type": CrmFieldInfo("Type", type="picklist"),
    "AnnualRevenue": CrmFieldInfo("AnnualRevenue", type="currency"),
    "Tier__c": CrmFieldInfo("Tier__c", type="picklist"),
}


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"Type": "Customer", "AnnualRevenue": 5, "Tier__c": None}, FilterOutcome.MATCHES),
        ({"Type": "customer", "AnnualRevenue": 0, "Tier__c": "Gold"}, FilterOutcome.MATCHES),
        ({"Type": "Prospect", "AnnualRevenue": 5, "Tier__c": "Gold"}, FilterOutcome.EXCLUDED),
        ({"Type": "Customer", "AnnualRevenue": None, "Tier__c": None}, FilterOutcome.EXCLUDED),
        # The leak: a change without the filter's fields never passes on its own.
        ({"Name": "Acme"}, FilterOutcome.UNDECIDED),
        ({"Type": "Customer"}, FilterOutcome.UNDECIDED),
    ],
)
def test_a_soql_filter_is_evaluated_on_what_the_change_carries(
    fields: dict[str, Value], outcome: FilterOutcome
) -> None:
    assert filter_decision(SOQL_PAIR, change(Side.CRM, fields), SOQL_TYPES).outcome is outcome
    # The app side is not what a SOQL clause is about.
    assert filter_decision(SOQL_PAIR, change(Side.APP, {"name": "x"})).outcome is FilterOutcome.MATCHES


def test_a_soql_filter_the_schema_no_longer_fits_lets_nothing_through() -> None:
    retyped = {**SOQL_TYPES, "AnnualRevenue": CrmFieldInfo("AnnualRevenue", type="string")}
    fields: dict[str, Value] = {"Type": "Customer", "AnnualRevenue": "5", "Tier__c": None}
    decision = filter_decision(SOQL_PAIR, change(Side.CRM, fields), retyped)
    assert decision.outcome is FilterOutcome.EXCLUDED
    assert "no longer fits" in decision.reason


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("", FieldType.INT, None),
        ("", FieldType.STRING, ""),
        ("42", FieldType.INT, 42),
        (Decimal("42.0"), FieldType.INT, 42),
        ("9223372036854775807", FieldType.INT, 2**63 - 1),
        (-(2**63), FieldType.INT, -(2**63)),
        ("1e18", FieldType.INT, 10**18),
        (Decimal("-9.223372036854775808E+18"), FieldType.INT, -(2**63)),
        (1e300, FieldType.DOUBLE, 1e300),
        ("0.1", FieldType.DECIMAL, Decimal("0.1")),
        ("TRUE", FieldType.BOOL, True),
        ("2026-03-01T12:00:00Z", FieldType.DATETIME, AT),
        ("2026-03-01T13:00:00+01:00", FieldType.DATETIME, AT),
        ("A; B;", FieldType.MULTIPICKLIST, ("A", "B")),
    ],
)
def test_coerce(value: Value, kind: FieldType, expected: Value) -> None:
    assert coerce(value, kind, "f") == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("4.5", FieldType.INT),
        ("2026-03-01T12:00:00", FieldType.DATETIME),
        ("NaN", FieldType.DECIMAL),
        ("yes", FieldType.BOOL),
        # Beyond int64, which every Duplex event carries ints as.
        (2**63, FieldType.INT),
        ("9223372036854775808", FieldType.INT),
        (float(2**63), FieldType.INT),
        (Decimal("-1E+19"), FieldType.INT),
        ("9" * 30, FieldType.INT),
        (Decimal("Infinity"), FieldType.INT),
        ("sNaN", FieldType.INT),
        # Not finite: no JSON body and no Salesforce field holds it.
        (math.nan, FieldType.DOUBLE),
        (-math.inf, FieldType.DOUBLE),
        ("Infinity", FieldType.DOUBLE),
        (Decimal("1E+400"), FieldType.DOUBLE),
        (10**400, FieldType.DOUBLE),
    ],
)
def test_coerce_refuses(value: Value, kind: FieldType) -> None:
    with pytest.raises(RejectedChangeError) as refused:
        coerce(value, kind, "f")
    assert refused.value.code == "INVALID_VALUE"


@pytest.mark.parametrize("value", ["1e40000000", Decimal("-1E+40000000"), "1e-40000000"])
def test_an_int_with_a_huge_exponent_is_refused_without_expanding_it(value: Value) -> None:
    started = time.process_time()
    with pytest.raises(RejectedChangeError):
        coerce(value, FieldType.INT, "f")
    assert time.process_time() - started < 0.5


def test_the_salesforce_id_can_be_mapped_although_change_events_carry_it_only_in_their_header() -> None:
    pair = PAIR.model_copy(
        update={"fields": (*PAIR.fields, FieldMapping.model_validate({"app": "sf_id", "salesforce": "Id"}))}
    )
    created = translate(pair, change(Side.CRM, {"Name": "Acme"}, kind=ChangeKind.CREATE), resolve=resolve)
    updated = translate(pair, change(Side.CRM, {"Name": "Acme 2"}), resolve=resolve)

    assert by_app_field(created.fields)["sf_id"] == MappedField("sf_id", "Id", "r1", "r1", changed=True)
    # Present on every change, but changed only on the ones carrying the full record.
    assert by_app_field(updated.fields)["sf_id"].changed is False
    assert "sf_id" not in by_app_field(translate(pair, change(Side.APP, {"name": "A"}), resolve=resolve).fields)


def test_a_rule_whose_salesforce_field_is_gone_from_describe_is_skipped_both_ways() -> None:
    without_tier = {name: info for name, info in DESCRIBE.items() if name != "Tier__c"}
    mapped = translate(
        PAIR, change(Side.APP, {"name": "Acme", "tier": "gold"}), resolve=resolve, crm_fields=without_tier
    )
    assert [f.crm_field for f in mapped.fields] == ["Name"]
    assert mapped.dropped == (Dropped("tier", "Tier__c no longer exists in Salesforce: rule paused"),)
    # Before any describe, nothing is known to be gone.
    unknown = translate(PAIR, change(Side.APP, {"tier": "gold"}), resolve=resolve, crm_fields={})
    assert [f.crm_field for f in unknown.fields] == ["Tier__c"]


def test_a_soql_filter_may_name_the_record_id_which_events_carry_in_their_header() -> None:
    by_id = PAIR.model_copy(update={"filter": RecordFilter(soql="Id != '001000000000001AAA'")})
    types = {"Id": CrmFieldInfo("Id", type="id")}
    kept = change(Side.CRM, {"Name": "A"})
    assert filter_decision(by_id, kept, types).outcome is FilterOutcome.MATCHES
    excluded = Change("e2", "acme", Side.CRM, "Account", "001000000000001AAA", ChangeKind.UPDATE, {"Name": "B"}, AT)
    assert filter_decision(by_id, excluded, types).outcome is FilterOutcome.EXCLUDED


TYPED = PAIR.model_copy(
    update={
        "filter": None,
        "fields": (
            *PAIR.fields,
            FieldMapping.model_validate(
                {
                    "app": "kind",
                    "salesforce": "Type",
                    "direction": "crm_to_app",
                    "classify": [
                        {"soql": "Type = 'Customer - Direct' AND AnnualRevenue > 0", "value": "customer"},
                        {"soql": "Type LIKE 'Customer%'", "value": "prospect"},
                        {"soql": "Type = 'Partner'", "value": "partner"},
                    ],
                }
            ),
        ),
    }
)
TYPED_DESCRIBE = {
    **DESCRIBE,
    "Type": CrmFieldInfo("Type", type="picklist"),
    "AnnualRevenue": CrmFieldInfo("AnnualRevenue", type="currency"),
}


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"Type": "Customer - Direct", "AnnualRevenue": 10}, "customer"),
        ({"Type": "Customer - Direct", "AnnualRevenue": 0}, "prospect"),
        ({"Type": "Partner", "AnnualRevenue": None}, "partner"),
    ],
)
def test_typed_filters_write_the_first_match_into_the_app_field(fields: dict[str, Value], kind: str) -> None:
    update = change(Side.CRM, fields, changed={"Type"})
    assert filter_decision(TYPED, update, TYPED_DESCRIBE).outcome is FilterOutcome.MATCHES
    mapped = translate(TYPED, update, resolve=resolve, crm_fields=TYPED_DESCRIBE)
    (typed,) = [f for f in mapped.fields if f.app_field == "kind"]
    assert (typed.app_value, typed.crm_value, typed.changed) == (kind, fields["Type"], True)


def test_a_record_matching_no_typed_filter_is_not_synced_and_an_unknown_one_is_undecided() -> None:
    other = change(Side.CRM, {"Type": "Other", "AnnualRevenue": 5})
    decision = filter_decision(TYPED, other, TYPED_DESCRIBE)
    assert (decision.outcome, decision.reason) == (FilterOutcome.EXCLUDED, "matches none of kind's typed filters")
    # The first filter reads AnnualRevenue: without it, which one matches first cannot be told.
    assert (
        filter_decision(TYPED, change(Side.CRM, {"Type": "Partner"}), TYPED_DESCRIBE).outcome is FilterOutcome.UNDECIDED
    )
    # Only AnnualRevenue changed: the value is sent again, not as a change of Type.
    revenue = change(Side.CRM, {"Type": "Partner", "AnnualRevenue": 3}, changed={"AnnualRevenue"})
    (typed,) = [
        f for f in translate(TYPED, revenue, resolve=resolve, crm_fields=TYPED_DESCRIBE).fields if f.app_field == "kind"
    ]
    assert (typed.app_value, typed.changed) == ("partner", True)


# --- numbers beyond a Salesforce field's precision ----------------------------------------------------

NUMBERS = ObjectPair.model_validate(
    {
        "name": "deals",
        "app": {"object": "deals"},
        "salesforce": {"object": "Opportunity", "externalIdField": "Duplex_Id__c"},
        "fields": [
            {"app": "amount", "salesforce": "Amount", "transform": {"type": "decimal"}},
            {"app": "probability", "salesforce": "Probability", "transform": {"type": "double"}},
            {"app": "employees", "salesforce": "Employees__c", "transform": {"type": "int"}},
            # No transform: the app's value travels as it is, numeric text included.
            {"app": "raw", "salesforce": "Raw__c"},
            {"app": "free", "salesforce": "Free__c", "transform": {"type": "double"}},
            {"app": "rate", "salesforce": "Rate__c", "transform": {"type": "double"}},
        ],
    }
)
# As Salesforce describes them: Opportunity's Amount and Probability, and an int with 8 digits.
NUMBER_DESCRIBE = {
    "Amount": CrmFieldInfo("Amount", type="currency", precision=16, scale=2),
    "Probability": CrmFieldInfo("Probability", type="percent", precision=3, scale=0),
    "Employees__c": CrmFieldInfo("Employees__c", type="int", digits=8),
    "Raw__c": CrmFieldInfo("Raw__c", type="currency", precision=18, scale=0),
    # A describe without precision (an older summary): no digits check.
    "Free__c": CrmFieldInfo("Free__c", type="double"),
    "Rate__c": CrmFieldInfo("Rate__c", type="double", precision=3, scale=2),
}


@pytest.mark.parametrize(
    ("info", "digits"),
    [
        (CrmFieldInfo("A", type="currency", precision=16, scale=2), 14),
        (CrmFieldInfo("A", type="double", precision=18, scale=15), 3),
        (CrmFieldInfo("A", type="percent", precision=3), 3),
        # An int's bound is its digits; precision is 0 in its describe.
        (CrmFieldInfo("A", type="int", digits=8), 8),
        (CrmFieldInfo("A", type="double"), 0),
        (CrmFieldInfo("A", type="string", length=80, precision=18), 0),
    ],
)
def test_integer_digits_come_from_precision_and_scale_or_digits(info: CrmFieldInfo, digits: int) -> None:
    assert info.integer_digits == digits


@pytest.mark.parametrize(
    ("app_field", "value", "crm_value"),
    [
        # Rounded to the scale, half away from zero, as Salesforce stores them (the resolver then
        # recognises its own write when Salesforce reports it back), the synced value of both forms.
        ("amount", Decimal("2.345"), Decimal("2.35")),
        ("amount", Decimal("-2.345"), Decimal("-2.35")),
        ("amount", Decimal("99999999999999.99"), Decimal("99999999999999.99")),
        ("amount", Decimal("-99999999999999.994"), Decimal("-99999999999999.99")),
        ("amount", Decimal("1E-400"), Decimal("0.00")),
        ("amount", Decimal("7"), Decimal("7")),
        ("probability", 999.4, 999.0),
        ("probability", 2.5, 3.0),
        ("probability", -999.0, -999.0),
        ("employees", 99_999_999, 99_999_999),
        ("employees", -99_999_999, -99_999_999),
        ("raw", 1e17, 1e17),
        ("raw", "999999999999999999", "999999999999999999"),
        ("raw", "not a number", "not a number"),
        # No precision in the describe: nothing known to round to.
        ("free", 1e300, 1e300),
        ("free", 2.345, 2.345),
        ("rate", 9.994, 9.99),
        ("rate", 1.005, 1.01),
    ],
)
def test_numbers_within_the_fields_integer_digits_travel_rounded_to_the_scale(
    app_field: str, value: Value, crm_value: Value
) -> None:
    mapped = translate(NUMBERS, change(Side.APP, {app_field: value}), resolve=resolve, crm_fields=NUMBER_DESCRIBE)

    (field,) = mapped.fields
    assert field.crm_value == crm_value
    assert type(field.crm_value) is type(crm_value)
    assert field.app_value == crm_value


@pytest.mark.parametrize(
    ("app_field", "value", "message"),
    [
        ("amount", Decimal("100000000000000"), "15 integer digits, at most 14 allowed"),
        ("amount", Decimal("-100000000000000.00"), "15 integer digits, at most 14 allowed"),
        # Salesforce rounds half away from zero before it checks: this is 100000000000000.00 there.
        ("amount", Decimal("99999999999999.995"), "15 integer digits, at most 14 allowed"),
        ("amount", Decimal("-99999999999999.995"), "15 integer digits, at most 14 allowed"),
        ("amount", Decimal("1E+400"), "401 integer digits, at most 14 allowed"),
        ("probability", 999.5, "4 integer digits, at most 3 allowed"),
        ("probability", 1000.0, "4 integer digits, at most 3 allowed"),
        ("employees", 100_000_000, "9 integer digits, at most 8 allowed"),
        ("employees", -123_456_789, "9 integer digits, at most 8 allowed"),
        ("raw", 1e19, "20 integer digits, at most 18 allowed"),
        ("raw", " 1e18 ", "19 integer digits, at most 18 allowed"),
        ("raw", 10**18, "19 integer digits, at most 18 allowed"),
        # The double nearest 9.995 is just below it; Salesforce rounds what was typed (its repr).
        ("rate", 9.995, "2 integer digits, at most 1 allowed"),
    ],
)
def test_numbers_beyond_the_fields_integer_digits_reject_the_change(app_field: str, value: Value, message: str) -> None:
    with pytest.raises(RejectedChangeError) as raised:
        translate(NUMBERS, change(Side.APP, {app_field: value}), resolve=resolve, crm_fields=NUMBER_DESCRIBE)

    crm_field = NUMBERS.fields[[f.app for f in NUMBERS.fields].index(app_field)].salesforce
    assert (raised.value.code, raised.value.field) == ("NUMBER_OUTSIDE_VALID_RANGE", crm_field)
    assert str(raised.value) == f"{crm_field}: {message}"


def test_without_a_describe_numbers_are_not_checked() -> None:
    mapped = translate(NUMBERS, change(Side.APP, {"amount": Decimal("1E+20")}), resolve=resolve)

    assert [f.crm_value for f in mapped.fields] == [Decimal("1E+20")]


def test_a_huge_exponent_is_refused_without_expanding_it() -> None:
    started = time.process_time()
    with pytest.raises(RejectedChangeError) as raised:
        translate(NUMBERS, change(Side.APP, {"amount": "1e40000000"}), resolve=resolve, crm_fields=NUMBER_DESCRIBE)
    assert raised.value.code == "NUMBER_OUTSIDE_VALID_RANGE"
    assert time.process_time() - started < 0.5
