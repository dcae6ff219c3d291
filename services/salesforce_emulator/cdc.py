"""Change Data Capture and platform events as Pub/Sub delivers them: Avro schemas, payloads, bitmaps.

Pure functions of an :class:`ObjectDef` and a :class:`CommittedTransaction`; no I/O.

Schema choices (Salesforce documents the shape but not every type):

* ``<Object>ChangeEvent`` in namespace ``com.sforce.eventbus``; field 0 is the
  ``ChangeEventHeader`` record, then the object's fields in describe order.
* Every object field is ``["null", T]`` with default null, required ones too, because an UPDATE
  carries null for every unchanged field and a DELETE carries only the header.
* Left out, as in Salesforce: ``Id`` (the header's ``recordIds`` names the record), ``IsDeleted``,
  ``SystemModstamp`` and formula fields. Compound children (``BillingCity``) appear only inside
  their compound's nested record (``BillingAddress: ["null", Address]``); the compound takes the
  position of its parent field (``BillingAddress``, Contact ``Name``).
* ``changeType`` is an Avro enum ``ChangeType``; Avro decoders hand enums back as strings, which is
  what every official client compares against.
* Datetime: ``long`` epoch milliseconds. Date: ``int`` days since 1970-01-01 (Avro's own date
  representation; Salesforce only says "epoch time"). No logicalType annotations, so decoders
  return plain numbers as they do for Salesforce's schemas.

One event per :class:`RecordChange`: the store already merges identical changes of several records
into one change with several ``record_ids``, and the CDC layer does not merge further.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, get_args

import fastavro
from fastavro.schema import to_parsing_canonical_form

from services.salesforce_emulator.changes import ChangeType, CommittedTransaction, JsonValue, RecordChange
from services.salesforce_emulator.schema import FieldDef, FieldType, ObjectDef

NAMESPACE: Final = "com.sforce.eventbus"
HEADER_FIELD: Final = "ChangeEventHeader"
CHANGE_TYPES: Final = get_args(ChangeType)
ALL_CHANGE_EVENTS_CHANNEL: Final = "/data/ChangeEvents"

# Salesforce leaves these out of change events: the deletion flag and modstamp are bookkeeping,
# and formula values are derived from other records.
_EXCLUDED_FIELDS: Final = frozenset({"Id", "IsDeleted", "SystemModstamp"})
_STRING_TYPES: Final[frozenset[FieldType]] = frozenset(
    {"id", "string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "reference"}
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)

_STRING_ARRAY: Final = {"type": "array", "items": "string"}
_HEADER_SCHEMA: Final[dict[str, Any]] = {
    "type": "record",
    "name": HEADER_FIELD,
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": _STRING_ARRAY},
        {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "symbols": list(CHANGE_TYPES)}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": _STRING_ARRAY},
        {"name": "diffFields", "type": _STRING_ARRAY},
        {"name": "changedFields", "type": _STRING_ARRAY},
    ],
}


def schema_id_of(schema: Mapping[str, Any]) -> str:
    """22-character base64url fingerprint of the schema's Parsing Canonical Form."""
    canonical = to_parsing_canonical_form(dict(schema))
    digest = hashlib.sha256(canonical.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def avro_type(field_type: FieldType) -> str:
    """The Avro primitive carrying a field of this type (before the null union)."""
    if field_type in _STRING_TYPES:
        return "string"
    match field_type:
        case "boolean":
            return "boolean"
        case "int":
            return "int"
        case "double" | "currency" | "percent":
            return "double"
        case "datetime":
            return "long"
        case "date":
            return "int"
        case _:
            msg = f"no Avro mapping for field type {field_type!r}"
            raise ValueError(msg)


def _parse_datetime_ms(value: str) -> int:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Exact: seconds as a float times 1000 lands a millisecond short for some instants.
    return (parsed - _EPOCH) // _MILLISECOND


def to_avro_value(field_type: FieldType, value: JsonValue) -> object:
    """A REST JSON value as the Avro schema for its field type expects it."""
    if value is None:
        return None
    match avro_type(field_type):
        case "string":
            return str(value)
        case "boolean":
            return bool(value)
        case "double":
            return float(value)
        case "int" if field_type == "date":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return date.fromisoformat(str(value)).toordinal() - _EPOCH_ORDINAL
        case "int":
            return int(value)
        case _:  # datetime
            if isinstance(value, int | float) and not isinstance(value, bool):
                return int(value)
            return _parse_datetime_ms(str(value))


@dataclass(frozen=True)
class EventSchema:
    """An Avro writer schema as GetSchema serves it, ready to encode with."""

    schema_id: str
    schema_json: str
    parsed: Any

    def encode(self, record: Mapping[str, object]) -> bytes:
        """Avro binary of one record, without container header (the Pub/Sub payload)."""
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.parsed, dict(record))
        return buffer.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Inverse of :meth:`encode`."""
        record = fastavro.schemaless_reader(io.BytesIO(payload), self.parsed, None)
        assert isinstance(record, dict)
        return record


def _event_schema(schema: dict[str, Any]) -> EventSchema:
    return EventSchema(
        schema_id=schema_id_of(schema),
        schema_json=json.dumps(schema, separators=(",", ":")),
        parsed=fastavro.parse_schema(schema),
    )


# --- Avro binary of our own schemas ----------------------------------------------------------
# Change events are encoded by hand: publish runs inline in every store commit, and letting a
# generic encoder resolve each ["null", record] union costs several times more. Only the shapes
# this module generates are needed; tests decode the output with fastavro and the avro package.

_SMALL_VARINTS: Final = tuple(bytes((n,)) for n in range(128))
_NULL_BRANCH: Final = b"\x00"
_VALUE_BRANCH: Final = b"\x02"
_EMPTY_ARRAY: Final = b"\x00"
_pack_double = struct.Struct("<d").pack


def _write_long(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _write_string(value: str) -> bytes:
    raw = value.encode()
    return _write_long(len(raw)) + raw


def _write_string_array(items: Sequence[str]) -> bytes:
    if not items:
        return _EMPTY_ARRAY
    return _write_long(len(items)) + b"".join([_write_string(item) for item in items]) + _EMPTY_ARRAY


def _write_double(value: float) -> bytes:
    return _pack_double(value)


def _write_boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


_PRIMITIVE_WRITERS: Final[Mapping[str, Callable[[Any], bytes]]] = {
    "string": _write_string,
    "int": _write_long,
    "long": _write_long,
    "double": _write_double,
    "boolean": _write_boolean,
}
_CHANGE_TYPE_INDEX: Final = {name: _write_long(index) for index, name in enumerate(CHANGE_TYPES)}


def _nullable(write: Callable[[Any], bytes]) -> Callable[[object], bytes]:
    def write_nullable(value: object) -> bytes:
        return _NULL_BRANCH if value is None else _VALUE_BRANCH + write(value)

    return write_nullable


def _nullable_record(parts: Sequence[tuple[str, Callable[[object], bytes]]]) -> Callable[[object], bytes]:
    def write_record(value: object) -> bytes:
        if value is None:
            return _NULL_BRANCH
        assert isinstance(value, Mapping)
        return _VALUE_BRANCH + b"".join([write(value.get(name)) for name, write in parts])

    return write_record


@dataclass(frozen=True)
class _Slot:
    """Where one flat API field lives in the change event schema."""

    top: int
    # Index inside the compound's nested record, or -1 for a top-level field.
    child: int
    field: FieldDef


@dataclass(frozen=True)
class Compound:
    """A compound field's nested record: ``BillingAddress`` made of ``BillingStreet``, …."""

    name: str
    top: int
    # (component name inside the nested record, flat API field) in record order.
    components: tuple[tuple[str, FieldDef], ...]

    @property
    def full_mask(self) -> int:
        return (1 << len(self.components)) - 1


@dataclass(frozen=True)
class ChangeEventSchema(EventSchema):
    """The change event schema of one object plus the index maps that bitmaps need."""

    entity: str
    event_name: str
    top_fields: tuple[str, ...]
    slots: Mapping[str, _Slot]
    compounds: Mapping[int, Compound]
    # One Avro writer per entry of top_fields[1:], and the encoding of an all-null body.
    writers: tuple[Callable[[object], bytes], ...]
    all_null: bytes

    @property
    def channel(self) -> str:
        return f"/data/{self.event_name}"


def _compound_record_name(compound: FieldDef | None, name: str) -> str:
    if compound is not None and compound.type == "address":
        return "Address"
    return name


def build_change_event_schema(obj: ObjectDef) -> ChangeEventSchema:
    """The Avro change event schema of ``obj`` (see the module docstring for the choices)."""
    children: dict[str, list[FieldDef]] = {}
    for f in obj.fields:
        if f.compound_field_name:
            children.setdefault(f.compound_field_name, []).append(f)
    by_name = {f.name: f for f in obj.fields}

    fields: list[dict[str, Any]] = [{"name": HEADER_FIELD, "type": _HEADER_SCHEMA}]
    top_fields = [HEADER_FIELD]
    slots: dict[str, _Slot] = {}
    compounds: dict[int, Compound] = {}
    writers: list[Callable[[object], bytes]] = []
    defined_records: dict[str, tuple[str, ...]] = {}
    emitted: set[str] = set()

    for f in obj.fields:
        # A compound sits where its parent field is, or at its first child if it has no parent field.
        if f.compound_field_name and f.compound_field_name in by_name:
            continue
        name = f.compound_field_name or f.name
        if name in emitted:
            continue
        if name in children:
            members = children[name]
            components = tuple((c.compound_component or c.name, c) for c in members)
            component_names = tuple(n for n, _ in components)
            record_name = _compound_record_name(by_name.get(name), name)
            if record_name in defined_records and defined_records[record_name] != component_names:
                record_name = f"{name}Compound"
            record: str | dict[str, Any]
            if record_name in defined_records:
                record = record_name
            else:
                defined_records[record_name] = component_names
                record = {
                    "type": "record",
                    "name": record_name,
                    "fields": [
                        {"name": n, "type": ["null", avro_type(c.type)], "default": None} for n, c in components
                    ],
                }
            index = len(fields)
            fields.append({"name": name, "type": ["null", record], "default": None})
            compounds[index] = Compound(name, index, components)
            for child_index, (_, c) in enumerate(components):
                slots[c.name] = _Slot(index, child_index, c)
            writers.append(
                _nullable_record([(n, _nullable(_PRIMITIVE_WRITERS[avro_type(c.type)])) for n, c in components])
            )
        elif f.name in _EXCLUDED_FIELDS or f.calculated:
            continue
        else:
            slots[f.name] = _Slot(len(fields), -1, f)
            fields.append({"name": f.name, "type": ["null", avro_type(f.type)], "default": None})
            writers.append(_nullable(_PRIMITIVE_WRITERS[avro_type(f.type)]))
        emitted.add(name)
        top_fields.append(name)

    schema = {"type": "record", "name": obj.change_event_name, "namespace": NAMESPACE, "fields": fields}
    base = _event_schema(schema)
    return ChangeEventSchema(
        schema_id=base.schema_id,
        schema_json=base.schema_json,
        parsed=base.parsed,
        entity=obj.name,
        event_name=obj.change_event_name,
        top_fields=tuple(top_fields),
        slots=slots,
        compounds=compounds,
        writers=tuple(writers),
        all_null=_NULL_BRANCH * len(writers),
    )


def build_platform_event_schema(obj: ObjectDef) -> EventSchema:
    """The schema of a platform event ``X__e``: CreatedDate and CreatedById, then its custom fields.

    Same shape as Salesforce's: the two system fields are required, the custom ones nullable.
    """
    fields: list[dict[str, Any]] = [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
    ]
    fields.extend(
        {"name": f.name, "type": ["null", avro_type(f.type)], "default": None}
        for f in obj.fields
        if f.name not in {"CreatedDate", "CreatedById"} and not f.system and f.type not in {"id", "address"}
    )
    return _event_schema({"type": "record", "name": obj.name, "namespace": NAMESPACE, "fields": fields})


def platform_event_def(api_name: str, fields: Iterable[FieldDef], *, label: str | None = None) -> ObjectDef:
    """An ObjectDef for a platform event, to include in an org's schema so its topic exists."""
    if not api_name.endswith("__e"):
        msg = f"platform event names end in __e: {api_name!r}"
        raise ValueError(msg)
    base = api_name[: -len("__e")]
    return ObjectDef(
        api_name,
        "e00",
        label or base,
        label or base,
        tuple(fields),
        custom=True,
        cdc_enabled=False,
    )


_SCHEMA_CACHE: dict[int, tuple[ObjectDef, ChangeEventSchema]] = {}
_PLATFORM_CACHE: dict[int, tuple[ObjectDef, EventSchema]] = {}


def change_event_schema(obj: ObjectDef) -> ChangeEventSchema:
    """Cached :func:`build_change_event_schema`; ObjectDefs are immutable, so identity is the key."""
    hit = _SCHEMA_CACHE.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    built = build_change_event_schema(obj)
    _SCHEMA_CACHE[id(obj)] = (obj, built)
    return built


def platform_event_schema(obj: ObjectDef) -> EventSchema:
    """Cached :func:`build_platform_event_schema`."""
    hit = _PLATFORM_CACHE.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    built = build_platform_event_schema(obj)
    _PLATFORM_CACHE[id(obj)] = (obj, built)
    return built


# --- bitmaps -----------------------------------------------------------------------------------


def _hex(mask: int) -> str:
    # Upper case and whole bytes: the Node decoder only knows A-F and the Java one reads bytes.
    digits = format(mask, "X")
    if len(digits) % 2:
        digits = "0" + digits
    return "0x" + digits


def encode_bitmap(
    schema: ChangeEventSchema, field_names: Iterable[str], *, collapse_full_compounds: bool = False
) -> list[str]:
    """The Pub/Sub bitmap list for flat API field names (``BillingCity`` → ``"<idx>-0x02"``).

    Element 0 covers top-level fields; one ``"<parentIndex>-0x<hex>"`` element follows per compound
    with changed children, whose own top-level bit stays clear. With ``collapse_full_compounds``
    (nulledFields), a compound whose children are all listed is reported as the whole top-level
    field instead, as Salesforce does when every part of a compound is nulled. Fields the schema
    leaves out (``SystemModstamp``) are ignored. Empty input gives an empty list.
    """
    top = 0
    nested: dict[int, int] = {}
    for name in field_names:
        slot = schema.slots.get(name)
        if slot is None:
            continue
        if slot.child < 0:
            top |= 1 << slot.top
        else:
            nested[slot.top] = nested.get(slot.top, 0) | (1 << slot.child)
    if collapse_full_compounds:
        for index, mask in list(nested.items()):
            if mask == schema.compounds[index].full_mask:
                top |= 1 << index
                del nested[index]
    if not top and not nested:
        return []
    return [_hex(top), *(f"{index}-{_hex(mask)}" for index, mask in sorted(nested.items()))]


def _bits(hex_bitmap: str) -> list[int]:
    # Bit i counted from the least significant end, as the official decoders read the hex.
    value = int(hex_bitmap[2:], 16) if len(hex_bitmap) > 2 else 0
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _non_null_branch(field_type: Any, named: Mapping[str, Any]) -> Any:
    branch = field_type
    if isinstance(field_type, list):
        non_null = [t for t in field_type if t != "null"]
        branch = non_null[-1] if non_null else "null"
    if isinstance(branch, str):
        return named.get(branch, named.get(branch.rsplit(".", 1)[-1], branch))
    return branch


def _collect_named(node: Any, named: dict[str, Any], namespace: str) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_named(item, named, namespace)
    elif isinstance(node, dict):
        ns = node.get("namespace", namespace)
        if node.get("type") in {"record", "enum", "fixed"} and "name" in node:
            named[node["name"]] = node
            named[f"{ns}.{node['name']}" if ns and "." not in node["name"] else node["name"]] = node
        for f in node.get("fields", ()):
            _collect_named(f["type"], named, ns)
        if "items" in node:
            _collect_named(node["items"], named, ns)


def expand_bitmap(schema: Mapping[str, Any] | str, bitmaps: Sequence[str]) -> list[str]:
    """Field names from a bitmap list, by Salesforce's documented algorithm.

    ``schema`` is the writer schema (JSON text from GetSchema, or parsed JSON). Element 0, when it
    starts with ``0x``, names top-level fields by bit index; when the last element contains ``-``,
    every ``"<parentIndex>-0x<hex>"`` element names children as ``Parent.Child``.
    """
    root: Mapping[str, Any] = json.loads(schema) if isinstance(schema, str) else schema
    named: dict[str, Any] = {}
    _collect_named(root, named, str(root.get("namespace", "")))
    top_fields = root["fields"]
    remaining = list(bitmaps)
    names: list[str] = []
    if remaining and remaining[0].startswith("0x"):
        names.extend(top_fields[i]["name"] for i in _bits(remaining.pop(0)))
    if remaining and "-" in remaining[-1]:
        for element in remaining:
            if "-" not in element:
                continue
            parent_index, _, child_bitmap = element.partition("-")
            parent = top_fields[int(parent_index)]
            child_schema = _non_null_branch(parent["type"], named)
            if not isinstance(child_schema, dict) or child_schema.get("type") != "record":
                continue
            names.extend(f"{parent['name']}.{child_schema['fields'][i]['name']}" for i in _bits(child_bitmap))
    return names


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedEvent:
    """One event ready for the log: payload encoded once, at publish time."""

    channels: tuple[str, ...]
    schema: EventSchema
    event_id: str
    payload: bytes


def change_record(schema: ChangeEventSchema, change: RecordChange) -> list[object]:
    """The object-field values of a change event, aligned with ``schema.top_fields[1:]``.

    CREATE/UNDELETE carry every populated field, UPDATE its changed (and nulled) fields, everything
    else is null; DELETE and gap events carry only the header.
    """
    record: list[object] = [None] * (len(schema.top_fields) - 1)
    if change.change_type == "UPDATE":
        wanted: Iterable[str] = (*change.changed_fields, *change.nulled_fields)
    elif change.change_type in {"CREATE", "UNDELETE"}:
        wanted = change.values.keys()
    else:
        return record
    nested: dict[int, dict[str, object]] = {}
    for name in wanted:
        slot = schema.slots.get(name)
        if slot is None:
            continue
        value = to_avro_value(slot.field.type, change.values.get(name))
        if slot.child < 0:
            record[slot.top - 1] = value
        else:
            compound = schema.compounds[slot.top]
            parts = nested.setdefault(slot.top, dict.fromkeys(n for n, _ in compound.components))
            parts[compound.components[slot.child][0]] = value
    for index, parts in nested.items():
        # All parts null (no address on CREATE, address wiped on UPDATE): the compound itself is null,
        # and nulledFields reports the whole compound.
        if any(v is not None for v in parts.values()):
            record[index - 1] = parts
    return record


def _header_lists(schema: ChangeEventSchema, change: RecordChange) -> tuple[list[str], list[str]]:
    if change.change_type.startswith("GAP_"):
        return [], []
    nulled = encode_bitmap(schema, change.nulled_fields, collapse_full_compounds=True)
    if change.change_type != "UPDATE":
        return [], nulled
    changed = dict.fromkeys((*change.changed_fields, *change.nulled_fields, "LastModifiedDate"))
    return encode_bitmap(schema, changed), nulled


def encode_change(
    schema: ChangeEventSchema, transaction: CommittedTransaction, change: RecordChange, sequence_number: int
) -> bytes:
    """The Avro payload of one change event."""
    changed, nulled = _header_lists(schema, change)
    gap = change.change_type.startswith("GAP_")
    header = b"".join(
        (
            _write_string(change.entity),
            _write_string_array(() if change.change_type == "GAP_OVERFLOW" else change.record_ids),
            _CHANGE_TYPE_INDEX[change.change_type],
            _write_string(transaction.change_origin),
            _write_string(transaction.transaction_key),
            # Gap events always carry 1: they are not positions within a transaction.
            _write_long(1 if gap else sequence_number),
            _write_long(transaction.commit_timestamp_ms),
            _write_long(transaction.commit_number),
            _write_string(transaction.commit_user),
            _write_string_array(nulled),
            _EMPTY_ARRAY,  # diffFields: the emulator never sends values as diffs
            _write_string_array(changed),
        )
    )
    if gap:
        return header + schema.all_null
    values = change_record(schema, change)
    return header + b"".join([write(value) for write, value in zip(schema.writers, values, strict=True)])


def change_events(
    transaction: CommittedTransaction,
    objects: Mapping[str, ObjectDef],
    new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[EncodedEvent]:
    """The change events of one committed transaction, in order.

    Changes to objects that are unknown or not selected for CDC produce nothing; they still use
    up their ``sequenceNumber``, as the number is the change's position in the transaction.
    """
    events: list[EncodedEvent] = []
    for position, change in enumerate(transaction.changes, start=1):
        obj = objects.get(change.entity)
        if obj is None or not obj.cdc_enabled:
            continue
        schema = change_event_schema(obj)
        events.append(
            EncodedEvent(
                channels=(ALL_CHANGE_EVENTS_CHANNEL, schema.channel),
                schema=schema,
                event_id=new_event_id(),
                payload=encode_change(schema, transaction, change, position),
            )
        )
    return events
