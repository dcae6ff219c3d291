"""Which rejected records a retry asks the app for, and the resend request it sends (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from duplex.change.v1 import record_changed_pb2 as rc

from services.admin.retries import Rejection, messages, nothing_to_retry, resend_requests, select, skip_reason
from services.common.tenant_config import ObjectPair

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def pair(name: str, app_object: str) -> ObjectPair:
    return ObjectPair.model_validate(
        {
            "name": name,
            "app": {"object": app_object},
            "salesforce": {"object": "Contact", "externalIdField": "Duplex_Id__c"},
            "fields": [{"app": "last_name", "salesforce": "LastName"}],
        }
    )


PAIRS = {"contacts": pair("contacts", "people"), "leads": pair("leads", "people")}


def rejected(
    link: str,
    *,
    version: int = 2,
    applied: int | None = None,
    app_id: str | None = None,
    pair_name: str = "contacts",
    minutes: int = 0,
    merged_into: str | None = None,
) -> Rejection:
    return Rejection(
        link_id=link,
        pair=pair_name,
        app_record_id=app_id if app_id is not None else f"app-{link}",
        crm_record_id=None,
        version=version,
        at=T0 + timedelta(minutes=minutes),
        code="REQUIRED_FIELD_MISSING",
        applied_version=applied,
        merged_into=merged_into,
    )


@pytest.mark.parametrize(
    ("version", "applied", "still"),
    [(1, None, True), (3, 2, True), (2, 3, False), (2, 2, False)],
    ids=["never-written", "rejected-after-success", "succeeded-since", "same-version-applied"],
)
def test_a_link_is_still_rejected_only_while_no_later_write_succeeded(
    version: int, applied: int | None, still: bool
) -> None:
    assert rejected("l1", version=version, applied=applied).still_rejected is still


def test_select_asks_for_still_rejected_records_oldest_first_and_leaves_the_others_out() -> None:
    chosen = select(
        [
            rejected("late", minutes=5),
            rejected("synced-since", version=2, applied=4),
            rejected("early", minutes=1),
        ],
        PAIRS,
    )
    assert [r.link_id for r in chosen.resend] == ["early", "late"]
    assert chosen.skipped == ()


def test_records_the_app_cannot_resend_are_skipped_with_a_reason() -> None:
    crm_only = rejected("from-salesforce", app_id="")
    gone = rejected("old-pair", pair_name="accounts")
    merged = rejected("merged", merged_into="winner")
    chosen = select([crm_only, gone, merged], PAIRS)

    assert chosen.resend == ()
    reasons = {s.rejection.link_id: s.reason for s in chosen.skipped}
    assert "the app has no record of it yet" in reasons["from-salesforce"]
    assert "'accounts' is no longer in the tenant's configuration" in reasons["old-pair"]
    assert "merged into the record of link winner" in reasons["merged"]
    assert skip_reason(rejected("fine"), PAIRS) is None


def test_an_app_record_rejected_in_two_pairs_is_asked_for_once() -> None:
    # Two pairs share the app object "people": one snapshot of the record serves both links.
    chosen = select(
        [rejected("in-contacts", app_id="p-1"), rejected("in-leads", app_id="p-1", pair_name="leads", minutes=1)],
        PAIRS,
    )
    assert [r.link_id for r in chosen.resend] == ["in-contacts"]


def test_each_request_has_a_new_event_id_and_names_the_app_object() -> None:
    ids = iter(["e1", "e2"])
    requests = resend_requests([rejected("a"), rejected("b")], PAIRS, new_id=lambda: next(ids))
    assert [(r.event_id, r.app_object, r.record_id) for r in requests] == [
        ("e1", "people", "app-a"),
        ("e2", "people", "app-b"),
    ]


def test_why_a_named_record_has_nothing_to_retry() -> None:
    assert nothing_to_retry("acme", "c-1", [], None) == (
        "tenant 'acme' has no write of record 'c-1' that Salesforce rejected"
    )
    assert "since 2026-12-07T09:00:00+00:00" in nothing_to_retry("acme", "c-1", [], T0)
    succeeded = [rejected("l1", version=2, applied=5)]
    assert nothing_to_retry("acme", "c-1", succeeded, None) == (
        "record 'c-1' has nothing to retry: its latest write to Salesforce succeeded"
    )


def test_the_resend_request_names_the_record_and_carries_no_echo_tag() -> None:
    [request] = resend_requests([rejected("l1", app_id="p-1")], PAIRS, new_id=lambda: "e1")
    [(key, value)] = messages("acme", [request], T0)
    message = rc.RecordChanged.FromString(value)

    assert key == b"acme/people/p-1"  # as every app-update: the record's updates stay in order
    assert (message.kind, message.object_type, message.record_id, message.external_id) == (
        rc.CHANGE_KIND_RESEND,
        "people",
        "p-1",
        "l1",
    )
    assert (message.event_id, message.tenant_id, message.origin_side) == ("e1", "acme", rc.SIDE_CRM)
    # An app copying an update's tag into its answer must not make it look like Duplex's own write.
    assert message.origin_client == ""
    assert not message.fields
    assert message.origin_commit_time.ToDatetime(tzinfo=UTC) == T0
