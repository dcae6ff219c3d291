"""Translate a change on one side into both sides' terms. Pure: no I/O.

For each field mapping of the object pair whose source field is part of the change:
- the field's direction decides whether the value may travel this way at all; Salesforce fields
  that describe reports as read-only (formula, system, not updateable) only travel CRM -> app;
- the value is coerced to the mapping's type, then converted for the other side: picklist value
  maps, references translated through links, string lengths checked against the mapping and
  Salesforce's describe;
- what cannot travel is listed as dropped with a reason; what is invalid rejects the whole change
  (it goes to the sync log and the DLQ with the reason, and the partition moves on).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from enum import StrEnum

from services.common.change import Change, Side
from services.common.pair_filters import holds
from services.common.soql_filter import (
    FilterError,
    MissingFieldError,
    Where,
    evaluate,
    fields_of,
    parse_where,
    validated,
)
from services.common.tenant_config import (
    Direction,
    FieldMapping,
    FieldType,
    ObjectPair,
    OnUnresolved,
)
from services.common.tenant_config.model import RecordFilter
from services.common.values import Reference, Value, int64, is_blank

# Describe's number types whose precision and scale bound a value (int has digits instead).
_FRACTIONAL_TYPES = frozenset({"double", "currency", "percent"})

# (pair name, side the id belongs to, id) -> the linked record's id on the other side, if linked.
ResolveReference = Callable[[str, Side, str], str | None]


@dataclass(frozen=True)
class CrmFieldInfo:
    """What Salesforce's describe says about a field (the parts mapping needs)."""

    name: str
    updateable: bool = True
    createable: bool = True
    calculated: bool = False
    length: int = 0
    # Describe's type (string, picklist, currency …); "" when not known.
    type: str = ""
    # Describe's precision and scale (double, currency, percent) and digits (int); 0 when not known.
    precision: int = 0
    scale: int = 0
    digits: int = 0

    @property
    def integer_digits(self) -> int:
        """The digits Salesforce holds before the decimal point; 0 when describe does not say."""
        if self.type == "int":
            return self.digits
        if self.type in _FRACTIONAL_TYPES and self.precision:
            return max(self.precision - self.scale, 0)
        return 0

    @property
    def read_only(self) -> bool:
        return self.calculated or not (self.updateable or self.createable)


@dataclass(frozen=True)
class MappedField:
    app_field: str
    crm_field: str
    app_value: Value
    crm_value: Value
    changed: bool


@dataclass(frozen=True)
class Dropped:
    field: str
    reason: str
    # Dropped only because the mapping's own direction says so: expected, not worth a log row.
    as_configured: bool = False


@dataclass(frozen=True)
class Mapped:
    pair: str
    fields: tuple[MappedField, ...]
    dropped: tuple[Dropped, ...]
    # References whose target has no link yet, to retry once it has (rule "hold").
    held: tuple[str, ...] = ()


class RejectedChangeError(ValueError):
    """The change cannot be mapped; ``code`` is a stable reason code for the sync log."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field


def effective_direction(mapping: FieldMapping, pair: ObjectPair, crm: CrmFieldInfo | None) -> Direction:
    """The field's direction, forced to CRM -> app when Salesforce says the field is read-only."""
    if crm is not None and crm.read_only:
        return Direction.CRM_TO_APP
    return pair.direction_of(mapping)


def _not_allowed_reason(direction: Direction, mapping: FieldMapping, pair: ObjectPair, crm: CrmFieldInfo | None) -> str:
    # A user who mapped the field both ways needs to learn that Salesforce, not the mapping, stopped it.
    if crm is not None and crm.read_only and pair.direction_of(mapping).to_crm:
        return "read-only in Salesforce (formula field)" if crm.calculated else "read-only in Salesforce"
    return f"direction is {direction}"


class FilterOutcome(StrEnum):
    MATCHES = "matches"
    EXCLUDED = "excluded"
    # A field the filter reads is not in the change: only the record's history can tell.
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class FilterDecision:
    outcome: FilterOutcome
    # Why, for the sync log, when the record does not plainly match.
    reason: str = ""


_MATCHES = FilterDecision(FilterOutcome.MATCHES)


_NO_FILTER = RecordFilter()
Types = tuple[tuple[str, str], ...]


def _types(crm_fields: Mapping[str, CrmFieldInfo] | None) -> Types:
    return tuple(sorted((name, info.type) for name, info in (crm_fields or {}).items() if info.type))


@functools.lru_cache(maxsize=256)
def _where(soql: str, types: Types, object_name: str) -> Where:
    return validated(soql, dict(types), object_name=object_name)


@functools.lru_cache(maxsize=256)
def _parsed(soql: str) -> Where:
    return parse_where(soql)


def _clause(soql: str, types: Types, object_name: str) -> Where:
    # Describe's types make comparisons exact (ids, multi-select picklists); without, as written.
    # Both are cached: a pair's clauses are the same for every change.
    return _where(soql, types, object_name) if types else _parsed(soql)


def classified(rule: FieldMapping, fields: Mapping[str, Value], types: Types, object_name: str) -> str | None:
    """The value of ``rule``'s first typed filter the record matches; None when it matches none.

    Raises MissingFieldError when a clause reads a field ``fields`` lacks (first match needs each).
    """
    for case in rule.classify or ():
        if evaluate(_clause(case.soql, types, object_name), fields):
            return case.value
    return None


def filter_decision(
    pair: ObjectPair, change: Change, crm_fields: Mapping[str, CrmFieldInfo] | None = None
) -> FilterDecision:
    """Whether the record ``change`` carries passes the pair's filter for its side.

    A condition on a field the change does not carry decides nothing (an update carries only what
    changed); the caller then asks whether the record passed before. A condition that fails
    excludes the record whatever else is unknown, since a filter's conditions must all hold.
    """
    if not pair.filtered:
        return _MATCHES
    record_filter = pair.filter or _NO_FILTER
    side = change.side
    fields: Mapping[str, Value] = change.fields
    if side is Side.CRM and change.record_id:
        # A change event carries the record's Id in its header, not among the fields.
        fields = {"Id": change.record_id, **fields}
    conditions = record_filter.app if side is Side.APP else record_filter.salesforce
    lowered = {name.lower(): value for name, value in fields.items()}
    absent: list[str] = []
    for condition in conditions:
        key = condition.field.lower()
        if key not in lowered:
            absent.append(condition.field)
            continue
        if not holds(condition, lowered[key]):
            return FilterDecision(FilterOutcome.EXCLUDED, f"{condition.field} does not match")
    if side is Side.CRM:
        types = _types(crm_fields)
        try:
            soql = record_filter.soql
            if soql is not None and not evaluate(_clause(soql, types, pair.salesforce.object), fields):
                return FilterDecision(FilterOutcome.EXCLUDED, f"does not match {soql!r}")
            for rule in pair.fields:
                if rule.classify is not None and classified(rule, fields, types, pair.salesforce.object) is None:
                    return FilterDecision(FilterOutcome.EXCLUDED, f"matches none of {rule.app}'s typed filters")
        except MissingFieldError as missing:
            absent.append(missing.field)
        except (FilterError, TypeError) as error:
            # The org's schema changed under the clause (a field deleted or retyped): nothing passes.
            return FilterDecision(FilterOutcome.EXCLUDED, f"the filter no longer fits the org's schema: {error}")
    if absent:
        return FilterDecision(FilterOutcome.UNDECIDED, f"the change does not carry {', '.join(absent)}")
    return _MATCHES


def translate(
    pair: ObjectPair,
    change: Change,
    *,
    resolve: ResolveReference,
    crm_fields: Mapping[str, CrmFieldInfo] | None = None,
    absent_is_deleted: bool = True,
) -> Mapped:
    """``change`` in both sides' terms. Raises RejectedChangeError when a value is invalid.

    ``absent_is_deleted``: ``crm_fields`` was described after the mapping was written, so a mapped
    field it lacks was deleted in Salesforce (its rule is paused) rather than created since.
    """
    crm_info = {name.lower(): info for name, info in (crm_fields or {}).items()}
    source = {name.lower(): (name, value) for name, value in change.fields.items()}
    if change.side is Side.CRM and change.record_id:
        # Change events carry the record's Id in their header, not among the fields; a mapping may
        # still ask for it (to keep the Salesforce id in an app column).
        source.setdefault("id", ("Id", change.record_id))
    mapped: list[MappedField] = []
    dropped: list[Dropped] = []
    held: list[str] = []
    for mapping in pair.fields:
        source_name = mapping.app if change.side is Side.APP else mapping.salesforce
        found = source.get(source_name.lower())
        if found is None:
            continue
        _, raw = found
        crm = crm_info.get(mapping.salesforce.lower())
        if absent_is_deleted and crm_info and crm is None:
            # Deleted in Salesforce since the mapping was written: this rule waits for a mapping fix
            # (services/common/schema_drift.py warns of it) while the pair's other rules sync on.
            dropped.append(Dropped(source_name, f"{mapping.salesforce} no longer exists in Salesforce: rule paused"))
            continue
        direction = effective_direction(mapping, pair, crm)
        allowed = direction.to_crm if change.side is Side.APP else direction.to_app
        if not allowed:
            reason = _not_allowed_reason(direction, mapping, pair, crm)
            configured = pair.direction_of(mapping)
            as_configured = not (configured.to_crm if change.side is Side.APP else configured.to_app)
            dropped.append(Dropped(source_name, reason, as_configured=as_configured))
            continue
        if mapping.classify is not None:
            typed = _typed(pair, mapping, change, crm_fields)
            if isinstance(typed, Dropped):
                dropped.append(typed)
            elif typed is not None:
                mapped.append(MappedField(mapping.app, mapping.salesforce, typed[0], raw, changed=typed[1]))
            continue
        try:
            app_value, crm_value = _both_sides(pair, mapping, change.side, raw, crm_info, resolve)
        except _UnresolvedReferenceError as unresolved:
            rule = mapping.reference.on_unresolved if mapping.reference else OnUnresolved.HOLD
            if rule is OnUnresolved.REJECT:
                raise RejectedChangeError("UNRESOLVED_REFERENCE", str(unresolved), source_name) from None
            if rule is OnUnresolved.HOLD:
                held.append(source_name)
            dropped.append(Dropped(source_name, f"unresolved reference ({rule})"))
            continue
        mapped.append(
            MappedField(mapping.app, mapping.salesforce, app_value, crm_value, changed=change.was_changed(source_name))
        )
    return Mapped(pair.name, tuple(mapped), tuple(dropped), tuple(held))


def _typed(
    pair: ObjectPair, rule: FieldMapping, change: Change, crm_fields: Mapping[str, CrmFieldInfo] | None
) -> tuple[str, bool] | Dropped | None:
    """A typed-filter rule's app value and whether it changed; None when no filter matches."""
    fields: Mapping[str, Value] = {"Id": change.record_id, **change.fields}
    try:
        value = classified(rule, fields, _types(crm_fields), pair.salesforce.object)
    except MissingFieldError as missing:
        return Dropped(rule.salesforce, f"typed filters undecided: the change does not carry {missing.field}")
    except (FilterError, TypeError) as error:
        return Dropped(rule.salesforce, f"typed filters no longer fit the org's schema: {error}")
    if value is None:
        return None
    read = {rule.salesforce, *(f for case in rule.classify or () for f in fields_of(_parsed(case.soql)))}
    return value, any(change.was_changed(name) for name in read)


class _UnresolvedReferenceError(LookupError):
    pass


def _both_sides(
    pair: ObjectPair,
    mapping: FieldMapping,
    side: Side,
    raw: Value,
    crm_info: Mapping[str, CrmFieldInfo],
    resolve: ResolveReference,
) -> tuple[Value, Value]:
    name = mapping.app if side is Side.APP else mapping.salesforce
    transform = mapping.transform
    kind = transform.type if transform is not None else None
    if kind is not None:
        value = coerce(raw, kind, name)
    elif isinstance(raw, float) and not math.isfinite(raw):
        # Travels as it is, yet no Salesforce field and no JSON body can hold it.
        raise RejectedChangeError("INVALID_VALUE", f"not a finite number: {raw!r}", name)
    else:
        value = raw
    if value is None:
        return None, None

    if kind is FieldType.REFERENCE and mapping.reference is not None:
        other = resolve(mapping.reference.object, side, str(value))
        if other is None:
            raise _UnresolvedReferenceError(f"no link yet for {mapping.reference.object} record {value}")
        linked = Reference(other)
        return (value, linked) if side is Side.APP else (linked, value)

    value_map = transform.value_map if transform is not None else None
    if value_map:
        translated = _map_values(value, value_map if side is Side.APP else _invert(value_map), name)
        app_value, crm_value = (value, translated) if side is Side.APP else (translated, value)
    else:
        app_value = crm_value = value

    limit = _max_length(mapping, crm_info)
    if limit and isinstance(crm_value, str) and len(crm_value) > limit:
        raise RejectedChangeError(
            "STRING_TOO_LONG", f"{len(crm_value)} characters, at most {limit} allowed", mapping.salesforce
        )
    info = crm_info.get(mapping.salesforce.lower())
    _check_digits(crm_value, info, mapping.salesforce)
    return _to_scale(app_value, info), _to_scale(crm_value, info)


def _check_digits(crm_value: Value, info: CrmFieldInfo | None, field: str) -> None:
    """NUMBER_OUTSIDE_VALID_RANGE for a number with more integer digits than Salesforce's field holds.

    Salesforce rounds to the field's scale (half away from zero) before it checks, so 999.5 in a
    field of precision 3 and scale 0 is 1000 there, and refused.
    """
    if info is None or not info.integer_digits:
        return
    number = _decimal(crm_value)
    if number is None:
        # Not a number: Salesforce's binder refuses it with its own error.
        return
    allowed = info.integer_digits
    digits = _integer_digits(number)
    if digits <= allowed:
        digits = _integer_digits(_rounded(number, info.scale if info.type in _FRACTIONAL_TYPES else 0))
    if digits > allowed:
        raise RejectedChangeError(
            "NUMBER_OUTSIDE_VALID_RANGE", f"{digits} integer digits, at most {allowed} allowed", field
        )


def _to_scale(crm_value: Value, info: CrmFieldInfo | None) -> Value:
    """A fractional number rounded to its Salesforce field's scale, half away from zero, as
    Salesforce stores it. Both forms of the change carry the rounded value, because that is the
    value the two sides can agree on: the conflict-resolver then sees its own write when Salesforce
    reports it back, where 2.345 sent and 2.35 stored would look like somebody else's edit. The
    app's own row keeps what was typed (Duplex does not write a change back to its author)."""
    if info is None or info.type not in _FRACTIONAL_TYPES or not info.precision:
        return crm_value
    number = _decimal(crm_value) if isinstance(crm_value, float | Decimal) else None
    if number is None or -number.as_tuple().exponent <= info.scale:  # type: ignore[operator]
        return crm_value
    rounded = _rounded(number, info.scale)
    return float(rounded) if isinstance(crm_value, float) else rounded


def _decimal(value: Value) -> Decimal | None:
    """A finite number as Salesforce reads it (a float by its shortest repr, the number that was
    typed), None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, int | Decimal):
            number = Decimal(value)
        elif isinstance(value, str):
            number = Decimal(value.strip())
        else:
            return None
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _rounded(number: Decimal, scale: int) -> Decimal:
    """``number`` at ``scale`` decimals, half away from zero, exactly (however many digits it has)."""
    exact = Context(prec=_integer_digits(number) + scale + 2)
    return number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP, context=exact)


def _integer_digits(number: Decimal) -> int:
    return 0 if number.is_zero() else max(number.adjusted() + 1, 0)


def _max_length(mapping: FieldMapping, crm_info: Mapping[str, CrmFieldInfo]) -> int:
    limits = [mapping.transform.max_length] if mapping.transform and mapping.transform.max_length else []
    info = crm_info.get(mapping.salesforce.lower())
    if info is not None and info.length:
        limits.append(info.length)
    return min(limits) if limits else 0


def _invert(value_map: Mapping[str, str]) -> dict[str, str]:
    return {crm: app for app, crm in value_map.items()}


def _map_values(value: Value, value_map: Mapping[str, str], field: str) -> Value:
    if isinstance(value, tuple):
        return tuple(_map_one(v, value_map, field) for v in value)
    if isinstance(value, str):
        return _map_one(value, value_map, field)
    return value


def _map_one(value: str, value_map: Mapping[str, str], field: str) -> str:
    if value not in value_map:
        raise RejectedChangeError("INVALID_PICKLIST_VALUE", f"no mapping for value {value!r}", field)
    return value_map[value]


def coerce(value: Value, kind: FieldType, field: str) -> Value:
    """``value`` as the mapping's type; blanks become None. Raises RejectedChangeError when it cannot be."""
    if is_blank(value) and kind is not FieldType.STRING:
        return None
    if value is None:
        return None
    try:
        converted = _COERCIONS[kind](value)
    except (ValueError, TypeError, InvalidOperation, ArithmeticError) as exc:
        raise RejectedChangeError("INVALID_VALUE", f"not a valid {kind}: {value!r} ({exc})", field) from None
    return converted


def _to_string(value: Value) -> Value:
    if isinstance(value, bool | tuple | date):
        raise TypeError("text expected")
    return str(value)


def _to_int(value: Value) -> Value:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return int64(value)
    if isinstance(value, Decimal | float | str):
        exact = Decimal(str(value).strip())
        number = int64(exact)
        if exact != number:
            raise ValueError("has a fraction")
        return number
    raise TypeError("number expected")


def _to_decimal(value: Value) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise TypeError("number expected")
    number = Decimal(str(value).strip())
    if not number.is_finite():
        raise ValueError("not finite")
    return number


def _to_double(value: Value) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise TypeError("number expected")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _to_bool(value: Value) -> Value:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise TypeError("true or false expected")


def _to_date(value: Value) -> Value:
    if isinstance(value, datetime):
        raise TypeError("a date without a time expected")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return date.fromisoformat(value.strip())
    raise TypeError("date expected")


def _to_datetime(value: Value) -> Value:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    else:
        raise TypeError("datetime expected")
    if parsed.tzinfo is None:
        raise ValueError("a time zone is required")
    return parsed.astimezone(UTC)


def _to_reference(value: Value) -> Value:
    if not isinstance(value, str):
        raise TypeError("an id expected")
    return Reference(value.strip())


def _to_picklist(value: Value) -> Value:
    if not isinstance(value, str):
        raise TypeError("text expected")
    return value


def _to_multi(value: Value) -> Value:
    # Salesforce writes multi-picklists as "A;B" in REST and CDC.
    if isinstance(value, str):
        return tuple(v for v in (part.strip() for part in value.split(";")) if v)
    if isinstance(value, tuple):
        return value
    raise TypeError("a list of values expected")


_COERCIONS: dict[FieldType, Callable[[Value], Value]] = {
    FieldType.STRING: _to_string,
    FieldType.INT: _to_int,
    FieldType.DECIMAL: _to_decimal,
    FieldType.DOUBLE: _to_double,
    FieldType.BOOL: _to_bool,
    FieldType.DATE: _to_date,
    FieldType.DATETIME: _to_datetime,
    FieldType.REFERENCE: _to_reference,
    FieldType.PICKLIST: _to_picklist,
    FieldType.MULTIPICKLIST: _to_multi,
}
