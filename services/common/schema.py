"""Both sides' schemas as the authoring tools read them. Pure.

A Salesforce object is what describe says of it (:func:`crm_object`), an app object what its
owner declared (:class:`AppObject`, from the app-schema document). Suggestions, the required-field
check, drift and filter validation all read these types and nothing else, so each is tested with
plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.tenant_config import FieldType


@dataclass(frozen=True)
class PicklistValue:
    value: str
    label: str
    active: bool = True


@dataclass(frozen=True)
class CrmField:
    """One field of a Salesforce object, as describe reports it (its ``type`` is describe's)."""

    name: str
    label: str
    type: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    calculated: bool = False
    external_id: bool = False
    unique: bool = False
    defaulted_on_create: bool = False
    picklist: tuple[PicklistValue, ...] = ()
    reference_to: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        """Salesforce's rule: a create must give it (createable, not nillable, no default)."""
        return self.createable and not self.nillable and not self.defaulted_on_create

    @property
    def writable(self) -> bool:
        return (self.createable or self.updateable) and not self.calculated


@dataclass(frozen=True)
class CrmObject:
    name: str
    label: str
    custom: bool = False
    fields: tuple[CrmField, ...] = ()

    def field(self, name: str) -> CrmField | None:
        """The field named ``name``; Salesforce names are case-insensitive."""
        lowered = name.lower()
        return next((f for f in self.fields if f.name.lower() == lowered), None)


@dataclass(frozen=True)
class AppField:
    name: str
    label: str = ""
    type: FieldType = FieldType.STRING
    required: bool = False
    picklist: tuple[str, ...] = ()


@dataclass(frozen=True)
class AppObject:
    name: str
    fields: tuple[AppField, ...] = field(default=())

    def field(self, name: str) -> AppField | None:
        return next((f for f in self.fields if f.name == name), None)


def _picklist(entries: Iterable[Mapping[str, Any]] | None) -> tuple[PicklistValue, ...]:
    return tuple(
        PicklistValue(str(e["value"]), str(e.get("label") or e["value"]), bool(e.get("active", True)))
        for e in entries or ()
    )


def crm_field(describe: Mapping[str, Any]) -> CrmField:
    """A ``fields[]`` item of an sObject describe."""
    return CrmField(
        name=str(describe["name"]),
        label=str(describe.get("label") or describe["name"]),
        type=str(describe.get("type") or "string"),
        length=int(describe.get("length") or 0),
        nillable=bool(describe.get("nillable", True)),
        createable=bool(describe.get("createable", True)),
        updateable=bool(describe.get("updateable", True)),
        calculated=bool(describe.get("calculated", False)),
        external_id=bool(describe.get("externalId", False)),
        unique=bool(describe.get("unique", False)),
        defaulted_on_create=bool(describe.get("defaultedOnCreate", False)),
        picklist=_picklist(describe.get("picklistValues")),
        reference_to=tuple(str(t) for t in describe.get("referenceTo") or ()),
    )


def crm_object(describe: Mapping[str, Any]) -> CrmObject:
    """An sObject describe (``GET /sobjects/{Object}/describe``)."""
    return CrmObject(
        name=str(describe["name"]),
        label=str(describe.get("label") or describe["name"]),
        custom=bool(describe.get("custom", False)),
        fields=tuple(crm_field(f) for f in describe.get("fields") or ()),
    )


def object_document(obj: CrmObject) -> dict[str, Any]:
    """``obj`` as stored (``crm_schema_objects.describe``); :func:`stored_object` reads it back."""
    return asdict(obj)


def stored_object(document: Mapping[str, Any]) -> CrmObject:
    fields = tuple(
        CrmField(
            **{
                **f,
                "picklist": tuple(PicklistValue(**p) for p in f.get("picklist") or ()),
                "reference_to": tuple(f.get("reference_to") or ()),
            }
        )
        for f in document.get("fields") or ()
    )
    return CrmObject(str(document["name"]), str(document["label"]), bool(document.get("custom")), fields)


def app_object_document(obj: AppObject) -> dict[str, Any]:
    return asdict(obj)


def stored_app_object(document: Mapping[str, Any]) -> AppObject:
    return AppObject(
        str(document["name"]),
        tuple(
            AppField(
                name=str(f["name"]),
                label=str(f.get("label") or ""),
                type=FieldType(f.get("type") or FieldType.STRING),
                required=bool(f.get("required")),
                picklist=tuple(str(v) for v in f.get("picklist") or ()),
            )
            for f in document.get("fields") or ()
        ),
    )


# Describe's per-field keys mapping reads; the JSON shape of crm_object_fields.fields.
SUMMARY_KEYS = ("type", "length", "precision", "scale", "digits", "createable", "updateable", "calculated", "nillable")
# Sizes: a text field's length, a number's precision and scale, an int's digits.
_SIZES = ("length", "precision", "scale", "digits")
_FLAGS = ("createable", "updateable", "calculated", "nillable")


def field_summary(fields: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: {type, length, precision, scale, digits, createable, updateable, calculated,
    nillable}}`` of describe's fields.

    This is mapping's contract (``deploy/sql/0007_crm_describe.sql``). Salesforce's describe always
    has all nine; the rule for a missing one is for anything else.
    """
    summary: dict[str, dict[str, Any]] = {}
    for entry_in in fields:
        entry: dict[str, Any] = {"type": str(entry_in["type"])}
        entry.update({size: int(entry_in[size]) for size in _SIZES if entry_in.get(size) is not None})
        # A key describe left out stays out rather than turn false: mapping's reader then takes
        # its permissive default (writable, no length limit) instead of refusing the field.
        entry.update({flag: bool(entry_in[flag]) for flag in _FLAGS if entry_in.get(flag) is not None})
        summary[str(entry_in["name"])] = entry
    return summary
