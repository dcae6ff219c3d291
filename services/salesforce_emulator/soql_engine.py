"""SOQL semantics: a parsed query checked against an org's schema, then run over records.

``compile_query`` resolves names (case-insensitively, to canonical API casing), types every
literal against its field and builds plain closures, so ``execute`` is one linear filter pass plus
one sort, whatever the number of rows. Typed comparison rules follow Salesforce:

* datetimes compare as instants (any offset), dates as dates, numbers numerically;
* ids and lookups compare on their first 15 characters (15- and 18-character ids are equal);
* text compares case-insensitively, for ``=`` and ``LIKE`` as for ordering;
* a null field satisfies ``!= x`` and ``NOT IN (…)`` (SOQL has no three-valued logic) and never a range.

An id literal that is not 15 or 18 alphanumeric characters is rejected with
``INVALID_QUERY_FILTER_OPERATOR: invalid ID field: …``, the code Salesforce uses for it.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, Protocol

from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.schema import NUMBER_TYPES, FieldDef, ObjectDef
from services.salesforce_emulator.soql_parser import (
    And,
    BoolLit,
    Comparison,
    Condition,
    Count,
    DateLit,
    DateTimeLit,
    FieldPath,
    InList,
    Like,
    LiteralValue,
    Not,
    NullLit,
    NumberLit,
    Or,
    Position,
    Query,
    RelativeDateLit,
    StringLit,
    error_message,
    malformed,
)

Row = Mapping[str, JsonValue]
SchemaFor = Callable[[str], Mapping[str, ObjectDef]]


class RecordSource(Protocol):
    """What SOQL needs from the record store (``store.py`` satisfies it)."""

    def rows(
        self, org_id: str, object_name: str, /, *, include_deleted: bool = False
    ) -> Iterable[Mapping[str, JsonValue]]:
        """Every record of one object, all fields in REST JSON form."""
        ...

    def get(self, org_id: str, object_name: str, record_id: str, /) -> Mapping[str, JsonValue] | None:
        """One record by id (15 or 18 characters), or None."""
        ...


class InMemoryRecords:
    """A ``RecordSource`` over plain dicts: for tests, fixtures and one-off evaluations."""

    def __init__(self, rows_by_object: Mapping[str, Iterable[Mapping[str, JsonValue]]]) -> None:
        self._rows = {name: list(rows) for name, rows in rows_by_object.items()}
        self._by_id = {
            (name, str(row["Id"])[:15]): row for name, rows in self._rows.items() for row in rows if row.get("Id")
        }

    def rows(
        self, org_id: str, object_name: str, /, *, include_deleted: bool = False
    ) -> Iterator[Mapping[str, JsonValue]]:
        del org_id  # one org per instance
        for row in self._rows.get(object_name, ()):
            if include_deleted or row.get("IsDeleted") is not True:
                yield row

    def get(self, org_id: str, object_name: str, record_id: str, /) -> Mapping[str, JsonValue] | None:
        del org_id
        return self._by_id.get((object_name, record_id[:15]))


# ---------------------------------------------------------------------------------------------
# Errors


def _invalid_field(soql: str, pos: Position | None, text: str) -> SalesforceError:
    return SalesforceError(400, "INVALID_FIELD", error_message(soql, pos, text))


def _bad_operator(soql: str, pos: Position | None, text: str) -> SalesforceError:
    return SalesforceError(400, "INVALID_QUERY_FILTER_OPERATOR", error_message(soql, pos, text))


_NO_COLUMN = (
    "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, be sure to "
    "append the '__c' after the custom field name. Please reference your WSDL or the describe call for the "
    "appropriate names."
)
_NO_RELATIONSHIP = (
    "Didn't understand relationship '{name}' in field path. If you are attempting to use a custom relationship, "
    "be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe "
    "call for the appropriate names."
)
_NO_TYPE = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to append "
    "the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
)

# Salesforce refuses offsets past 2,000 (use a cursor or a Bulk job instead).
MAX_OFFSET = 2000

# ---------------------------------------------------------------------------------------------
# Field kinds and value normalisation

Kind = Literal["id", "text", "number", "boolean", "date", "datetime", "compound"]
_ID_SHAPE = re.compile(r"^[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?$")


def field_kind(f: FieldDef) -> Kind:
    if f.type in ("id", "reference"):
        return "id"
    if f.type in NUMBER_TYPES:
        return "number"
    if f.type == "boolean":
        return "boolean"
    if f.type == "date":
        return "date"
    if f.type == "datetime":
        return "datetime"
    if f.type == "address":
        return "compound"
    return "text"


def parse_rest_datetime(value: str) -> datetime:
    """REST JSON datetimes (``2024-05-01T12:00:00.000+0000``) → aware datetime; naive means UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _norm_id(v: JsonValue) -> Any:
    return str(v)[:15]


def _norm_text(v: JsonValue) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v).casefold()


def _norm_number(v: JsonValue) -> Any:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float(str(v))


def _norm_bool(v: JsonValue) -> Any:
    return v is True or (isinstance(v, str) and v.lower() == "true")


def _norm_date(v: JsonValue) -> Any:
    return date.fromisoformat(str(v)[:10])


def _norm_datetime(v: JsonValue) -> Any:
    return parse_rest_datetime(str(v))


def _norm_unorderable(v: JsonValue) -> Any:
    return str(v)


_NORMALISERS: dict[Kind, Callable[[JsonValue], Any]] = {
    "id": _norm_id,
    "text": _norm_text,
    "number": _norm_number,
    "boolean": _norm_bool,
    "date": _norm_date,
    "datetime": _norm_datetime,
    "compound": _norm_unorderable,
}

# The SOAP type names Salesforce uses in "must be of type …" messages.
_TYPE_WORD: dict[Kind, str] = {
    "id": "id",
    "text": "string",
    "number": "double",
    "boolean": "boolean",
    "date": "date",
    "datetime": "dateTime",
    "compound": "address",
}


@dataclass(frozen=True)
class _Range:
    """A relative date literal after resolution: ``start <= v < end``."""

    start: Any
    end: Any


# ---------------------------------------------------------------------------------------------
# Relative date literals (TODAY, LAST_N_DAYS:n, …), resolved in UTC


def _month_start(d: date, delta_months: int = 0) -> date:
    months = d.year * 12 + (d.month - 1) + delta_months
    return date(months // 12, months % 12 + 1, 1)


def _week_start(d: date) -> date:
    # Weeks start on Sunday, as in Salesforce's default (en_US) locale.
    return d - timedelta(days=(d.weekday() + 1) % 7)


def _relative_range(lit: RelativeDateLit, today: date, soql: str) -> tuple[date, date]:
    day = timedelta(days=1)
    week = timedelta(days=7)
    fixed: dict[str, Callable[[], tuple[date, date]]] = {
        "TODAY": lambda: (today, today + day),
        "YESTERDAY": lambda: (today - day, today),
        "TOMORROW": lambda: (today + day, today + 2 * day),
        "THIS_WEEK": lambda: (_week_start(today), _week_start(today) + week),
        "LAST_WEEK": lambda: (_week_start(today) - week, _week_start(today)),
        "NEXT_WEEK": lambda: (_week_start(today) + week, _week_start(today) + 2 * week),
        "THIS_MONTH": lambda: (_month_start(today), _month_start(today, 1)),
        "LAST_MONTH": lambda: (_month_start(today, -1), _month_start(today)),
        "NEXT_MONTH": lambda: (_month_start(today, 1), _month_start(today, 2)),
        "LAST_90_DAYS": lambda: (today - 90 * day, today + day),
        "NEXT_90_DAYS": lambda: (today + day, today + 91 * day),
        "THIS_YEAR": lambda: (date(today.year, 1, 1), date(today.year + 1, 1, 1)),
        "LAST_YEAR": lambda: (date(today.year - 1, 1, 1), date(today.year, 1, 1)),
        "NEXT_YEAR": lambda: (date(today.year + 1, 1, 1), date(today.year + 2, 1, 1)),
    }
    with_n: dict[str, Callable[[int], tuple[date, date]]] = {
        "LAST_N_DAYS": lambda n: (today - n * day, today + day),
        "NEXT_N_DAYS": lambda n: (today + day, today + (n + 1) * day),
        "N_DAYS_AGO": lambda n: (today - n * day, today - (n - 1) * day),
        "LAST_N_WEEKS": lambda n: (_week_start(today) - n * week, _week_start(today)),
        "NEXT_N_WEEKS": lambda n: (_week_start(today) + week, _week_start(today) + (n + 1) * week),
        "LAST_N_MONTHS": lambda n: (_month_start(today, -n), _month_start(today)),
        "NEXT_N_MONTHS": lambda n: (_month_start(today, 1), _month_start(today, n + 1)),
        "LAST_N_YEARS": lambda n: (date(today.year - n, 1, 1), date(today.year, 1, 1)),
        "NEXT_N_YEARS": lambda n: (date(today.year + 1, 1, 1), date(today.year + n + 1, 1, 1)),
    }
    if lit.n is None and lit.name in fixed:
        return fixed[lit.name]()
    if lit.n is not None and lit.name in with_n:
        return with_n[lit.name](lit.n)
    shown = lit.name if lit.n is None else f"{lit.name}:{lit.n}"
    raise malformed(soql, lit.pos, f"unexpected token: '{shown}'")


# ---------------------------------------------------------------------------------------------
# Resolved columns and parent lookups


@dataclass(frozen=True)
class Hop:
    """One step up a lookup: ``Account`` through ``AccountId``."""

    relationship: str
    id_field: str
    targets: tuple[ObjectDef, ...]


@dataclass(frozen=True)
class Column:
    """A field path resolved to canonical names."""

    hops: tuple[Hop, ...]
    field: FieldDef

    @property
    def name(self) -> str:
        """``Account.Owner.Name``: the CSV column and duplicate-detection key."""
        return ".".join([*(h.relationship for h in self.hops), self.field.name])

    @property
    def kind(self) -> Kind:
        return field_kind(self.field)


class Resolver:
    """Follows lookups for one execution, caching parents so 100k children cost 100k dict hits."""

    def __init__(self, source: RecordSource, org_id: str, objects: Mapping[str, ObjectDef]) -> None:
        self._source = source
        self._org_id = org_id
        self._by_prefix = {o.key_prefix: o for o in objects.values()}
        self._cache: dict[tuple[str, str], tuple[ObjectDef, Row] | None] = {}

    def parent(self, row: Row, hop: Hop) -> tuple[ObjectDef, Row] | None:
        ref = row.get(hop.id_field)
        if not isinstance(ref, str) or not ref:
            return None
        key = (hop.id_field, ref)
        if key in self._cache:
            return self._cache[key]
        target = hop.targets[0] if len(hop.targets) == 1 else self._by_prefix.get(ref[:3])
        found: tuple[ObjectDef, Row] | None = None
        if target is not None and target in hop.targets:
            record = self._source.get(self._org_id, target.name, ref)
            # A deleted parent reads as an empty lookup, as the org clears such lookups.
            if record is not None and record.get("IsDeleted") is not True:
                found = (target, record)
        self._cache[key] = found
        return found


def compound_value(f: FieldDef, obj: ObjectDef, row: Row) -> JsonValue | dict[str, JsonValue]:
    """An address compound in REST form, built from its components when the row lacks it."""
    stored = row.get(f.name)
    if stored is not None:
        return stored
    parts: dict[str, JsonValue] = {}
    for child in obj.fields:
        if child.compound_field_name == f.name and child.compound_component:
            component = child.compound_component
            parts[component[0].lower() + component[1:]] = row.get(child.name)
    if all(v is None for v in parts.values()):
        return None
    parts.setdefault("geocodeAccuracy", None)
    return dict(sorted(parts.items()))


Getter = Callable[[Row, Resolver], Any]


def _getter(column: Column, root: ObjectDef) -> Getter:
    name = column.field.name
    hops = column.hops
    compound = column.kind == "compound"

    if not hops and not compound:
        return lambda row, _res: row.get(name)

    def get(row: Row, res: Resolver) -> Any:
        obj, current = root, row
        for hop in hops:
            parent = res.parent(current, hop)
            if parent is None:
                return None
            obj, current = parent
        if compound:
            return compound_value(column.field, obj, current)
        return current.get(name)

    return get


# ---------------------------------------------------------------------------------------------
# The compiled plan


@dataclass(frozen=True)
class AggregateColumn:
    alias: str
    column: Column | None  # None: COUNT() counted rows


@dataclass(frozen=True)
class _SortKey:
    getter: Getter
    normalise: Callable[[JsonValue], Any]
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class Plan:
    """A query ready to run: resolved names, typed literals, closures."""

    soql: str
    obj: ObjectDef
    objects: Mapping[str, ObjectDef]
    mode: Literal["records", "count", "aggregate"]
    columns: tuple[Column, ...]
    aggregates: tuple[AggregateColumn, ...]
    predicate: Callable[[Row, Resolver], bool] | None
    sort_keys: tuple[_SortKey, ...]
    limit: int | None
    offset: int
    getters: tuple[Getter, ...] = field(default=())

    @property
    def column_names(self) -> list[str]:
        if self.mode == "aggregate":
            return [a.alias for a in self.aggregates]
        return [c.name for c in self.columns]


def _objects_by_lower(objects: Mapping[str, ObjectDef]) -> dict[str, ObjectDef]:
    return {o.name.lower(): o for o in objects.values()}


class _Compiler:
    def __init__(self, soql: str, query: Query, objects: Mapping[str, ObjectDef], now: datetime) -> None:
        self.soql = soql
        self.query = query
        self.objects = objects
        self.by_lower = _objects_by_lower(objects)
        self.today = now.astimezone(UTC).date()
        obj = self.by_lower.get(query.object_name.lower())
        if obj is None:
            raise SalesforceError(
                400, "INVALID_TYPE", error_message(soql, query.object_pos, _NO_TYPE.format(name=query.object_name))
            )
        self.obj = obj

    # -- names ---------------------------------------------------------------------------------

    def resolve(self, path: FieldPath) -> Column:
        parts = list(path.parts)
        if len(parts) > 1:
            head = parts[0].lower()
            alias = (self.query.alias or "").lower()
            has_relationship = any(
                (f.relationship_name or "").lower() == head for f in self.obj.fields if f.type == "reference"
            )
            if head == alias or (head == self.obj.name.lower() and not has_relationship):
                parts = parts[1:]
        current = self.obj
        hops: list[Hop] = []
        for part in parts[:-1]:
            ref = next(
                (
                    f
                    for f in current.fields
                    if f.type == "reference" and (f.relationship_name or "").lower() == part.lower()
                ),
                None,
            )
            targets = tuple(
                self.by_lower[t.lower()] for t in (ref.reference_to if ref else ()) if t.lower() in self.by_lower
            )
            if ref is None or not targets or ref.relationship_name is None:
                raise _invalid_field(self.soql, path.pos, _NO_RELATIONSHIP.format(name=part))
            hops.append(Hop(ref.relationship_name, ref.name, targets))
            current = targets[0]
        last = parts[-1]
        fdef = current.field(last)
        if fdef is None and len(hops) > 0:
            fdef = next((t.field(last) for t in hops[-1].targets if t.field(last) is not None), None)
        if fdef is None:
            raise _invalid_field(self.soql, path.pos, _NO_COLUMN.format(name=last, entity=current.name))
        return Column(tuple(hops), fdef)

    def _filterable(self, column: Column, path: FieldPath, what: str) -> None:
        f = column.field
        if column.kind == "compound" or (f.type == "textarea" and f.length > 255):
            raise _invalid_field(self.soql, path.pos, f"field '{f.name}' can not be {what} in a query call")

    # -- literals ------------------------------------------------------------------------------

    def literal(self, column: Column, path: FieldPath, lit: LiteralValue) -> Any:
        """The literal in the field's comparable form: a value, a ``_Range``, or None for null."""
        kind = column.kind
        if isinstance(lit, NullLit):
            return None
        wrong = _invalid_field(
            self.soql,
            path.pos,
            f"value of filter criterion for field '{column.field.name}' must be of type {_TYPE_WORD[kind]} and "
            + ("should be enclosed in quotes" if kind in ("id", "text") else "should not be enclosed in quotes"),
        )
        if kind == "id":
            if not isinstance(lit, StringLit):
                raise wrong
            if not _ID_SHAPE.match(lit.value):
                raise _bad_operator(self.soql, path.pos, f"invalid ID field: {lit.value}")
            return lit.value[:15]
        if kind == "text":
            if not isinstance(lit, StringLit):
                raise wrong
            return lit.value.casefold()
        if kind == "number":
            if not isinstance(lit, NumberLit):
                raise wrong
            return lit.value
        if kind == "boolean":
            if not isinstance(lit, BoolLit):
                raise wrong
            return lit.value
        if kind == "date":
            if isinstance(lit, DateLit):
                return lit.value
            if isinstance(lit, RelativeDateLit):
                return _Range(*_relative_range(lit, self.today, self.soql))
            raise wrong
        if kind == "datetime":
            if isinstance(lit, DateTimeLit):
                return lit.value
            if isinstance(lit, RelativeDateLit):
                start, end = _relative_range(lit, self.today, self.soql)
                return _Range(datetime.combine(start, time(), UTC), datetime.combine(end, time(), UTC))
            raise wrong
        raise wrong

    # -- conditions ----------------------------------------------------------------------------

    def condition(self, cond: Condition) -> Callable[[Row, Resolver], bool]:
        if isinstance(cond, And):
            return functools.reduce(_both, [self.condition(c) for c in cond.items])
        if isinstance(cond, Or):
            return functools.reduce(_either, [self.condition(c) for c in cond.items])
        if isinstance(cond, Not):
            inner = self.condition(cond.item)
            return lambda row, res: not inner(row, res)
        if isinstance(cond, Comparison):
            return self.comparison(cond)
        if isinstance(cond, InList):
            return self.in_list(cond)
        return self.like(cond)

    def comparison(self, cond: Comparison) -> Callable[[Row, Resolver], bool]:
        column = self.resolve(cond.path)
        self._filterable(column, cond.path, "filtered")
        getter = _getter(column, self.obj)
        norm = _NORMALISERS[column.kind]
        value = self.literal(column, cond.path, cond.value)
        op = cond.op
        if column.kind == "boolean" and op not in ("=", "!="):
            raise _bad_operator(self.soql, cond.path.pos, f"invalid operator on boolean field: {op}")
        if value is None:
            if op == "=":
                return lambda row, res: getter(row, res) is None
            if op == "!=":
                return lambda row, res: getter(row, res) is not None
            return lambda row, res: False
        if isinstance(value, _Range):
            return _range_predicate(getter, norm, op, value)
        compare = _OPERATORS[op]
        null_result = op == "!="

        def predicate(row: Row, res: Resolver) -> bool:
            v = getter(row, res)
            if v is None:
                return null_result
            return bool(compare(norm(v), value))

        return predicate

    def in_list(self, cond: InList) -> Callable[[Row, Resolver], bool]:
        column = self.resolve(cond.path)
        self._filterable(column, cond.path, "filtered")
        getter = _getter(column, self.obj)
        norm = _NORMALISERS[column.kind]
        converted = [self.literal(column, cond.path, lit) for lit in cond.values]
        has_null = any(v is None for v in converted)
        ranges = [v for v in converted if isinstance(v, _Range)]
        values = {v for v in converted if v is not None and not isinstance(v, _Range)}
        negated = cond.negated

        def member(row: Row, res: Resolver) -> bool:
            v = getter(row, res)
            if v is None:
                return has_null
            n = norm(v)
            return n in values or any(r.start <= n < r.end for r in ranges)

        if negated:
            return lambda row, res: not member(row, res)
        return member

    def like(self, cond: Like) -> Callable[[Row, Resolver], bool]:
        column = self.resolve(cond.path)
        self._filterable(column, cond.path, "filtered")
        if column.kind != "text":
            raise _bad_operator(self.soql, cond.path.pos, f"invalid operator on {_TYPE_WORD[column.kind]} field: LIKE")
        getter = _getter(column, self.obj)
        regex = like_regex(cond.pattern.raw or cond.pattern.value)

        def predicate(row: Row, res: Resolver) -> bool:
            v = getter(row, res)
            return v is not None and regex.fullmatch(str(v)) is not None

        return predicate

    # -- the whole query -----------------------------------------------------------------------

    def plan(self) -> Plan:
        q = self.query
        counts = [item for item in q.select if isinstance(item, Count)]
        fields = [item for item in q.select if isinstance(item, FieldPath)]
        mode: Literal["records", "count", "aggregate"] = "records"
        columns: list[Column] = []
        aggregates: list[AggregateColumn] = []
        if counts:
            if any(c.path is None for c in counts):
                if len(q.select) > 1:
                    raise malformed(self.soql, q.object_pos, "COUNT() must be the only element in the SELECT list")
                mode = "count"
            else:
                if fields:
                    raise malformed(self.soql, fields[0].pos, f"Field must be grouped or aggregated: {fields[0].text}")
                mode = "aggregate"
                for i, c in enumerate(counts):
                    assert c.path is not None
                    aggregates.append(AggregateColumn(c.alias or f"expr{i}", self.resolve(c.path)))
                aliases = [a.alias.lower() for a in aggregates]
                if len(set(aliases)) != len(aliases):
                    raise malformed(self.soql, q.object_pos, "duplicate alias in SELECT list")
        else:
            seen: set[str] = set()
            for path in fields:
                column = self.resolve(path)
                if column.name.lower() in seen:
                    raise malformed(self.soql, path.pos, f"duplicate field selected: {column.name}")
                seen.add(column.name.lower())
                columns.append(column)
        if mode == "aggregate" and q.order_by:
            first = q.order_by[0].path
            raise malformed(self.soql, first.pos, f"Ordered field must be grouped or aggregated: {first.text}")
        sort_keys: list[_SortKey] = []
        for key in q.order_by:
            column = self.resolve(key.path)
            self._filterable(column, key.path, "sorted")
            nulls_first = (not key.descending) if key.nulls_first is None else key.nulls_first
            sort_keys.append(
                _SortKey(_getter(column, self.obj), _NORMALISERS[column.kind], key.descending, nulls_first)
            )
        if q.offset is not None and q.offset > MAX_OFFSET:
            raise SalesforceError(400, "NUMBER_OUTSIDE_VALID_RANGE", f"Maximum SOQL offset allowed is {MAX_OFFSET}")
        predicate = self.condition(q.where) if q.where is not None else None
        return Plan(
            soql=self.soql,
            obj=self.obj,
            objects=self.objects,
            mode=mode,
            columns=tuple(columns),
            aggregates=tuple(aggregates),
            predicate=predicate,
            sort_keys=tuple(sort_keys),
            limit=q.limit,
            offset=q.offset or 0,
            getters=tuple(_getter(c, self.obj) for c in columns),
        )


Predicate = Callable[[Row, Resolver], bool]


# Nested two-way closures: cheaper per row than all()/any() over a generator.
def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda row, res: a(row, res) and b(row, res)


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda row, res: a(row, res) or b(row, res)


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _range_predicate(
    getter: Getter, norm: Callable[[JsonValue], Any], op: str, rng: _Range
) -> Callable[[Row, Resolver], bool]:
    inside: dict[str, Callable[[Any], bool]] = {
        "=": lambda n: rng.start <= n < rng.end,
        "!=": lambda n: not (rng.start <= n < rng.end),
        "<": lambda n: n < rng.start,
        "<=": lambda n: n < rng.end,
        ">": lambda n: n >= rng.end,
        ">=": lambda n: n >= rng.start,
    }
    test = inside[op]
    null_result = op == "!="

    def predicate(row: Row, res: Resolver) -> bool:
        v = getter(row, res)
        return null_result if v is None else test(norm(v))

    return predicate


def like_regex(pattern: str) -> re.Pattern[str]:
    """LIKE's ``%`` and ``_`` as a case-insensitive regex; ``\\%`` and ``\\_`` stay literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def compile_query(soql: str, query: Query, objects: Mapping[str, ObjectDef], *, now: datetime | None = None) -> Plan:
    """Check ``query`` against the org's objects; raise the SalesforceError Salesforce would."""
    return _Compiler(soql, query, objects, now or datetime.now(UTC)).plan()


# ---------------------------------------------------------------------------------------------
# Execution


@dataclass(frozen=True)
class Execution:
    """The rows a query selected, in order, plus what projections need to render them."""

    plan: Plan
    rows: list[Row]
    resolver: Resolver
    # COUNT(): the number of matching rows (after OFFSET/LIMIT); otherwise len(rows).
    count: int


def _sort_value(key: _SortKey) -> Callable[[Row, Resolver], tuple[Any, ...]]:
    # Tuples keep None away from real values: (rank,) for nulls, (1, value) otherwise.
    null_rank = (2,) if key.nulls_first == key.descending else (0,)
    getter, norm = key.getter, key.normalise

    def value(row: Row, res: Resolver) -> tuple[Any, ...]:
        v = getter(row, res)
        return null_rank if v is None else (1, norm(v))

    return value


def execute(plan: Plan, source: RecordSource, org_id: str, *, include_deleted: bool = False) -> Execution:
    """Filter, sort, offset and limit in O(n log n); rows are the source's mappings."""
    resolver = Resolver(source, org_id, plan.objects)
    predicate = plan.predicate
    matched: list[Row] = []
    for row in source.rows(org_id, plan.obj.name, include_deleted=include_deleted):
        if not include_deleted and row.get("IsDeleted") is True:
            continue
        if predicate is None or predicate(row, resolver):
            matched.append(row)
    directions = {key.descending for key in plan.sort_keys}
    if len(directions) == 1:
        values = [_sort_value(key) for key in plan.sort_keys]
        matched.sort(key=lambda r: tuple(v(r, resolver) for v in values), reverse=plan.sort_keys[0].descending)
    else:
        # Stable sorts from the last key to the first give a multi-key sort with mixed directions.
        for key in reversed(plan.sort_keys):
            value = _sort_value(key)
            matched.sort(key=lambda r, value=value: value(r, resolver), reverse=key.descending)  # type: ignore[misc]
    end = None if plan.limit is None else plan.offset + plan.limit
    rows = matched[plan.offset : end] if (plan.offset or end is not None) else matched
    if plan.mode == "count":
        return Execution(plan, [], resolver, len(rows))
    if plan.mode == "aggregate":
        aggregate: dict[str, JsonValue] = {}
        for agg in plan.aggregates:
            assert agg.column is not None
            getter = _getter(agg.column, plan.obj)
            aggregate[agg.alias] = sum(1 for r in matched if getter(r, resolver) is not None)
        return Execution(plan, [aggregate], resolver, 1)
    return Execution(plan, rows, resolver, len(rows))


# ---------------------------------------------------------------------------------------------
# Projections


def _sobject_url(version: str, obj: str, record_id: JsonValue) -> str:
    return f"/services/data/v{version}/sobjects/{obj}/{record_id}"


@dataclass
class _Node:
    """Selected fields of one object level, in first-mention order, with nested lookups."""

    items: list[tuple[str, Any]] = field(default_factory=list)  # ("field", FieldDef) | ("rel", (Hop, _Node))
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(columns: Sequence[Column]) -> _Node:
    root = _Node()
    for column in columns:
        node = root
        for hop in column.hops:
            child = node.children.get(hop.relationship)
            if child is None:
                child = _Node()
                node.children[hop.relationship] = child
                node.items.append(("rel", (hop, child)))
            node = child
        node.items.append(("field", column.field))
    return root


class RestRenderer:
    """Renders selected rows as REST query records (``attributes`` plus nested parents)."""

    def __init__(self, execution: Execution, version: str) -> None:
        self._execution = execution
        self._version = version
        self._tree = _tree(execution.plan.columns)
        columns = execution.plan.columns
        # Most queries select plain fields of one object: render those without the tree walk.
        flat = all(not c.hops and c.kind != "compound" for c in columns)
        self._flat = [c.field.name for c in columns] if flat else None
        self._url_prefix = _sobject_url(version, execution.plan.obj.name, "")

    def record(self, row: Row) -> dict[str, Any]:
        plan = self._execution.plan
        if plan.mode == "aggregate":
            return {"attributes": {"type": "AggregateResult"}, **row}
        if self._flat is not None:
            out: dict[str, Any] = {"attributes": {"type": plan.obj.name, "url": self._url_prefix + str(row.get("Id"))}}
            for name in self._flat:
                out[name] = row.get(name)
            return out
        return self._render(plan.obj, row, self._tree)

    def _render(self, obj: ObjectDef, row: Row, node: _Node) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj.name, "url": _sobject_url(self._version, obj.name, row.get("Id"))}
        }
        resolver = self._execution.resolver
        for kind, item in node.items:
            if kind == "field":
                f: FieldDef = item
                out[f.name] = compound_value(f, obj, row) if f.type == "address" else row.get(f.name)
            else:
                hop, child = item
                parent = resolver.parent(row, hop)
                out[hop.relationship] = None if parent is None else self._render(parent[0], parent[1], child)
        return out


def flat_values(execution: Execution, row: Row) -> list[Any]:
    """One row as a list of column values (Bulk CSV order: the SELECT list)."""
    plan = execution.plan
    if plan.mode == "aggregate":
        return [row.get(a.alias) for a in plan.aggregates]
    res = execution.resolver
    return [g(row, res) for g in plan.getters]
