"""Mapping's protobuf edge: RecordChanged in, ChangeMapped out (keyed by tenant and link)."""

from __future__ import annotations

from collections.abc import Sequence

from duplex.mapping.v1 import change_mapped_pb2

from services.common.change import Change, InvalidChangeError, Side
from services.common.codec import link_key
from services.common.contract import KIND_TO_PB, SIDE_TO_PB, RecordChanged, from_proto, to_field_value
from services.mapping.events import MappedEvent, Unreadable
from services.mapping.intake import refusal

ChangeMapped = change_mapped_pb2.ChangeMapped


def changes_of(
    events: Sequence[RecordChanged], keys: Sequence[bytes | None] | None = None, side: Side | None = None
) -> list[Change | Unreadable]:
    """The domain change of each event, in order; an event that breaks the contract as Unreadable.

    With the events' record ``keys``, and the ``side`` their topic carries, a change whose
    tenant or side its producer got wrong breaks the contract too (:func:`intake.refusal`).
    """
    changes: list[Change | Unreadable] = []
    for index, event in enumerate(events):
        try:
            change = from_proto(event)
        except InvalidChangeError as error:
            changes.append(Unreadable(event.event_id, event.tenant_id, event.record_id, str(error)))
            continue
        reason = refusal(change, keys[index], side) if keys is not None else None
        changes.append(
            change if reason is None else Unreadable(event.event_id, event.tenant_id, event.record_id, reason)
        )
    return changes


def change_mapped(event: MappedEvent) -> change_mapped_pb2.ChangeMapped:
    link = event.link
    message = ChangeMapped(
        event_id=event.event_id,
        tenant_id=link.tenant_id,
        link_id=link.link_id,
        object_pair=link.object_pair,
        mapping_version=event.mapping_version,
        origin_side=SIDE_TO_PB[event.side],
        kind=KIND_TO_PB[event.kind],
        app_record_id=link.app_record_id or "",
        crm_record_id=link.crm_record_id or "",
        external_id=link.external_id,
        origin_client=event.origin_client,
        source_event_id=event.source_event_id,
    )
    for f in event.fields:
        message.fields.add(
            app_field=f.app_field,
            crm_field=f.crm_field,
            app_value=to_field_value(f.app_value),
            crm_value=to_field_value(f.crm_value),
            changed=f.changed,
        )
    for d in event.dropped:
        message.dropped_fields.add(field=d.field, reason=d.reason)
    message.origin_commit_time.FromDatetime(event.at)
    return message


def keyed(events: Sequence[MappedEvent]) -> list[tuple[change_mapped_pb2.ChangeMapped, bytes]]:
    """The events to publish, in order, each keyed by its link: one link's events stay in order."""
    return [(change_mapped(e), link_key(e.link.tenant_id, e.link.link_id)) for e in events]
