"""A CDC writer schema (from GetSchema) made ready for decoding payloads and bitmaps.

Pure: JSON text in, an immutable description out. Salesforce's change event schema is a record
whose field 0 is ``ChangeEventHeader`` and whose other fields are the object's fields, each a
``["null", T]`` union; compound fields (``BillingAddress``, Contact ``Name``) are nested records
inside such a union, possibly referenced by name after their first definition.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from services.cdc_ingest.rejection import reading

HEADER_FIELD = "ChangeEventHeader"


@dataclass(frozen=True)
class TopField:
    """One field of the event record, in schema order (the bit index of the top-level bitmap)."""

    name: str
    # Names of the nested record's fields, in order, when the field is a compound; else empty.
    children: tuple[str, ...] = ()

    @property
    def is_compound(self) -> bool:
        return bool(self.children)


@dataclass(frozen=True)
class ChangeEventSchema:
    schema_id: str
    fields: tuple[TopField, ...]
    parsed: Any

    @reading("payload")
    def decode(self, payload: bytes) -> dict[str, Any]:
        """The Avro binary payload (no container header) as a dict; UndecodableError if it is not one."""
        buffer = io.BytesIO(payload)
        record = fastavro.schemaless_reader(buffer, self.parsed, None)
        if not isinstance(record, dict):
            raise ValueError("a change event payload must decode to a record")
        if buffer.tell() != len(payload):
            # A payload is exactly one record: bytes left over mean it was written with another schema.
            raise ValueError(f"{len(payload) - buffer.tell()} bytes left after the record")
        return record


def _collect_named(node: Any, named: dict[str, Any], namespace: str) -> None:
    """Every named record/enum/fixed type under ``node``, by short and full name."""
    if isinstance(node, list):
        for item in node:
            _collect_named(item, named, namespace)
        return
    if not isinstance(node, dict):
        return
    ns = str(node.get("namespace", namespace))
    if node.get("type") in {"record", "enum", "fixed"} and "name" in node:
        name = str(node["name"])
        named[name] = node
        named[name if "." in name or not ns else f"{ns}.{name}"] = node
    for child in node.get("fields", ()):
        _collect_named(child.get("type"), named, ns)
    if "items" in node:
        _collect_named(node["items"], named, ns)
    if "values" in node:
        _collect_named(node["values"], named, ns)


def _record_of(field_type: Any, named: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record inside ``field_type`` (its non-null union branch), or None for a scalar."""
    branches = field_type if isinstance(field_type, list) else [field_type]
    for branch in branches:
        resolved = named.get(branch, named.get(branch.rsplit(".", 1)[-1])) if isinstance(branch, str) else branch
        if isinstance(resolved, Mapping) and resolved.get("type") == "record":
            return resolved
    return None


@reading("schema")
def parse_schema(schema_id: str, schema_json: str) -> ChangeEventSchema:
    """Parse GetSchema's JSON; raises UndecodableError when it is not a change event schema."""
    root = json.loads(schema_json)
    if not isinstance(root, dict) or root.get("type") != "record":
        raise ValueError(f"schema {schema_id} is not an Avro record")
    named: dict[str, Any] = {}
    _collect_named(root, named, str(root.get("namespace", "")))
    fields: list[TopField] = []
    for index, field in enumerate(root.get("fields", [])):
        name = str(field["name"])
        nested = _record_of(field["type"], named) if index > 0 else None
        children = tuple(str(child["name"]) for child in nested.get("fields", ())) if nested else ()
        fields.append(TopField(name, children))
    if not fields or fields[0].name != HEADER_FIELD:
        raise ValueError(f"schema {schema_id}: field 0 is not {HEADER_FIELD}")
    return ChangeEventSchema(schema_id, tuple(fields), fastavro.parse_schema(root))


def flat_name(compound: str, child: str) -> str:
    """The API name of a compound's component, as REST and SOQL name it.

    ``BillingAddress.City`` → ``BillingCity``; Lead ``Address.City`` → ``City``; Contact
    ``Name.FirstName`` → ``FirstName``; a geolocation ``Loc__c.Latitude`` → ``Loc__Latitude__s``.
    """
    if compound.endswith("__c"):
        return f"{compound[: -len('__c')]}__{child}__s"
    if compound.endswith("Address"):
        return compound[: -len("Address")] + child
    return child
