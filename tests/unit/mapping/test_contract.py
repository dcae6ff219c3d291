"""Mapping's protobuf edge: RecordChanged read into changes, mapped changes written as ChangeMapped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.change import Change, ChangeKind, Side
from services.common.codec import link_key
from services.common.contract import KIND_TO_PB, SIDE_TO_PB, to_proto, to_value
from services.common.values import Reference
from services.mapping.contract import changes_of, keyed
from services.mapping.events import MappedEvent, Unreadable
from services.mapping.links import Link
from services.mapping.translate import Dropped, MappedField

pytestmark = pytest.mark.unit

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_an_event_that_breaks_the_contract_is_read_as_unreadable_in_its_place() -> None:
    good = Change("e1", "acme", Side.APP, "partners", "a1", ChangeKind.UPDATE, {"name": "Acme"}, AT)
    broken = to_proto(Change("e2", "acme", Side.CRM, "Account", "001A", ChangeKind.UPDATE, {}, AT))
    broken.ClearField("origin_commit_time")

    assert changes_of([broken, to_proto(good)]) == [
        Unreadable("e2", "acme", "001A", "missing origin_commit_time"),
        good,
    ]


def test_a_mapped_change_is_published_on_its_link_with_both_sides_values() -> None:
    link = Link("acme", "partners", "L1", "a1", None, "dx-L1")
    event = MappedEvent(
        event_id="m1",
        link=link,
        mapping_version=3,
        side=Side.APP,
        kind=ChangeKind.CREATE,
        at=AT,
        origin_client="erp",
        source_event_id="e1",
        fields=(MappedField("parent", "ParentId", Reference("a0"), Reference("001Z"), changed=True),),
        dropped=(Dropped("tier", "direction is crm_to_app", as_configured=True),),
    )

    ((message, key),) = keyed([event])

    assert key == link_key("acme", "L1")
    assert (message.event_id, message.tenant_id, message.link_id, message.object_pair) == (
        "m1",
        "acme",
        "L1",
        "partners",
    )
    assert (message.app_record_id, message.crm_record_id, message.external_id) == ("a1", "", "dx-L1")
    assert (message.mapping_version, message.origin_side, message.kind) == (
        3,
        SIDE_TO_PB[Side.APP],
        KIND_TO_PB[ChangeKind.CREATE],
    )
    assert (message.origin_client, message.source_event_id) == ("erp", "e1")
    assert message.origin_commit_time.ToDatetime(tzinfo=UTC) == AT
    (field,) = message.fields
    assert (field.app_field, field.crm_field, field.changed) == ("parent", "ParentId", True)
    assert (to_value(field.app_value), to_value(field.crm_value)) == (Reference("a0"), Reference("001Z"))
    assert [(d.field, d.reason) for d in message.dropped_fields] == [("tier", "direction is crm_to_app")]
