"""A pair filter: the SOQL WHERE clause that narrows an object pair to some of its records.

One clause serves three purposes, and each shapes what is accepted:

* it is checked when a configuration is applied, every problem named with its position;
* it is appended to backfill queries (``WHERE (<render>)``), so anything accepted must be
  SOQL that Salesforce itself accepts;
* Duplex evaluates it on a record's full current state (CDC changes), so it must select exactly the
  records Salesforce's query would select.

The third purpose is why some valid SOQL is refused: relationship paths, semi-joins, functions and
relative date literals (``TODAY``) depend on other records or on the clock, and ``<``/``>`` on text
depend on the querying user's locale collation. None of them can be decided from one record's state,
so a filter using them would drift from what the query selects. Where Salesforce's acceptance is in
doubt (``<`` on ids and picklists, ``IN`` on checkboxes, ``null`` in a list, text areas) the filter
refuses too: a refusal is a clear message at configuration time, a wrong guess a silent drift.

SOQL semantics that :func:`evaluate` follows (Salesforce's SOQL reference: "Comparison Operators",
"Use null in WHERE", "Query Multi-Select Picklists"):

* there is no three-valued logic: a null field satisfies ``!= x`` and ``NOT IN (...)`` and never
  ``=``, a range or LIKE; ``NOT`` is plain negation;
* a checkbox is never null, and ``= null`` on one means ``= false`` (``!= null`` means ``= true``);
* text compares case-insensitively (``=``, ``IN``, ``LIKE``); ids on their first 15 characters,
  case-sensitively; numbers numerically; datetimes as instants;
* ``INCLUDES ('a;b', 'c')`` holds when a and b are both selected, or c is; ``EXCLUDES`` is its negation.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, NoReturn

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken, VisitError

from services.common import salesforce_ids

# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class FilterProblem:
    """One thing wrong with a clause; ``position`` is a 0-based offset into the clause's text."""

    message: str
    position: int
    field: str | None = None

    def __str__(self) -> str:
        return f"column {self.position + 1}: {self.message}"


class FilterError(ValueError):
    """A clause that cannot be used, with every problem found (at least one), in text order."""

    def __init__(self, problems: tuple[FilterProblem, ...]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.position))
        super().__init__("; ".join(str(p) for p in self.problems))


class MissingFieldError(KeyError):
    """The record given to :func:`evaluate` lacks a field the filter reads.

    Never read as null: a filter must not pass (or fail) because the caller held a partial state.
    """

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field

    def __str__(self) -> str:
        return f"the record has no field {self.field!r}, which the filter reads (give the full state)"


# ---------------------------------------------------------------------------------------------
# Syntax tree. Positions are kept for messages but never compared, so that a clause equals its
# rendering parsed again. Nodes check what rendering relies on, so that a hand-built tree can
# never render into text that means something else (a field name that is an expression, say).

_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _position() -> Any:
    return dataclasses.field(default=0, compare=False)


def _check_field(name: str) -> None:
    if not _FIELD_RE.fullmatch(name):
        raise ValueError(f"not a field name: {name!r}")


@dataclass(frozen=True)
class StringValue:
    """A quoted string, decoded (``'O\\'Brien'`` holds ``O'Brien``)."""

    value: str
    position: int = _position()


@dataclass(frozen=True)
class NumberValue:
    value: Decimal
    position: int = _position()

    def __post_init__(self) -> None:
        if not self.value.is_finite():
            raise ValueError(f"not a finite number: {self.value}")


@dataclass(frozen=True)
class BooleanValue:
    value: bool
    position: int = _position()


@dataclass(frozen=True)
class NullValue:
    position: int = _position()


@dataclass(frozen=True)
class DateValue:
    value: date
    position: int = _position()

    def __post_init__(self) -> None:
        if isinstance(self.value, datetime):
            raise TypeError("a DateValue holds a date, not a datetime")


@dataclass(frozen=True)
class DateTimeValue:
    """An instant: timezone-aware, to the millisecond (SOQL's precision); rendered in its own offset."""

    value: datetime
    position: int = _position()

    def __post_init__(self) -> None:
        offset = self.value.utcoffset()
        if offset is None or offset % timedelta(minutes=1) or self.value.microsecond % 1000:
            raise ValueError(f"not a SOQL datetime (aware, whole-minute offset, milliseconds): {self.value!r}")


Value = StringValue | NumberValue | BooleanValue | NullValue | DateValue | DateTimeValue

Operator = Literal["=", "!=", "<", "<=", ">", ">="]
_OPERATORS: dict[str, Operator] = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class Comparison:
    """``field op value``; ``<>`` is read as ``!=``."""

    field: str
    op: Operator
    value: Value
    position: int = _position()
    op_position: int = _position()

    def __post_init__(self) -> None:
        _check_field(self.field)
        if self.op not in _OPERATORS:
            raise ValueError(f"not a comparison operator: {self.op!r}")


@dataclass(frozen=True)
class InList:
    """``field IN (...)``, or ``NOT IN`` when ``negated``."""

    field: str
    values: tuple[Value, ...]
    negated: bool = False
    position: int = _position()
    op_position: int = _position()

    def __post_init__(self) -> None:
        _check_field(self.field)
        if not self.values:
            raise ValueError("IN needs at least one value")


_LIKE_RE = re.compile(r"(?:[^\\]|\\[\\%_])*", re.DOTALL)


@dataclass(frozen=True)
class Like:
    """``field LIKE 'pattern'``.

    ``pattern`` is the string's value with ``\\%``, ``\\_`` and ``\\\\`` left escaped, so that an
    escaped wildcard stays distinct from a real one: a backslash in it always escapes the next
    character, which is one of ``\\ % _``.
    """

    field: str
    pattern: str
    position: int = _position()
    op_position: int = _position()
    pattern_position: int = _position()

    def __post_init__(self) -> None:
        _check_field(self.field)
        if not _LIKE_RE.fullmatch(self.pattern):
            raise ValueError(f"a backslash in a LIKE pattern must escape \\, % or _: {self.pattern!r}")


@dataclass(frozen=True)
class Includes:
    """``field INCLUDES ('a;b', 'c')``, or ``EXCLUDES`` when ``excludes``."""

    field: str
    values: tuple[StringValue, ...]
    excludes: bool = False
    position: int = _position()
    op_position: int = _position()

    def __post_init__(self) -> None:
        _check_field(self.field)
        if not self.values:
            raise ValueError("INCLUDES needs at least one value")


@dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]

    def __post_init__(self) -> None:
        if len(self.items) < 2:
            raise ValueError("AND joins at least two conditions")


@dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]

    def __post_init__(self) -> None:
        if len(self.items) < 2:
            raise ValueError("OR joins at least two conditions")


@dataclass(frozen=True)
class Not:
    item: Condition
    position: int = _position()


Condition = Comparison | InList | Like | Includes | And | Or | Not
Predicate = Comparison | InList | Like | Includes


@dataclass(frozen=True)
class Where:
    """A parsed clause.

    ``field_types`` (lower-cased field name, describe type) is filled in by :func:`validated`. It is
    not part of the clause's identity, but :func:`evaluate` needs it where a literal alone does not
    tell how Salesforce compares: ids (first 15 characters, case-sensitive) and multi-select
    picklists (``=`` compares sets of values). Without it, a quoted literal is compared as text.
    """

    condition: Condition
    field_types: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False, repr=False)


# ---------------------------------------------------------------------------------------------
# Grammar

# SOQL refuses AND and OR side by side without parentheses, hence two separate chains. The grammar
# is wider than what is accepted (paths, bare words, binds, subqueries) so that those are refused
# with a reason instead of a bare "unexpected token". Keywords share NAME's case-insensitivity, so
# the basic lexer retypes a NAME spelled like a keyword into that keyword. Numbers, dates and
# operators are lexed loosely and checked strictly, for the same reason.
_GRAMMAR = r"""
start: condition

?condition: unary | and_chain | or_chain
and_chain: unary (AND unary)+
or_chain: unary (OR unary)+
?unary: NOT unary                             -> negation
      | LPAR condition RPAR                   -> group
      | predicate
?predicate: field OPERATOR value              -> comparison
          | field IN LPAR value_list RPAR     -> in_list
          | field NOT IN LPAR value_list RPAR -> not_in_list
          | field LIKE value                  -> like
          | field INCLUDES LPAR value_list RPAR -> includes
          | field EXCLUDES LPAR value_list RPAR -> excludes
field: NAME (DOT NAME)*
value_list: value (COMMA value)*
value: STRING
     | NUMBER
     | TEMPORAL
     | TRUE
     | FALSE
     | NULL
     | NAME (COLON NUMBER)?
     | COLON NAME
     | SELECT

AND: "and"i
OR: "or"i
NOT: "not"i
IN: "in"i
LIKE: "like"i
INCLUDES: "includes"i
EXCLUDES: "excludes"i
TRUE: "true"i
FALSE: "false"i
NULL: "null"i
SELECT: "select"i

LPAR: "("
RPAR: ")"
COMMA: ","
DOT: "."
COLON: ":"
OPERATOR: /[<>=!]+/
NAME: /[a-z][a-z0-9_]*/i
STRING: /'(?:[^'\\]|\\.)*'/s
TEMPORAL.2: /\d+-\d+-\d+(?:T[\d:.]*(?:Z|[+-][\d:]*)?)?/i
NUMBER: /[+-]?(?:\d+(?:\.\d*)?|\.\d+)/

%ignore /\s+/
"""

_VALUE_START = frozenset({"STRING", "NUMBER", "TEMPORAL", "TRUE", "FALSE", "NULL"})
_CONDITION_START = frozenset({"NAME", "LPAR", "NOT"})
_AFTER_FIELD = frozenset({"OPERATOR", "IN", "LIKE", "INCLUDES", "EXCLUDES"})

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?(Z|[+-]\d{2}:\d{2})")
# SOQL's escapes (either case); \% and \_ belong to LIKE alone, and SOQL has no \u.
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_RELATIVE_DATES = frozenset(
    {
        *(f"{when}_{unit}" for when in ("LAST", "THIS", "NEXT") for unit in ("WEEK", "MONTH", "QUARTER", "YEAR")),
        *(f"{when}_FISCAL_{unit}" for when in ("LAST", "THIS", "NEXT") for unit in ("QUARTER", "YEAR")),
        "YESTERDAY",
        "TODAY",
        "TOMORROW",
        "LAST_90_DAYS",
        "NEXT_90_DAYS",
    }
)
_NOT_SUPPORTED = "not supported in a pair filter"


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=False)


def _fail(message: str, position: int, field: str | None = None) -> NoReturn:
    raise FilterError((FilterProblem(message, position, field),))


def _at(token: Token) -> int:
    """A token's 0-based offset (lark types it optional; the basic lexer always sets it)."""
    return token.start_pos or 0


def _show(token: Token) -> str:
    if token.type == "$END":
        return "the end of the filter"
    return str(token) if token.type == "STRING" else f"'{token}'"


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_where(text: str) -> Where:
    """Parse the text after WHERE; raise :class:`FilterError` on a syntax error or an unsupported construct.

    A syntax error stops parsing, so it is reported alone; unsupported constructs in a clause that
    parses are all reported together.
    """
    where, problems, _ = _parse(text)
    if where is None or problems:
        raise FilterError(problems)
    return where


def _parse(text: str) -> tuple[Where | None, tuple[FilterProblem, ...], frozenset[int]]:
    """The clause (None after a syntax error), its problems, and the positions of the predicates
    those problems make unfit for checking against describe."""
    try:
        if not text.strip():
            _fail("the filter is empty", 0)
        tokens = _lex(text)
        for token in tokens:
            if token.type == "SELECT":
                _fail(f"a semi-join or subquery (IN (SELECT ...)) is {_NOT_SUPPORTED}", _at(token))
            if token.type == "OPERATOR" and str(token) not in _OPERATORS:
                _fail(f"unknown operator '{token}' (the operators are = != <> < <= > >=)", _at(token))
        try:
            tree = _parser().parse(text)
        except UnexpectedToken as exc:
            raise FilterError((_syntax_problem(exc, tokens, text),)) from None
    except FilterError as exc:
        return None, exc.problems, frozenset()
    builder = _Builder()
    try:
        condition: Condition = builder.transform(tree)
    except VisitError as exc:  # pragma: no cover - a bug in the builder, not a user error
        raise exc.orig_exc from None
    return Where(condition), tuple(builder.problems), frozenset(builder.tainted)


def _lex(text: str) -> list[Token]:
    try:
        return list(_parser().lex(text))
    except UnexpectedCharacters as exc:
        at = exc.pos_in_stream or 0
        char = text[at]
        if char == "'":
            _fail(f"unterminated string starting at column {at + 1}", at)
        if char == '"':
            _fail("strings are quoted with single quotes ('...'), not double quotes", at)
        _fail(f"unexpected character {char!r}", at)


def _unclosed(tokens: list[Token], end: int) -> list[Token]:
    """The '(' tokens before offset ``end`` still open there."""
    stack: list[Token] = []
    for token in tokens:
        if _at(token) >= end:
            break
        if token.type == "LPAR":
            stack.append(token)
        elif token.type == "RPAR" and stack:
            stack.pop()
    return stack


def _inside_list(tokens: list[Token], end: int) -> bool:
    """Whether offset ``end`` is inside a value list: IN (, INCLUDES ( or EXCLUDES ( still open."""
    opened = _unclosed(tokens, end)
    if not opened:
        return False
    index = next(i for i, t in enumerate(tokens) if t is opened[-1])
    return index > 0 and tokens[index - 1].type in ("IN", "INCLUDES", "EXCLUDES")


def _syntax_problem(exc: UnexpectedToken, tokens: list[Token], text: str) -> FilterProblem:
    """Name the problem as an operator would see it: what is missing or extra, and where."""
    token: Token = exc.token
    expected: set[str] = set(exc.expected)
    at_end = token.type == "$END"
    position = len(text) if at_end else _at(token)
    before = [t for t in tokens if _at(t) < position]
    previous = before[-1] if before else None
    found = "" if at_end else f", found {_show(token)}"

    if token.type == "RPAR" and not _unclosed(tokens, position):
        return FilterProblem(f"unbalanced parentheses: ')' at column {position + 1} has no matching '('", position)
    if expected & _VALUE_START:
        if previous is not None and previous.type in ("LPAR", "COMMA"):
            return FilterProblem(f"missing value in the list after {_show(previous)}{found}", position)
        after = f" after {_show(previous)}" if previous is not None else ""
        return FilterProblem(f"missing value{after}{found}", position)
    if expected & _AFTER_FIELD and previous is not None and previous.type == "NAME":
        if token.type == "LPAR":
            return FilterProblem(f"function {previous}() is {_NOT_SUPPORTED}", _at(previous), str(previous))
        if token.type == "NAME":
            return FilterProblem(f"unknown operator '{token}'", position)
        if at_end:
            return FilterProblem(f"incomplete condition: field '{previous}' needs an operator and a value", position)
        return FilterProblem(f"missing operator after field '{previous}'{found}", position)
    if token.type in ("AND", "OR") and ({"AND", "OR"} - {token.type}) & expected:
        other = "AND" if token.type == "OR" else "OR"
        return FilterProblem(
            f"{token.type} cannot follow {other} without parentheses: write (a {other} b) {token.type} c"
            f" or a {other} (b {token.type} c)",
            position,
        )
    if expected & _CONDITION_START:
        if token.type in ("AND", "OR"):
            where = "before" if previous is None or previous.type == "LPAR" else f"between {previous} and"
            return FilterProblem(f"missing condition {where} {token.type}", position)
        if token.type == "RPAR" and previous is not None and previous.type == "LPAR":
            return FilterProblem("empty parentheses", _at(previous))
        if (at_end or token.type == "RPAR") and previous is not None:
            return FilterProblem(f"missing condition after {_show(previous)}", position)
        return FilterProblem(f"a condition must start with a field name{found}", position)
    if at_end and "RPAR" in expected and (opened := _unclosed(tokens, position)):
        at = _at(opened[-1])
        return FilterProblem(f"unbalanced parentheses: '(' at column {at + 1} is never closed", at)
    if "COMMA" in expected and _inside_list(tokens, position):
        return FilterProblem(f"expected ',' or ')' in the value list{found}", position)
    if "$END" in expected or expected <= {"AND", "OR", "RPAR", "COMMA"}:
        hint = " (missing AND or OR?)" if token.type in _CONDITION_START else ""
        return FilterProblem(f"unexpected {_show(token)} after a complete condition{hint}", position)
    wanted = " or ".join(sorted(expected))
    after = f" after {_show(previous)}" if previous is not None else ""
    return FilterProblem(f"unexpected {_show(token)}{after}; expected {wanted}", position)


@dataclass(frozen=True)
class _Quoted:
    """A string token not yet decoded: LIKE decodes it differently from every other operator."""

    token: Token

    @property
    def position(self) -> int:
        return _at(self.token)


@dataclass(frozen=True)
class _Refused:
    """Stands in for a value already reported, so that parsing goes on to find more problems."""

    position: int


_Parsed = Value | _Quoted | _Refused


@v_args(inline=True)
class _Builder(Transformer[Token, Condition]):
    """Parse tree to the dataclasses above, collecting every unsupported construct it meets."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[FilterProblem] = []
        # Positions of predicates with a refused part (see _mark).
        self.tainted: set[int] = set()

    def _refuse(self, message: str, position: int, field: str | None = None) -> None:
        self.problems.append(FilterProblem(message, position, field))

    # -- conditions ----------------------------------------------------------------------------

    def start(self, condition: Condition) -> Condition:
        return condition

    def and_chain(self, *items: Condition | Token) -> And:
        return And(tuple(i for i in items if not isinstance(i, Token)))

    def or_chain(self, *items: Condition | Token) -> Or:
        return Or(tuple(i for i in items if not isinstance(i, Token)))

    def negation(self, keyword: Token, item: Condition) -> Not:
        return Not(item, _at(keyword))

    def group(self, _open: Token, condition: Condition, _close: Token) -> Condition:
        return condition

    def field(self, *parts: Token) -> Token:
        names = [p for p in parts if p.type == "NAME"]
        if len(names) > 1:
            path = ".".join(names)
            self._refuse(
                f"relationship path '{path}' is {_NOT_SUPPORTED}: use a field of the object itself",
                _at(parts[0]),
                path,
            )
            self.tainted.add(_at(parts[0]))
        return parts[0]

    def _mark(self, name: Token, values: tuple[_Parsed, ...], problems_before: int) -> None:
        """Remember a predicate holding a refused part: checking it against describe would mislead."""
        if any(isinstance(v, _Refused) for v in values) or len(self.problems) > problems_before:
            self.tainted.add(_at(name))

    def comparison(self, name: Token, op: Token, value: _Parsed) -> Comparison:
        before = len(self.problems)
        node = Comparison(str(name), _OPERATORS[str(op)], self._value(value), _at(name), _at(op))
        self._mark(name, (value,), before)
        return node

    def in_list(self, name: Token, op: Token, _o: Token, values: tuple[_Parsed, ...], _c: Token) -> InList:
        before = len(self.problems)
        node = InList(str(name), tuple(self._value(v) for v in values), False, _at(name), _at(op))
        self._mark(name, values, before)
        return node

    def not_in_list(
        self, name: Token, op: Token, _in: Token, _o: Token, values: tuple[_Parsed, ...], _c: Token
    ) -> InList:
        return dataclasses.replace(self.in_list(name, op, _o, values, _c), negated=True)

    def like(self, name: Token, op: Token, pattern: _Parsed) -> Like:
        before = len(self.problems)
        text = ""
        if isinstance(pattern, _Quoted):
            text = self._decode(pattern.token, like=True)
        elif not isinstance(pattern, _Refused):
            self._refuse("LIKE needs a quoted pattern, e.g. 'Acme%'", pattern.position, str(name))
        self._mark(name, (pattern,), before)
        return Like(str(name), text, _at(name), _at(op), pattern.position)

    def includes(self, name: Token, op: Token, _o: Token, values: tuple[_Parsed, ...], _c: Token) -> Includes:
        before = len(self.problems)
        node = Includes(str(name), self._strings(values, "INCLUDES", name), False, _at(name), _at(op))
        self._mark(name, values, before)
        return node

    def excludes(self, name: Token, op: Token, _o: Token, values: tuple[_Parsed, ...], _c: Token) -> Includes:
        before = len(self.problems)
        node = Includes(str(name), self._strings(values, "EXCLUDES", name), True, _at(name), _at(op))
        self._mark(name, values, before)
        return node

    def _strings(self, values: tuple[_Parsed, ...], op: str, name: Token) -> tuple[StringValue, ...]:
        strings: list[StringValue] = []
        for value in values:
            if isinstance(value, _Quoted):
                strings.append(StringValue(self._decode(value.token, like=False), value.position))
            elif not isinstance(value, _Refused):
                self._refuse(f"{op} takes quoted picklist values, e.g. ('Gold;Silver')", value.position, str(name))
        return tuple(strings) or (StringValue(""),)

    def _value(self, value: _Parsed) -> Value:
        if isinstance(value, _Quoted):
            return StringValue(self._decode(value.token, like=False), value.position)
        if isinstance(value, _Refused):
            return NullValue(value.position)
        return value

    # -- values --------------------------------------------------------------------------------

    def value_list(self, *items: _Parsed | Token) -> tuple[_Parsed, ...]:
        return tuple(i for i in items if not isinstance(i, Token))

    def value(self, first: Token, *rest: Token) -> _Parsed:
        at = _at(first)
        kind = first.type
        if kind == "STRING":
            return _Quoted(first)
        if kind == "NUMBER":
            if not _NUMBER_RE.fullmatch(first):
                self._refuse(f"invalid number {first} (write digits, an optional '-' and decimals: -12.5)", at)
                return _Refused(at)
            return NumberValue(Decimal(str(first)), at)
        if kind == "TEMPORAL":
            return self._temporal(first)
        if kind in ("TRUE", "FALSE"):
            return BooleanValue(kind == "TRUE", at)
        if kind == "NULL":
            return NullValue(at)
        if kind == "COLON":
            self._refuse(f"bind variable ':{rest[0]}' is {_NOT_SUPPORTED}: write the value itself", at)
        elif rest or first.upper() in _RELATIVE_DATES:
            shown = f"{first}:{rest[1]}" if rest else str(first)
            self._refuse(f"date literal {shown} is {_NOT_SUPPORTED}: its value depends on when the query runs", at)
        else:
            self._refuse(f"'{first}' is not a value: quote strings ('{first}'); SOQL cannot compare two fields", at)
        return _Refused(at)

    def _decode(self, token: Token, *, like: bool) -> str:
        raw = str(token)[1:-1]
        out: list[str] = []
        i = 0
        while i < len(raw):
            ch = raw[i]
            i += 1
            if ch != "\\":
                out.append(ch)
                continue
            esc = raw[i]
            i += 1
            if like and esc in "\\%_":
                out.append("\\" + esc)  # kept escaped: see Like.pattern
            elif esc.lower() in _ESCAPES:
                out.append(_ESCAPES[esc.lower()])
            elif esc in "%_":
                self._refuse(f"'\\{esc}' only has a meaning in a LIKE pattern; write '{esc}'", _at(token) + i - 1)
            else:
                self._refuse(f"invalid escape sequence '\\{esc}' in a string", _at(token) + i - 1)
        return "".join(out)

    def _temporal(self, token: Token) -> _Parsed:
        text, at = str(token), _at(token)
        if m := _DATE_RE.fullmatch(text):
            try:
                return DateValue(date(int(m[1]), int(m[2]), int(m[3])), at)
            except ValueError:
                self._refuse(f"invalid date {text}", at)
                return _Refused(at)
        m = _DATETIME_RE.fullmatch(text)
        if m is None:
            self._refuse(f"invalid date or datetime {text} (write 2024-01-31 or 2024-01-31T09:30:00Z)", at)
            return _Refused(at)
        try:
            zone = UTC if m[8] == "Z" else _offset(m[8])
            millis = int(m[7] or 0)
            parts = (int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]))
            return DateTimeValue(datetime(*parts, millis * 1000, zone), at)
        except ValueError:
            self._refuse(f"invalid datetime {text}", at)
            return _Refused(at)


def _offset(zone: str) -> timezone:
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(zone)
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if zone[0] == "-" else delta)


# ---------------------------------------------------------------------------------------------
# Walking the tree


def _predicates(condition: Condition) -> Iterator[Predicate]:
    """Every predicate, in text order."""
    if isinstance(condition, And | Or):
        for item in condition.items:
            yield from _predicates(item)
    elif isinstance(condition, Not):
        yield from _predicates(condition.item)
    else:
        yield condition


def fields_of(where: Where) -> frozenset[str]:
    """The field names the clause reads, as written."""
    return frozenset(p.field for p in _predicates(where.condition))


# ---------------------------------------------------------------------------------------------
# Checking against describe

# Describe types by how a filter may use them.
_TEXT = frozenset({"string", "email", "phone", "url", "picklist", "combobox"})
_NUMBER = frozenset({"int", "double", "currency", "percent", "long"})
_IDS = frozenset({"id", "reference"})
_ORDERING = frozenset({"<", "<=", ">", ">="})
_EXAMPLES = {"date": "2024-01-31", "datetime": "2024-01-31T09:30:00Z"}


def check_where(where: Where, fields: Mapping[str, str], *, object_name: str) -> tuple[FilterProblem, ...]:
    """Every problem of the clause against ``fields`` (describe: field name to type), in text order.

    Names are matched case-insensitively, as Salesforce matches them.
    """
    return _check(where, fields, object_name, frozenset())


def validated(text: str, fields: Mapping[str, str], *, object_name: str) -> Where:
    """Parse and check ``text``, raising :class:`FilterError` with every problem found.

    The result carries the field types :func:`evaluate` needs.
    """
    where, problems, tainted = _parse(text)
    if where is None:
        raise FilterError(problems)
    problems += _check(where, fields, object_name, tainted)
    if problems:
        raise FilterError(problems)
    by_lower = {name.lower(): kind.lower() for name, kind in fields.items()}
    used = sorted({name.lower() for name in fields_of(where)})
    return dataclasses.replace(where, field_types=tuple((name, by_lower[name]) for name in used))


def _check(
    where: Where, fields: Mapping[str, str], object_name: str, skipped: frozenset[int]
) -> tuple[FilterProblem, ...]:
    by_lower = {name.lower(): (name, kind.lower()) for name, kind in fields.items()}
    problems: list[FilterProblem] = []
    for predicate in _predicates(where.condition):
        if predicate.position in skipped:
            continue
        found = by_lower.get(predicate.field.lower())
        if found is None:
            problems.append(_unknown_field(predicate, by_lower, object_name))
        else:
            problems.extend(_check_predicate(predicate, *found))
    return tuple(sorted(problems, key=lambda p: p.position))


def _unknown_field(predicate: Predicate, by_lower: Mapping[str, tuple[str, str]], object_name: str) -> FilterProblem:
    message = f"unknown field '{predicate.field}' on {object_name}"
    close = difflib.get_close_matches(predicate.field.lower(), list(by_lower), n=1, cutoff=0.75)
    if close:
        message += f"; did you mean {by_lower[close[0]][0]}?"
    return FilterProblem(message, predicate.position, predicate.field)


def _check_predicate(predicate: Predicate, name: str, kind: str) -> Iterator[FilterProblem]:
    def problem(message: str, position: int) -> FilterProblem:
        return FilterProblem(message, position, predicate.field)

    if kind == "textarea":
        yield problem(
            f"{name} is a text area, which a pair filter cannot use: Salesforce cannot filter long text areas",
            predicate.position,
        )
        return
    if kind not in _TEXT | _NUMBER | _IDS | {"boolean", "date", "datetime", "multipicklist"}:
        yield problem(f"{name} is of type {kind}, which is {_NOT_SUPPORTED}", predicate.position)
        return
    op_problem = _operator_problem(predicate, name, kind)
    if op_problem is not None:
        yield problem(op_problem, predicate.op_position)
        return
    if isinstance(predicate, Comparison):
        value = predicate.value
        if isinstance(value, NullValue):
            if predicate.op in _ORDERING:
                yield problem(f"null can only be compared with = or != (not {predicate.op})", value.position)
        elif (message := _literal_problem(value, name, kind)) is not None:
            yield problem(message, value.position)
    elif isinstance(predicate, InList):
        for value in predicate.values:
            if isinstance(value, NullValue):
                yield problem(
                    f"null is only allowed with = and != (write {name} = null OR {name} IN (...))", value.position
                )
            elif (message := _literal_problem(value, name, kind)) is not None:
                yield problem(message, value.position)


def _operator_problem(predicate: Predicate, name: str, kind: str) -> str | None:
    """Why the operator cannot apply to a field of ``kind``, or None when it can."""
    if isinstance(predicate, Includes):
        op = "EXCLUDES" if predicate.excludes else "INCLUDES"
        if kind != "multipicklist":
            return f"{op} only applies to multi-select picklists, and {name} is of type {kind}"
        return None
    if kind == "multipicklist":
        if isinstance(predicate, Comparison) and predicate.op in ("=", "!="):
            return None
        shown = _operator_text(predicate)
        return f"{shown} does not apply to multi-select picklist {name}; use =, !=, INCLUDES or EXCLUDES"
    if isinstance(predicate, Like):
        if kind in _TEXT:
            return None
        return f"LIKE only matches text, and {name} is of type {kind}"
    if isinstance(predicate, InList):
        if kind == "boolean":
            return f"{_operator_text(predicate)} is {_NOT_SUPPORTED} on boolean field {name}; use = true or = false"
        return None
    if predicate.op not in _ORDERING:
        return None
    if kind == "boolean":
        return f"'{predicate.op}' does not apply to boolean field {name}; use = or !="
    if kind in _IDS:
        return f"'{predicate.op}' on id field {name} is {_NOT_SUPPORTED}; use =, !=, IN or NOT IN"
    if kind in _TEXT:
        return (
            f"'{predicate.op}' on text field {name} is {_NOT_SUPPORTED}: Salesforce orders text by the"
            " querying user's locale, which Duplex cannot reproduce"
        )
    return None


def _operator_text(predicate: Predicate) -> str:
    if isinstance(predicate, Comparison):
        return f"'{predicate.op}'"
    if isinstance(predicate, InList):
        return "NOT IN" if predicate.negated else "IN"
    if isinstance(predicate, Like):
        return "LIKE"
    return "EXCLUDES" if predicate.excludes else "INCLUDES"


def _literal_problem(value: Value, name: str, kind: str) -> str | None:
    """Why ``value`` cannot be compared with a field of ``kind``, or None when it can."""
    if kind in _TEXT or kind == "multipicklist":
        if isinstance(value, StringValue):
            return None
        return f"{name} is of type {kind}: its value must be a quoted string, e.g. '{_literal(value)}'"
    if kind in _IDS:
        if not isinstance(value, StringValue):
            return f"{name} is of type {kind}: its value must be a quoted id"
        # An 18-character id must carry its own checksum: then comparing the first 15 characters,
        # case-sensitively, is exactly Salesforce's identity (a miscased 18-character id is refused).
        if not salesforce_ids.is_valid(value.value):
            return f"'{value.value}' is not a Salesforce id (15 characters, or 18 with a matching suffix)"
        return None
    if kind in _NUMBER:
        if isinstance(value, NumberValue):
            return None
        hint = f", e.g. {value.value}" if isinstance(value, StringValue) and _NUMBER_RE.fullmatch(value.value) else ""
        return f"{name} is of type {kind}: its value must be an unquoted number{hint}"
    if kind == "boolean":
        if isinstance(value, BooleanValue):
            return None
        return f"{name} is of type boolean: its value must be true or false, unquoted"
    wanted = DateValue if kind == "date" else DateTimeValue
    if isinstance(value, wanted):
        return None
    return f"{name} is of type {kind}: its value must be an unquoted {kind}, e.g. {_EXAMPLES[kind]}"


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(where: Where, record: Mapping[str, object]) -> bool:
    """Whether Salesforce's ``WHERE <clause>`` would select ``record`` (its full current state).

    ``record`` holds values as decoded from Salesforce JSON or CDC: str, int, float, Decimal, bool,
    None; dates and datetimes as ISO strings or ``date``/``datetime`` (a naive datetime is UTC);
    multi-select picklists as ``'a;b'`` or a tuple of values. Keys are matched case-insensitively.
    Raises :class:`MissingFieldError` when a field the clause reads is absent (even one whose value
    would not change the outcome), and ``TypeError`` when a value cannot be compared with the
    clause's literal (a string where a number is expected, say).
    """
    values: dict[str, object] = {}
    for key, value in record.items():
        lower = key.lower()
        if lower in values and values[lower] != value:
            raise ValueError(f"the record holds {key!r} twice, with different values")
        values[lower] = value
    for predicate in _predicates(where.condition):
        if predicate.field.lower() not in values:
            raise MissingFieldError(predicate.field)
    return _holds(where.condition, values, dict(where.field_types))


def _holds(condition: Condition, values: Mapping[str, object], types: Mapping[str, str]) -> bool:
    if isinstance(condition, And):
        return all(_holds(item, values, types) for item in condition.items)
    if isinstance(condition, Or):
        return any(_holds(item, values, types) for item in condition.items)
    if isinstance(condition, Not):
        return not _holds(condition.item, values, types)
    key = condition.field.lower()
    value = values[key]
    kind = types.get(key)
    if isinstance(condition, Comparison):
        if condition.op == "=":
            return _equal(condition.field, value, condition.value, kind)
        if condition.op == "!=":
            return not _equal(condition.field, value, condition.value, kind)
        if value is None or isinstance(condition.value, NullValue):
            return False
        mine, theirs = _comparable(condition.field, value, condition.value, kind)
        return bool(_ORDER[condition.op](mine, theirs))
    if isinstance(condition, InList):
        member = any(_equal(condition.field, value, literal, kind) for literal in condition.values)
        return member != condition.negated
    if isinstance(condition, Like):
        if value is None:
            return False
        if not isinstance(value, str):
            raise TypeError(f"{condition.field}: LIKE needs a text value, not {type(value).__name__}")
        return _like_regex(condition.pattern).fullmatch(value) is not None
    selected = _selection(condition.field, value)
    included = any(_selection(condition.field, literal.value) <= selected for literal in condition.values)
    return included != condition.excludes


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _equal(field: str, value: object, literal: Value, kind: str | None) -> bool:
    if isinstance(literal, NullValue):
        # A checkbox is never null: Salesforce reads = null on one as = false.
        return value is None or value is False
    if isinstance(literal, BooleanValue) and value is None:
        value = False
    elif value is None:
        return False
    if isinstance(literal, StringValue) and (kind == "multipicklist" or _is_selection(value)):
        return _selection(field, value) == _selection(field, literal.value)
    mine, theirs = _comparable(field, value, literal, kind)
    return bool(mine == theirs)


def _comparable(field: str, value: object, literal: Value, kind: str | None) -> tuple[Any, Any]:
    """The record's value and the literal in one comparable form; TypeError when they cannot be."""
    if isinstance(literal, StringValue):
        if not isinstance(value, str):
            raise _mismatch(field, value, "text")
        if kind in _IDS:
            return value[:15], literal.value[:15]
        return value.casefold(), literal.value.casefold()
    if isinstance(literal, NumberValue):
        return _number(field, value), literal.value
    if isinstance(literal, BooleanValue):
        if not isinstance(value, bool):
            raise _mismatch(field, value, "a boolean")
        return value, literal.value
    if isinstance(literal, DateValue):
        return _date(field, value), literal.value
    if isinstance(literal, DateTimeValue):
        return _datetime(field, value), literal.value
    raise AssertionError(f"unexpected literal {literal!r}")  # pragma: no cover - null is handled by callers


def _mismatch(field: str, value: object, wanted: str) -> TypeError:
    return TypeError(f"{field}: the record holds {type(value).__name__} {value!r}, compared with {wanted}")


def _number(field: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise _mismatch(field, value, "a number")
    # str() of a float is its shortest round-tripping form: 0.1 stays 0.1, not 0.1000000000000000055...
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise _mismatch(field, value, "a number")
    return number


def _date(field: str, value: object) -> date:
    if isinstance(value, datetime):
        raise _mismatch(field, value, "a date")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _mismatch(field, value, "a date")


def _datetime(field: str, value: object) -> datetime:
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and "T" in value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None:
        raise _mismatch(field, value, "a datetime")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _is_selection(value: object) -> bool:
    return isinstance(value, tuple | list | set | frozenset)


def _selection(field: str, value: object) -> frozenset[str]:
    """A multi-select picklist's values (``'a;b'`` or a collection), case-folded; null selects none."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(part.casefold() for part in value.split(";") if part)
    if _is_selection(value) and all(isinstance(part, str) for part in value):  # type: ignore[attr-defined]
        parts: Collection[str] = value  # type: ignore[assignment]
        return frozenset(part.casefold() for part in parts)
    raise _mismatch(field, value, "multi-select picklist values")


@lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    """LIKE's ``%`` and ``_`` as a case-insensitive regex; an escaped character stays literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Rendering


def render(where: Where) -> str:
    """Canonical SOQL text of the clause, for ``WHERE (<render>)``; ``parse_where(render(w)) == w``."""
    return _render(where.condition)


def _render(condition: Condition) -> str:
    if isinstance(condition, And | Or):
        joiner = " AND " if isinstance(condition, And) else " OR "
        return joiner.join(f"({_render(i)})" if isinstance(i, And | Or) else _render(i) for i in condition.items)
    if isinstance(condition, Not):
        return f"NOT ({_render(condition.item)})"
    if isinstance(condition, Comparison):
        return f"{condition.field} {condition.op} {_literal(condition.value)}"
    if isinstance(condition, InList):
        op = "NOT IN" if condition.negated else "IN"
        return f"{condition.field} {op} ({', '.join(_literal(v) for v in condition.values)})"
    if isinstance(condition, Like):
        return f"{condition.field} LIKE '{_escape(condition.pattern, like=True)}'"
    op = "EXCLUDES" if condition.excludes else "INCLUDES"
    return f"{condition.field} {op} ({', '.join(_literal(v) for v in condition.values)})"


def _literal(value: Value) -> str:
    if isinstance(value, StringValue):
        return f"'{_escape(value.value, like=False)}'"
    if isinstance(value, NumberValue):
        return format(value.value, "f")
    if isinstance(value, BooleanValue):
        return "true" if value.value else "false"
    if isinstance(value, DateValue):
        return value.value.isoformat()
    if isinstance(value, DateTimeValue):
        return _datetime_text(value.value)
    return "null"


def _datetime_text(value: datetime) -> str:
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    offset = value.utcoffset() or timedelta()
    if not offset:
        return text + "Z"
    sign = "-" if offset < timedelta() else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


_RENDER_ESCAPES = {"'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _escape(text: str, *, like: bool) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and like:
            out.append(text[i : i + 2])  # already an escape: \\, \% or \_ (see Like.pattern)
            i += 2
            continue
        out.append("\\\\" if ch == "\\" else _RENDER_ESCAPES.get(ch, ch))
        i += 1
    return "".join(out)
