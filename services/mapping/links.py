"""Link identity and the Salesforce events that re-point links. Pure: no I/O.

A link is one logical record across sides. Its id is derived from the record that first made it
appear (tenant, pair, side, record id), so a change redelivered after a crash, or processed by
another replica, arrives at the same link. Records Duplex creates in Salesforce carry the
link's external id in the pair's external-id field, which binds their first CDC event to the link
before the writer has reported the new Salesforce id.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from services.common.change import Change, ChangeKind, Side
from services.common.tenant_config import FieldType, ObjectPair, TenantConfig
from services.common.values import is_blank

# Any fixed namespace works; changing it would change every link id and event id derived from it.
NAMESPACE = uuid.UUID("5f0c7f0e-2a4b-4d55-9a8e-3c1f6b2d9e01")
EXTERNAL_ID_PREFIX = "dx-"
_LINK_ID = re.compile(r"[0-9a-f]{32}")

# Lead conversion (Salesforce sets these on the Lead's UPDATE) and merges (set on the loser's DELETE).
CONVERTED_FIELDS = ("ConvertedContactId", "ConvertedAccountId", "ConvertedOpportunityId")
CONVERTED_OBJECTS = {
    "ConvertedContactId": "Contact",
    "ConvertedAccountId": "Account",
    "ConvertedOpportunityId": "Opportunity",
}
MASTER_RECORD_FIELD = "MasterRecordId"


@dataclass(frozen=True)
class Link:
    tenant_id: str
    object_pair: str
    link_id: str
    app_record_id: str | None
    crm_record_id: str | None
    external_id: str
    merged_into: str | None = None

    def record_id(self, side: Side) -> str | None:
        return self.app_record_id if side is Side.APP else self.crm_record_id


def link_id_for(tenant_id: str, pair: str, side: Side, record_id: str) -> str:
    """The id of the link a record founds when it is the first of its link to appear."""
    return uuid.uuid5(NAMESPACE, f"link/{tenant_id}/{pair}/{side}/{record_id}").hex


def external_id_for(link_id: str) -> str:
    return EXTERNAL_ID_PREFIX + link_id


def mapped_event_id(change: Change) -> str:
    """The ChangeMapped id of a change: the same however often the change is delivered."""
    return uuid.uuid5(NAMESPACE, f"mapped/{change.tenant_id}/{change.side}/{change.event_id}").hex


def released_event_id(source_event_id: str, link_id: str, field: str) -> str:
    """The ChangeMapped id of a held reference released once its target was linked."""
    return uuid.uuid5(NAMESPACE, f"released/{source_event_id}/{link_id}/{field}").hex


def pair_for(config: TenantConfig, side: Side, object_type: str) -> ObjectPair | None:
    """The pair an object belongs to (Salesforce names compare case-insensitively)."""
    if side is Side.APP:
        return next((p for p in config.spec.objects if p.app.object == object_type), None)
    lowered = object_type.lower()
    return next((p for p in config.spec.objects if p.salesforce.object.lower() == lowered), None)


def _field(change: Change, name: str) -> str | None:
    lowered = name.lower()
    for key, value in change.fields.items():
        if key.lower() == lowered and not is_blank(value):
            return str(value).strip()
    return None


def link_id_of(external_id: str, side: Side) -> str | None:
    """The id of the link a Duplex external id names (app side: the link id itself), if well formed."""
    link_id = external_id.removeprefix(EXTERNAL_ID_PREFIX) if side is Side.CRM else external_id
    return link_id if _LINK_ID.fullmatch(link_id) else None


def external_id_in(change: Change, pair: ObjectPair) -> str | None:
    """The Duplex external id a change carries, if any: the event's own, or the pair's field."""
    if change.side is Side.APP:
        # App records Duplex created carry the link id they were created for (see the contract).
        return change.external_id or None
    value = _field(change, pair.salesforce.external_id_field) or change.external_id or None
    return value if value and value.startswith(EXTERNAL_ID_PREFIX) else None


@dataclass(frozen=True)
class Conversion:
    """A converted Lead: the records it became, by Salesforce object."""

    targets: tuple[tuple[str, str], ...]  # (object, record id), Contact first


def conversion_of(change: Change) -> Conversion | None:
    if change.side is not Side.CRM or change.object_type.lower() != "lead" or change.kind is not ChangeKind.UPDATE:
        return None
    targets = tuple((CONVERTED_OBJECTS[name], rid) for name in CONVERTED_FIELDS if (rid := _field(change, name)))
    return Conversion(targets) if targets else None


def merge_winner(change: Change) -> str | None:
    """The surviving record of a Salesforce merge, for the DELETE of a loser."""
    if change.side is not Side.CRM or change.kind is not ChangeKind.DELETE:
        return None
    return _field(change, MASTER_RECORD_FIELD)


def conversion_target(
    config: TenantConfig, lead_pair: ObjectPair, conversion: Conversion
) -> tuple[ObjectPair, str] | None:
    """Where a converted Lead's link goes: the first converted record (Contact first) whose pair
    is on the same app object as the Lead's, or None when none is.

    The link keeps its app record id, which names a record of the Lead pair's app object: moving
    it to a pair on another app object would have that pair's app updates address a record of the
    wrong object (or another record that happens to have the same id).
    """
    for crm_object, record_id in conversion.targets:
        for pair in config.spec.objects:
            if pair.salesforce.object.lower() == crm_object.lower() and pair.app.object == lead_pair.app.object:
                return pair, record_id
    return None


def app_pairs(config: TenantConfig, pair: ObjectPair) -> list[ObjectPair]:
    """The pairs sharing ``pair``'s app object (``pair`` first): a Lead pair and the Contact pair
    its converted records move to, typically."""
    return [pair, *(p for p in config.spec.objects if p.app.object == pair.app.object and p.name != pair.name)]


@dataclass(frozen=True)
class ReferenceNeed:
    """A reference value in a change whose link must be looked up before translating."""

    field: str  # source field name
    target_pair: str
    record_id: str  # on the change's side


def reference_needs(pair: ObjectPair, change: Change) -> list[ReferenceNeed]:
    needs = []
    for mapping in pair.fields:
        if mapping.reference is None or mapping.transform is None or mapping.transform.type is not FieldType.REFERENCE:
            continue
        name = mapping.app if change.side is Side.APP else mapping.salesforce
        value = _field(change, name)
        if value is not None:
            needs.append(ReferenceNeed(name, mapping.reference.object, value))
    return needs
