"""Pure record validation: turning request bodies into field values, with Salesforce's error codes.

Two phases, as in Salesforce:

1. **Deserialization** (:func:`deserialize`) binds a JSON (or CSV) body to the object's fields.
   An unknown field is ``INVALID_FIELD``; a value of the wrong JSON type is ``JSON_PARSER_ERROR``
   (``Cannot deserialize instance of <type> from <TOKEN> value …``), which is what Salesforce's
   JSON binder reports. Like Salesforce, numbers and booleans sent as strings are coerced when they
   parse, and empty text is stored as null. In sObject Collections these errors fail the whole request.
2. **Record checks** (:func:`check_writable`, :func:`check_values`, :func:`check_required`) that
   report per-record errors (item errors in collections).

Checks that need stored data (references, uniqueness, deleted records) live in the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Literal

from services.salesforce_emulator import ids
from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.formula import Formula, compile_cached
from services.salesforce_emulator.schema import NUMBER_TYPES, TEXT_TYPES, FieldDef, FieldType, ObjectDef

Operation = Literal["create", "update"]
Source = Literal["json", "csv"]

SOAP_TYPES: dict[FieldType, str] = {
    "id": "tns:ID",
    "string": "xsd:string",
    "textarea": "xsd:string",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "email": "xsd:string",
    "phone": "xsd:string",
    "url": "xsd:string",
    "picklist": "xsd:string",
    "multipicklist": "xsd:string",
    "reference": "tns:ID",
    "address": "urn:address",
}

# The Java type names Salesforce's JSON binder names in its messages.
_BINDER_TYPES: dict[FieldType, str] = {
    "boolean": "boolean",
    "int": "int",
    "double": "double",
    "currency": "double",
    "percent": "double",
    "date": "Date",
    "datetime": "Datetime",
}

# The number types whose REST form is a double.
_FRACTIONAL_TYPES: frozenset[FieldType] = frozenset({"double", "currency", "percent"})
# An int field is a Java int, and an Avro int in change events.
_INT_RANGE = range(-(2**31), 2**31)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# The instants a datetime can name (years 1 to 9999 in UTC), in epoch milliseconds.
_MIN_MS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MS
_MAX_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MS

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$"
)


# --- date/time wire formats ---------------------------------------------------------------------


def _utc(ms: int) -> datetime:
    # Exact: a float of seconds is off by a millisecond for some instants.
    return _EPOCH + ms * _MS


def format_datetime(ms: int) -> str:
    """``2024-05-01T12:00:00.000+0000`` for epoch milliseconds (years before 1000 zero-padded)."""
    return _utc(ms).replace(tzinfo=None).isoformat(timespec="milliseconds") + "+0000"


def format_date(ms: int) -> str:
    """``2024-05-01`` (UTC) for epoch milliseconds."""
    return _utc(ms).date().isoformat()


def parse_datetime(text: str) -> int | None:
    """Epoch ms for the ISO 8601 forms clients send (``Z``, ``+0000``, ``+00:00``, date only); None if
    invalid, or if its offset moves it out of years 1 to 9999 in UTC."""
    m = _DATETIME.match(text.strip())
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), tzinfo=UTC)
    except ValueError:
        return None
    ms = (dt - _EPOCH) // _MS + int((frac or "0")[:3].ljust(3, "0"))
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms if _MIN_MS <= ms <= _MAX_MS else None


def _valid_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


# --- per-object plans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectPlan:
    """Everything validation and storage need to know about one object, computed once."""

    obj: ObjectDef
    by_lower: Mapping[str, FieldDef]
    # Fields persisted in a record's data (not formulas, compounds or the derived person Name).
    stored: frozenset[str]
    derived_name: bool
    formulas: tuple[tuple[FieldDef, Formula], ...]
    addresses: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    required_on_create: tuple[str, ...]
    defaults: tuple[tuple[str, JsonValue], ...]
    auto_numbers: tuple[str, ...]
    # Fields with a lookup index (external ids and unique fields); `unique` ones reject duplicates.
    indexed: tuple[str, ...]
    unique: frozenset[str]
    references: tuple[tuple[str, tuple[str, ...]], ...]

    def field(self, name: str) -> FieldDef | None:
        return self.by_lower.get(name.lower())


# Keyed by identity: hashing a frozen ObjectDef walks every FieldDef, which costs more than a write.
_PLANS: dict[int, tuple[ObjectDef, ObjectPlan]] = {}


def plan_for(obj: ObjectDef) -> ObjectPlan:
    """The (cached) plan of an object definition."""
    cached = _PLANS.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    if len(_PLANS) > 1024:
        _PLANS.clear()
    plan = _build_plan(obj)
    _PLANS[id(obj)] = (obj, plan)
    return plan


def _build_plan(obj: ObjectDef) -> ObjectPlan:
    names = tuple(f.name for f in obj.fields)
    person_compounds = {f.compound_field_name for f in obj.fields if f.compound_field_name} - {
        f.name for f in obj.fields if f.type == "address"
    }
    derived_name = any(f.name == "Name" and not f.createable for f in obj.fields) and "Name" in person_compounds
    formulas = tuple(
        (f, compile_cached(f.formula, names)) for f in obj.fields if f.calculated and f.formula is not None
    )
    addresses = tuple(
        (
            f.name,
            tuple((c.compound_component or c.name, c.name) for c in obj.fields if c.compound_field_name == f.name),
        )
        for f in obj.fields
        if f.type == "address"
    )
    not_stored = {f.name for f in obj.fields if f.calculated or f.type == "address"}
    if derived_name:
        not_stored.add("Name")
    defaults = [(f.name, f.default_value) for f in obj.fields if f.default_value is not None and not f.system]
    return ObjectPlan(
        obj=obj,
        by_lower={f.name.lower(): f for f in obj.fields},
        stored=frozenset(f.name for f in obj.fields if f.name not in not_stored),
        derived_name=derived_name,
        formulas=formulas,
        addresses=addresses,
        required_on_create=tuple(
            f.name for f in obj.fields if f.required_on_create and not f.calculated and f.default_value is None
        ),
        defaults=tuple(defaults),
        auto_numbers=tuple(f.name for f in obj.fields if f.auto_number),
        indexed=tuple(f.name for f in obj.fields if f.external_id or f.unique),
        unique=frozenset(f.name for f in obj.fields if f.unique),
        references=tuple(
            (f.name, f.reference_to) for f in obj.fields if f.type == "reference" and f.name in obj_writable(obj)
        ),
    )


def obj_writable(obj: ObjectDef) -> frozenset[str]:
    """Names of fields a caller can ever write."""
    return frozenset(f.name for f in obj.fields if f.writable and f.type != "address")


# --- phase 1: deserialization -------------------------------------------------------------------


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, str):
        return "VALUE_STRING"
    if isinstance(value, list):
        return "START_ARRAY"
    return "START_OBJECT"


def _parser_error(f: FieldDef, value: Any, source: Source) -> SalesforceError:
    java = _BINDER_TYPES.get(f.type, "String")
    if source == "csv":
        return SalesforceError(
            400,
            "INVALID_FIELD",
            f"Failed to deserialize field. Due to, '{value}' is not a valid value for the type "
            f"{SOAP_TYPES[f.type]}: {f.name}",
            [f.name],
        )
    shown = "{" if isinstance(value, dict) else "[" if isinstance(value, list) else value
    return SalesforceError(
        400,
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {java} from {_token(value)} value {shown} "
        "or request may be missing a required field",
        [f.name],
    )


def _int_out_of_range(f: FieldDef, num: int, source: Source) -> SalesforceError:
    if source == "csv":
        return _parser_error(f, num, source)
    return SalesforceError(
        400,
        "JSON_PARSER_ERROR",
        f"Numeric value ({num}) out of range of int ({_INT_RANGE.start} - {_INT_RANGE.stop - 1})",
        [f.name],
    )


def _java_number(value: float) -> str:
    """``value`` as Java's Double.toString shows it in Salesforce's messages (``1.0E19``, ``1250.5``)."""
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(value)
    exact = Decimal(repr(abs(value)))
    digits = "".join(map(str, exact.as_tuple().digits)).rstrip("0") or "0"
    return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:] or '0'}E{exact.adjusted()}"


def number_outside_range(f: FieldDef, value: float) -> SalesforceError:
    return SalesforceError(
        400,
        "NUMBER_OUTSIDE_VALID_RANGE",
        f"{f.label or f.name}: value outside of valid range on numeric field: {_java_number(value)}",
        [f.name],
    )


def integer_digits(value: float) -> int:
    """How many digits ``value`` has before its decimal point (none for a magnitude below 1)."""
    if value == 0:
        return 0
    return max(Decimal(repr(value)).adjusted() + 1, 0)


def integer_digits_allowed(f: FieldDef) -> int | None:
    """The integer digits number field ``f`` holds (an int's ``digits``, else precision - scale);
    None when its definition sets no precision (a custom int field, whose bound is 32 bits)."""
    if not f.precision:
        return None
    return f.precision if f.type == "int" else f.precision - f.scale


def to_scale(f: FieldDef, value: float) -> float:
    """``value`` rounded to ``f``'s scale, half away from zero, as Salesforce stores it.

    The shortest repr is what the client wrote (2.345, not the double just below it), so rounding
    it as a decimal gives 2.35 where ``round`` gives 2.34 (and rounds halves to even). A value with
    more integer digits than the field holds is returned as it is: check_values refuses it for its
    record only, where a deserialization error would fail a whole sObject Collections request.
    """
    allowed = integer_digits_allowed(f)
    digits = integer_digits(value) if math.isfinite(value) else 0
    if not math.isfinite(value) or (allowed is not None and digits > allowed):
        return value
    # Enough digits for the rounded value: the default context (28) is short of precision 18 at
    # scale 17 plus a carry, and of a large double in a field without a precision.
    exact = Context(prec=digits + f.scale + 2)
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-f.scale), rounding=ROUND_HALF_UP, context=exact))


def coerce(f: FieldDef, value: Any, source: Source = "json") -> JsonValue:
    """``value`` as the REST JSON form of field ``f``'s type, or JSON_PARSER_ERROR."""
    if value is None:
        return None
    t = f.type
    if isinstance(value, dict | list):
        raise _parser_error(f, value, source)
    if t in TEXT_TYPES or t == "address":
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        else:
            text = str(value)
        return text or None
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if source == "csv" and isinstance(value, str) and value in ("0", "1"):
            return value == "1"
        raise _parser_error(f, value, source)
    if t in ("int", "double", "currency", "percent"):
        if isinstance(value, bool):
            raise _parser_error(f, value, source)
        num: int | float
        if isinstance(value, str):
            if value.strip() == "" and source == "json":
                return None
            try:
                num = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise _parser_error(f, value, source) from None
        else:
            num = value
        if t == "int":
            if isinstance(num, float):
                if not num.is_integer():
                    raise _parser_error(f, value, source)
                num = int(num)
            if num not in _INT_RANGE:
                raise _int_out_of_range(f, num, source)
            return num
        try:
            result = float(num)
        except OverflowError:
            # Beyond a double, as Salesforce's binder reads it; check_values refuses it.
            result = math.inf if num > 0 else -math.inf
        return to_scale(f, result)
    if t == "date":
        if isinstance(value, str):
            if value == "":
                return None
            if _valid_date(value):
                return value
            ms = parse_datetime(value)
            if ms is not None and "T" in value:
                return format_date(ms)
        raise _parser_error(f, value, source)
    if t == "datetime":
        if isinstance(value, str):
            if value == "":
                return None
            ms = parse_datetime(value)
            if ms is not None:
                return format_datetime(ms)
        raise _parser_error(f, value, source)
    raise _parser_error(f, value, source)


def invalid_field(obj: ObjectDef, name: str) -> SalesforceError:
    return SalesforceError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}", [name])


def deserialize(
    plan: ObjectPlan, body: Mapping[str, Any], source: Source = "json"
) -> tuple[dict[str, JsonValue], str | None]:
    """Bind a body to fields: (values by canonical name, the ``Id``/``id`` in the body if any).

    ``attributes`` is ignored. For CSV, ``#N/A`` sets a field to null and an empty cell leaves it
    unset, as in Bulk API 2.0.
    """
    values: dict[str, JsonValue] = {}
    body_id: str | None = None
    by_lower = plan.by_lower
    for key, raw in body.items():
        lower = key.lower()
        if lower == "attributes":
            continue
        if lower == "id":
            if raw is not None and raw != "":
                body_id = str(raw)
            continue
        f = by_lower.get(lower)
        if f is None:
            raise invalid_field(plan.obj, key)
        if source == "csv":
            if raw == "":
                continue
            if raw == "#N/A":
                values[f.name] = None
                continue
        values[f.name] = coerce(f, raw, source)
    return values, body_id


# --- phase 2: per-record checks -----------------------------------------------------------------


def readonly_error(names: Iterable[str]) -> SalesforceError:
    listed = list(names)
    return SalesforceError(
        400,
        "INSUFFICIENT_ACCESS_OR_READONLY",
        f"Unable to create/update fields: {', '.join(listed)}. Please check the security settings of this field "
        "and verify that it is read/write for your profile or permission set.",
        listed,
    )


def check_writable(
    plan: ObjectPlan, values: Mapping[str, JsonValue], op: Operation, readonly: Collection[str] = ()
) -> None:
    """INSUFFICIENT_ACCESS_OR_READONLY for non-createable/non-updateable/calculated or user-read-only fields."""
    bad: list[str] = []
    # Field-level security names fields qualified by their object (Account.AnnualRevenue).
    readonly_lower = {r.lower() for r in readonly} if readonly else set()
    prefix = f"{plan.obj.name.lower()}."
    for name in values:
        f = plan.by_lower[name.lower()]
        allowed = (f.createable if op == "create" else f.updateable) and not f.calculated and not f.system
        if f.type == "address" or not allowed or prefix + name.lower() in readonly_lower:
            bad.append(name)
    if bad:
        raise readonly_error(bad)


def check_values(plan: ObjectPlan, values: Mapping[str, JsonValue]) -> None:
    """Length, e-mail shape, id shape and number range of the given values."""
    for name, value in values.items():
        if value is None:
            continue
        f = plan.by_lower[name.lower()]
        t = f.type
        if t == "reference" or t == "id":
            assert isinstance(value, str)
            if not ids.is_valid(value):
                raise SalesforceError(
                    400, "MALFORMED_ID", f"{f.label or f.name}: id value of incorrect type: {value}", [name]
                )
            continue
        if t in TEXT_TYPES and f.length and isinstance(value, str) and len(value) > f.length:
            raise SalesforceError(
                400, "STRING_TOO_LONG", f"{name}: data value too large: {value} (max length={f.length})", [name]
            )
        if t == "email" and isinstance(value, str) and not _EMAIL.match(value):
            raise SalesforceError(400, "INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {value}", [name])
        if t in _FRACTIONAL_TYPES and isinstance(value, float) and not math.isfinite(value):
            raise number_outside_range(f, value)
        if t in NUMBER_TYPES and isinstance(value, int | float) and not isinstance(value, bool):
            allowed = integer_digits_allowed(f)
            if allowed is not None and integer_digits(value) > allowed:
                raise number_outside_range(f, value)


def required_missing(names: list[str]) -> SalesforceError:
    return SalesforceError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(names)}]", names)


def check_required(plan: ObjectPlan, values: Mapping[str, JsonValue], op: Operation) -> None:
    """REQUIRED_FIELD_MISSING: on create for required fields not given, on update for required fields nulled."""
    if op == "create":
        missing = [n for n in plan.required_on_create if values.get(n) is None]
    else:
        missing = [
            n
            for n, v in values.items()
            if v is None and not plan.by_lower[n.lower()].nillable and not plan.by_lower[n.lower()].system
        ]
    if missing:
        raise required_missing(missing)


def validate(plan: ObjectPlan, values: Mapping[str, JsonValue], op: Operation, readonly: Collection[str] = ()) -> None:
    """All record-level checks, in Salesforce's order."""
    check_writable(plan, values, op, readonly)
    check_values(plan, values)
    check_required(plan, values, op)
