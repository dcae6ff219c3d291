"""Mapping suggestions over plain schemas: what counts as evidence, what is never a candidate, how
automatic mappings share out Salesforce fields; and the labelled set's figures against their targets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.suggestions import AUTO_PRECISION_TARGET, TOP3_RECALL_TARGET, Labelled, evaluate, load
from services.admin import suggestions
from services.admin.suggestions import MAX_CANDIDATES, Suggestion, Tier, suggest
from services.common.schema import AppField, AppObject, CrmField, CrmObject, PicklistValue
from services.common.tenant_config import FieldType

pytestmark = pytest.mark.unit

LABELLED = load()


def app(*fields: AppField) -> AppObject:
    return AppObject("things", fields)


def sf(name: str, label: str, type: str = "string", **options: Any) -> CrmField:
    return CrmField(name, label, type, **options)


def crm(*fields: CrmField, name: str = "Lead", label: str = "Lead") -> CrmObject:
    return CrmObject(name, label, fields=fields)


def picklist(*values: str | tuple[str, str]) -> tuple[PicklistValue, ...]:
    return tuple(PicklistValue(*v) if isinstance(v, tuple) else PicklistValue(v, v) for v in values)


def one(result: list[Suggestion]) -> Suggestion:
    assert len(result) == 1
    return result[0]


def names(suggestion: Suggestion) -> list[str]:
    return [c.salesforce for c in suggestion.candidates]


LEAD = crm(
    sf("PostalCode", "Zip/Postal Code"),
    sf("City", "City"),
    sf("Company", "Company"),
    sf("Phone", "Phone", "phone"),
    sf("MobilePhone", "Mobile Phone", "phone"),
    sf("Email", "Email", "email"),
    sf("Website", "Website", "url"),
    sf("NumberOfEmployees", "Employees", "int"),
    sf("Rating", "Rating", "picklist", picklist=picklist("Hot", "Warm", "Cold")),
)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (AppField("zip"), "PostalCode"),
        (AppField("postcode"), "PostalCode"),
        (AppField("cell"), "MobilePhone"),
        (AppField("homepage"), "Website"),
        (AppField("headcount", type=FieldType.INT), "NumberOfEmployees"),
        (AppField("company_name"), "Company"),
        (AppField("e_mail_address"), "Email"),
    ],
)
def test_synonyms_map_everyday_names_to_salesforce_fields(field: AppField, expected: str) -> None:
    suggestion = one(suggest(app(field), LEAD))

    assert suggestion.tier is Tier.AUTO
    assert suggestion.candidates[0].salesforce == expected
    assert any(r.startswith("synonym ") for r in suggestion.candidates[0].reasons)


def test_the_reason_names_the_synonym() -> None:
    best = one(suggest(app(AppField("zip")), LEAD)).candidates[0]

    assert best.reasons == ("synonym zip ~ PostalCode", "types compatible")


def test_names_match_across_case_camel_case_the_custom_suffix_and_a_namespace() -> None:
    target = crm(sf("acme__Renewal_Date__c", "Renewal", "date"), sf("CloseDate", "Close Date", "date"))

    best = one(suggest(app(AppField("renewalDate", type=FieldType.DATE)), target)).candidates[0]

    assert (best.salesforce, best.confidence) == ("acme__Renewal_Date__c", 1.0)
    assert "name matches" in best.reasons


def test_an_objects_name_field_answers_to_its_label_plus_name() -> None:
    account = crm(sf("Name", "Account Name"), sf("Site", "Account Site"), name="Account", label="Account")
    opportunity = crm(sf("Name", "Name"), sf("NextStep", "Next Step"), name="Opportunity", label="Opportunity")

    assert names(one(suggest(app(AppField("company")), account)))[:1] == ["Name"]
    assert names(one(suggest(app(AppField("deal_name")), opportunity)))[:1] == ["Name"]
    assert names(one(suggest(app(AppField("company")), LEAD)))[:1] == ["Company"]


@pytest.mark.parametrize(
    ("app_type", "crm_type"),
    [
        (FieldType.BOOL, "string"),
        (FieldType.DATE, "email"),
        (FieldType.STRING, "int"),
        (FieldType.STRING, "reference"),
        (FieldType.INT, "boolean"),
        (FieldType.REFERENCE, "string"),
        (FieldType.DATETIME, "double"),
        (FieldType.PICKLIST, "currency"),
    ],
)
def test_a_type_that_cannot_carry_the_value_excludes_the_field(app_type: FieldType, crm_type: str) -> None:
    suggestion = one(suggest(app(AppField("email", type=app_type)), crm(sf("Email", "Email", crm_type))))

    assert (suggestion.tier, suggestion.candidates) == (Tier.UNMAPPED, ())


def test_a_loosely_compatible_type_is_suggested_but_never_automatic() -> None:
    target = crm(sf("Trial_End__c", "Trial End", "date"))

    suggestion = one(suggest(app(AppField("trial_end", type=FieldType.DATETIME)), target))

    assert suggestion.tier is Tier.SUGGESTED
    assert "types loosely compatible (datetime → date)" in suggestion.candidates[0].reasons


def test_picklist_overlap_raises_confidence_and_counts_labels() -> None:
    field = AppField("tier", type=FieldType.PICKLIST, picklist=("gold", "silver", "bronze"))

    def confidence(values: tuple[PicklistValue, ...]) -> float:
        target = crm(sf("Customer_Tier__c", "Customer Tier", "picklist", picklist=values))
        return one(suggest(app(field), target)).candidates[0].confidence

    by_label = confidence(picklist(("T1", "Gold"), ("T2", "Silver"), ("T3", "Bronze")))
    by_value = confidence(picklist("Gold", "Silver", "Bronze"))
    partly = confidence(picklist("Gold", "Platinum"))
    disjoint = confidence(picklist("Basic", "Pro"))

    assert by_label == by_value > partly > disjoint


def test_picklist_values_alone_suggest_a_field_of_another_name() -> None:
    field = AppField("temperature", type=FieldType.PICKLIST, picklist=("hot", "warm", "cold"))

    suggestion = one(suggest(app(field), LEAD))

    assert (suggestion.tier, names(suggestion)) == (Tier.SUGGESTED, ["Rating"])
    assert "picklist values overlap 3/3" in suggestion.candidates[0].reasons


def test_auto_needs_a_clear_margin_over_the_runner_up() -> None:
    target = crm(sf("Phone__c", "Phone"), sf("acme__Phone__c", "Phone"))

    suggestion = one(suggest(app(AppField("phone")), target))

    # Equally good: SUGGESTED, ties broken by name.
    assert suggestion.tier is Tier.SUGGESTED
    assert names(suggestion) == ["Phone__c", "acme__Phone__c"]


def test_no_salesforce_field_is_claimed_automatically_twice() -> None:
    fields = (AppField("phone"), AppField("main_phone"), AppField("mobile"))

    result = suggest(app(*fields), LEAD)

    phone, main_phone, mobile = result
    assert (phone.tier, names(phone)[:1]) == (Tier.AUTO, ["Phone"])
    # The loser does not offer the claimed field again; what it has left is not a confident match.
    assert main_phone.tier is not Tier.AUTO
    assert "Phone" not in names(main_phone)
    assert (mobile.tier, names(mobile)[:1]) == (Tier.AUTO, ["MobilePhone"])


def test_the_more_confident_claim_wins_whatever_the_app_order() -> None:
    target = crm(sf("BillingCity", "Billing City"), sf("ShippingCity", "Shipping City"))

    city, billing_city = suggest(app(AppField("city"), AppField("billing_city")), target)

    assert (billing_city.tier, names(billing_city)[:1]) == (Tier.AUTO, ["BillingCity"])
    assert names(city) == ["ShippingCity"]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_automatic_mappings_never_share_a_salesforce_field(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(LABELLED))
    picked = data.draw(st.lists(st.sampled_from(case.app.fields), min_size=1, max_size=12))
    # Copies under new names compete for the same Salesforce fields as their originals.
    fields = tuple(AppField(f"{f.name}_{i}", f.label, f.type, f.required, f.picklist) for i, f in enumerate(picked))

    result = suggest(AppObject(case.app.name, fields), case.crm)

    claimed = Counter(s.candidates[0].salesforce for s in result if s.tier is Tier.AUTO)
    assert all(count == 1 for count in claimed.values()), claimed


def test_taken_fields_are_not_candidates_whatever_their_case() -> None:
    suggestion = one(suggest(app(AppField("phone")), LEAD, taken={"phone", "MobilePhone"}))

    assert not {"Phone", "MobilePhone"} & set(names(suggestion))


def test_read_only_and_system_fields_are_not_candidates() -> None:
    target = crm(
        sf("Health_Score__c", "Health Score", "double", calculated=True),
        sf("IsConverted", "Converted", "boolean", createable=False, updateable=False),
        # Listed as system whatever describe says of it.
        sf("CreatedDate", "Created Date", "datetime"),
        sf("LastActivityDate", "Last Activity", "date"),
    )
    fields = (
        AppField("health_score", type=FieldType.DOUBLE),
        AppField("converted", type=FieldType.BOOL),
        AppField("created_date", type=FieldType.DATETIME),
        AppField("last_activity_date", type=FieldType.DATE),
    )

    assert [(s.tier, s.candidates) for s in suggest(app(*fields), target)] == [(Tier.UNMAPPED, ())] * 4


@pytest.mark.parametrize(
    ("field", "candidate"),
    [(AppField("stripe_ref", "Stripe ID"), False), (AppField("stripe_id"), True), (AppField("ext_stripe_id"), True)],
)
def test_an_external_id_is_a_candidate_only_when_the_app_field_says_so(field: AppField, candidate: bool) -> None:
    target = crm(sf("Stripe_Id__c", "Stripe ID", external_id=True, unique=True))

    assert names(one(suggest(app(field), target))) == (["Stripe_Id__c"] if candidate else [])


def test_fields_with_no_counterpart_stay_unmapped() -> None:
    fields = (AppField("favourite_color"), AppField("internal_score", type=FieldType.INT))

    assert [s.tier for s in suggest(app(*fields), LEAD)] == [Tier.UNMAPPED, Tier.UNMAPPED]


def test_one_suggestion_per_field_in_app_order_with_at_most_three_rounded_candidates() -> None:
    case = LABELLED[0]

    result = suggest(case.app, case.crm)

    assert [s.app for s in result] == [f.name for f in case.app.fields]
    for s in result:
        assert len(s.candidates) <= MAX_CANDIDATES
        assert [c.confidence for c in s.candidates] == sorted((c.confidence for c in s.candidates), reverse=True)
        assert all(0 <= c.confidence <= 1 and round(c.confidence, 2) == c.confidence for c in s.candidates)


def test_suggestions_are_deterministic_whatever_the_salesforce_field_order() -> None:
    for case in LABELLED:
        reordered = CrmObject(case.crm.name, case.crm.label, case.crm.custom, tuple(reversed(case.crm.fields)))

        assert suggest(case.app, case.crm) == suggest(case.app, case.crm) == suggest(case.app, reordered)


def test_evaluate_counts_autos_recall_and_fields_labelled_none() -> None:
    target = crm(sf("PostalCode", "Zip/Postal Code"), sf("City", "City"), sf("Country", "Country"))
    labelled = Labelled(
        app(AppField("zip"), AppField("town"), AppField("favourite_color"), AppField("country_code")),
        target,
        {"zip": "PostalCode", "town": "PostalCode", "favourite_color": None, "country_code": None},
    )

    overall = evaluate([labelled]).overall

    # zip: right auto; town: the city, mislabelled on purpose; country_code: suggested, labelled none.
    assert (overall.autos, overall.correct_autos, overall.auto_precision) == (2, 1, 0.5)
    assert (overall.answerable, overall.top1, overall.top3) == (2, 1, 1)
    assert (overall.nulls, overall.nulls_unmapped, overall.nulls_not_auto) == (2, 1, 2)


def test_the_labelled_set_meets_its_targets() -> None:
    figures = evaluate(LABELLED)

    assert figures.overall.fields >= 60
    assert figures.overall.auto_precision >= AUTO_PRECISION_TARGET, figures.misses
    assert figures.overall.top3_recall >= TOP3_RECALL_TARGET, figures.misses


def test_the_labelled_set_misses_its_targets_without_the_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test above can fail: names alone do not find the fields apps call by other names.
    monkeypatch.setattr(suggestions, "_PHRASES", {})

    assert evaluate(LABELLED).overall.top3_recall < TOP3_RECALL_TARGET
