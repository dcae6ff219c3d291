"""A reconcile's comparison: values as text both sides agree on, record digests, window sums, and
which records differ."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.cdc_ingest.jobs import next_reconcile
from services.cdc_ingest.reconcile import canonical, compared_fields, differing, record_digest, window_sum
from services.cdc_ingest.typed import FieldInfo
from services.cdc_ingest.worker import poll_intervals
from services.common.pair_filters import meets
from services.common.tenant_config import ObjectPair
from services.common.tenant_config.model import FilterCondition
from services.common.values import Reference
from tests.fixtures.documents import tenant_config

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (None, ""),
        (None, ()),
        (Decimal("12.50"), Decimal("12.5")),
        (5, Decimal("5.0")),
        (5.0, 5),
        ("5", Decimal("5")),  # a transform keeping a number as text
        (True, "true"),
        (Reference("001000000000001AAA"), "001000000000001AAA"),
        (datetime(2026, 12, 7, 10, 0, tzinfo=UTC), datetime(2026, 12, 7, 11, 0, tzinfo=timezone(timedelta(hours=1)))),
        (("a", "b"), "a;b"),
        (("b", "a"), ("a", "b")),  # Salesforce keeps picklist order, the app its own
    ],
)
def test_values_equal_for_both_sides_compare_equal(a: object, b: object) -> None:
    assert canonical(a) == canonical(b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("x", "y"),
        (None, "0"),
        (Decimal("12.5"), Decimal("12.51")),
        (date(2026, 12, 7), date(2026, 12, 8)),
        (datetime(2026, 12, 7, 10, 0, tzinfo=UTC), datetime(2026, 12, 7, 10, 0, 0, 1000, tzinfo=UTC)),
        (False, None),
    ],
)
def test_different_values_compare_different(a: object, b: object) -> None:
    assert canonical(a) != canonical(b)  # type: ignore[arg-type]


def test_a_record_digest_depends_on_every_value_and_not_on_field_order() -> None:
    one = record_digest({"Name": "Acme", "Phone": "1"})
    assert one == record_digest({"Phone": "1", "Name": "Acme"})
    assert one != record_digest({"Name": "Acme", "Phone": "2"})
    # A value cannot pass for a field boundary.
    assert record_digest({"a": "b\x1fc"}) != record_digest({"a": "b", "c": ""})


def test_a_window_sum_counts_and_sums_whatever_the_order() -> None:
    salesforce = {"001000000000001AAA": "d1", "001000000000002AAA": "d2"}
    duplex = {"001000000000002AAA": "d2", "001000000000001AAA": "d1"}
    assert window_sum(salesforce) == window_sum(duplex)
    assert window_sum(salesforce).count == 2
    assert window_sum(salesforce) != window_sum({**salesforce, "001000000000002AAA": "other"})
    assert window_sum(salesforce) != window_sum({"001000000000001AAA": "d1"})


def test_differing_names_records_duplex_lacks_and_those_it_holds_otherwise() -> None:
    missing, changed = differing({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "other", "z": "9"})
    assert (missing, changed) == (["c"], ["b"])


def _pair() -> ObjectPair:
    document = tenant_config(
        [
            {
                "name": "partners",
                "app": {"object": "partners"},
                "salesforce": {"object": "Account", "externalIdField": "Duplex_Id__c"},
                "fields": [
                    {"app": "name", "salesforce": "name"},
                    {"app": "phone", "salesforce": "Phone", "direction": "app_to_crm"},
                    {"app": "site", "salesforce": "Website", "direction": "crm_to_app"},
                    {"app": "gone", "salesforce": "Deleted__c"},
                ],
            }
        ]
    )
    return document.spec.objects[0]


def test_compared_are_the_fields_salesforce_sends_to_the_app_that_the_object_still_has() -> None:
    described = {n: FieldInfo(n, "string") for n in ("Id", "Name", "Phone", "Website")}
    assert compared_fields(_pair(), described) == {"Name": "name", "Website": "site"}


def test_a_scheduled_reconcile_is_due_an_interval_after_the_last_or_after_the_objects_backfill() -> None:
    backfilled = datetime(2026, 12, 7, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert next_reconcile(None, backfilled, hour) == backfilled + hour
    last = backfilled + timedelta(hours=5)
    assert next_reconcile(last, backfilled, hour) == last + hour


def test_each_object_polls_at_its_pairs_shortest_interval() -> None:
    def pair(name: str, obj: str, seconds: int | None) -> dict[str, object]:
        return {
            "name": name,
            "app": {"object": name},
            "salesforce": {"object": obj, "externalIdField": "Duplex_Id__c"},
            "fields": [{"app": "name", "salesforce": "Name"}],
            **({"schedule": {"pollIntervalSeconds": seconds, "reconcile": "daily"}} if seconds else {}),
        }

    config = tenant_config([pair("a", "Account", 600), pair("b", "Account", 60), pair("c", "Contact", None)])
    assert poll_intervals(config) == {"Account": 60}
    assert config.spec.objects[0].reconcile_every_seconds == 86_400
    assert config.spec.objects[2].reconcile_every_seconds is None


def test_records_outside_the_structured_salesforce_conditions_are_not_compared() -> None:
    conditions = (
        FilterCondition(field="Type", equals="Partner"),
        FilterCondition.model_validate({"field": "Rating", "in": ["Hot", "Warm"]}),
        FilterCondition(field="Website", not_null=True),
    )
    partner = {"type": "Partner", "RATING": "Hot", "Website": "https://a.example"}
    assert meets(conditions, partner)
    assert not meets(conditions, {**partner, "Type": "Customer"})
    assert not meets(conditions, {**partner, "RATING": "Cold"})
    assert not meets(conditions, {**partner, "Website": ""})
    assert not meets(conditions, {"Type": "Partner", "Rating": "Hot"})  # a field the record lacks
    assert meets((), {})
