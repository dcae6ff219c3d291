"""SOQL text to a typed syntax tree.

Only syntax lives here: whether ``Account.Name`` exists, or whether ``CreatedDate = 'x'`` is well
typed, is decided by :mod:`soql_engine` against an org's schema. Errors are raised the way
Salesforce reports them (``MALFORMED_QUERY`` with the query echoed and a caret under the bad token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from services.salesforce_emulator.errors import SalesforceError

# Keywords share NAME's case-insensitive flag so that lark's lexer retypes a NAME spelled like a
# keyword into that keyword. The basic (not contextual) lexer does so everywhere, so
# ``SELECT FROM Account`` fails on FROM, as in Salesforce, instead of reading a field named FROM.
_GRAMMAR = r"""
start: SELECT select_list FROM object_ref where? order_by? limit? offset?

select_list: select_item ("," select_item)*
?select_item: field_path
            | COUNT "(" field_path? ")" NAME?  -> count_call

field_path: NAME ("." NAME)*
object_ref: NAME NAME?

where: WHERE condition

// SOQL refuses AND and OR side by side without parentheses, hence two separate chains.
?condition: unary | and_chain | or_chain
and_chain: unary (AND unary)+
or_chain: unary (OR unary)+
?unary: NOT unary                              -> negation
      | "(" condition ")"
      | predicate
?predicate: field_path COMPARATOR value         -> comparison
          | field_path IN "(" value_list ")"    -> in_list
          | field_path NOT IN "(" value_list ")" -> not_in_list
          | field_path LIKE value              -> like
value_list: value ("," value)*

?value: STRING                -> string
      | NUMBER                -> number
      | TRUE                  -> true
      | FALSE                 -> false
      | NULL                  -> null
      | DATETIME              -> datetime_
      | DATE                  -> date_
      | NAME (":" NUMBER)?    -> relative_date

order_by: ORDER BY order_item ("," order_item)*
order_item: field_path (ASC | DESC)? (NULLS (FIRST | LAST))?
limit: LIMIT NUMBER
offset: OFFSET NUMBER

SELECT: "select"i
FROM: "from"i
WHERE: "where"i
AND: "and"i
OR: "or"i
NOT: "not"i
IN: "in"i
LIKE: "like"i
TRUE: "true"i
FALSE: "false"i
NULL: "null"i
ORDER: "order"i
BY: "by"i
ASC: "asc"i
DESC: "desc"i
NULLS: "nulls"i
FIRST: "first"i
LAST: "last"i
LIMIT: "limit"i
OFFSET: "offset"i
COUNT: "count"i

COMPARATOR: "=" | "!=" | "<>" | "<=" | ">=" | "<" | ">"
NAME: /[a-z_][a-z0-9_]*/i
STRING: /'(?:[^'\\]|\\.)*'/s
DATETIME.3: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})/i
DATE.2: /\d{4}-\d{2}-\d{2}/
NUMBER: /[+-]?(?:\d+(?:\.\d*)?|\.\d+)/

%ignore /\s+/
"""


# ---------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class Position:
    """Where a construct starts, for Salesforce's ``ERROR at Row:r:Column:c``."""

    line: int
    column: int


@dataclass(frozen=True)
class FieldPath:
    """``Name`` or ``Account.Owner.Name`` as written (names resolved later)."""

    parts: tuple[str, ...]
    pos: Position | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Count:
    """``COUNT()`` (``path`` None) or ``COUNT(field) [alias]``."""

    path: FieldPath | None = None
    alias: str | None = None


SelectItem = FieldPath | Count


@dataclass(frozen=True)
class StringLit:
    # ``raw`` keeps LIKE's escaped wildcards (``\%``, ``\_``) distinguishable from real ones.
    value: str
    raw: str = field(default="", compare=False)


@dataclass(frozen=True)
class NumberLit:
    value: float
    is_integer: bool = False


@dataclass(frozen=True)
class BoolLit:
    value: bool


@dataclass(frozen=True)
class NullLit:
    pass


@dataclass(frozen=True)
class DateLit:
    value: date


@dataclass(frozen=True)
class DateTimeLit:
    """An instant; always timezone-aware."""

    value: datetime


@dataclass(frozen=True)
class RelativeDateLit:
    """``TODAY``, ``LAST_N_DAYS:7``: a range resolved against the clock at execution time."""

    name: str
    n: int | None = None
    pos: Position | None = field(default=None, compare=False)


LiteralValue = StringLit | NumberLit | BoolLit | NullLit | DateLit | DateTimeLit | RelativeDateLit


@dataclass(frozen=True)
class Comparison:
    path: FieldPath
    op: str  # one of = != < <= > >= (``<>`` is normalised to ``!=``)
    value: LiteralValue


@dataclass(frozen=True)
class InList:
    path: FieldPath
    values: tuple[LiteralValue, ...]
    negated: bool = False


@dataclass(frozen=True)
class Like:
    path: FieldPath
    pattern: StringLit


@dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Comparison | InList | Like | And | Or | Not


@dataclass(frozen=True)
class OrderKey:
    path: FieldPath
    descending: bool = False
    # None means Salesforce's default: nulls first ascending, last descending.
    nulls_first: bool | None = None


@dataclass(frozen=True)
class Query:
    select: tuple[SelectItem, ...]
    object_name: str
    where: Condition | None = None
    order_by: tuple[OrderKey, ...] = ()
    limit: int | None = None
    offset: int | None = None
    alias: str | None = None
    object_pos: Position | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------------------------
# Errors


def error_message(soql: str, pos: Position | None, text: str) -> str:
    """Salesforce's layout: the offending line, a caret, the position, then the reason."""
    if pos is None:
        return text
    lines = soql.splitlines() or [""]
    line = lines[pos.line - 1] if 0 < pos.line <= len(lines) else ""
    caret = " " * max(pos.column - 1, 0) + "^"
    return f"\n{line}\n{caret}\nERROR at Row:{pos.line}:Column:{pos.column}\n{text}"


def malformed(soql: str, pos: Position | None, text: str) -> SalesforceError:
    return SalesforceError(400, "MALFORMED_QUERY", error_message(soql, pos, text))


class _LiteralError(Exception):
    """A token that lexes but whose value is not acceptable (bad escape, impossible date)."""

    def __init__(self, token: Token, text: str) -> None:
        super().__init__(text)
        self.token = token
        self.text = text


# ---------------------------------------------------------------------------------------------
# Tree to AST

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})$")


def _pos(token: Token) -> Position:
    return Position(token.line or 1, token.column or 1)


def decode_string(token: Token, *, keep_wildcard_escapes: bool) -> str:
    raw = str(token)[1:-1]

    def replace(match: re.Match[str]) -> str:
        esc = match.group(1)
        if len(esc) == 5:
            return chr(int(esc[1:], 16))
        if esc.lower() in _ESCAPES:
            return _ESCAPES[esc.lower()]
        if esc in ("%", "_"):
            return "\\" + esc if keep_wildcard_escapes else esc
        msg = f"Invalid string literal '{raw}'. Illegal character sequence '\\{esc}' in string literal."
        raise _LiteralError(token, msg)

    return _ESCAPE_RE.sub(replace, raw)


def parse_datetime_literal(text: str) -> datetime:
    """``2024-05-01T12:00:00Z``, ``…+01:00``, ``….000+0000`` → an aware datetime."""
    base, tz = text, UTC
    if text[-1] in "zZ":
        base = text[:-1]
    else:
        m = _OFFSET_RE.search(text)
        if m is None:
            msg = f"no time zone in {text!r}"
            raise ValueError(msg)
        sign = 1 if m.group(1) == "+" else -1
        tz = timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
        base = text[: m.start()]
    if "." in base:
        head, frac = base.split(".", 1)
        base = f"{head}.{(frac + '000000')[:6]}"
    return datetime.fromisoformat(base).replace(tzinfo=tz)


@v_args(inline=True)
class _ToAst(Transformer[Token, Query]):
    """Builds the dataclasses above from lark's parse tree."""

    def __init__(self) -> None:
        super().__init__()

    def start(self, *items: Any) -> Query:
        select: tuple[SelectItem, ...] = ()
        object_name = ""
        alias: str | None = None
        object_pos: Position | None = None
        where: Condition | None = None
        order_by: tuple[OrderKey, ...] = ()
        limit: int | None = None
        offset: int | None = None
        for item in items:
            if isinstance(item, Token):
                continue
            kind, payload = item
            if kind == "select":
                select = payload
            elif kind == "object":
                object_name, alias, object_pos = payload
            elif kind == "where":
                where = payload
            elif kind == "order":
                order_by = payload
            elif kind == "limit":
                limit = payload
            elif kind == "offset":
                offset = payload
        return Query(select, object_name, where, order_by, limit, offset, alias, object_pos)

    def select_list(self, *items: SelectItem) -> tuple[str, tuple[SelectItem, ...]]:
        return ("select", items)

    def count_call(self, _kw: Token, *rest: Any) -> Count:
        path = next((r for r in rest if isinstance(r, FieldPath)), None)
        alias = next((str(r) for r in rest if isinstance(r, Token)), None)
        return Count(path, alias)

    def field_path(self, *names: Token) -> FieldPath:
        return FieldPath(tuple(str(n) for n in names), _pos(names[0]))

    def object_ref(self, name: Token, alias: Token | None = None) -> tuple[str, tuple[str, str | None, Position]]:
        return ("object", (str(name), str(alias) if alias is not None else None, _pos(name)))

    def where(self, _kw: Token, cond: Condition) -> tuple[str, Condition]:
        return ("where", cond)

    def and_chain(self, *items: Any) -> And:
        return And(tuple(i for i in items if not isinstance(i, Token)))

    def or_chain(self, *items: Any) -> Or:
        return Or(tuple(i for i in items if not isinstance(i, Token)))

    def negation(self, _kw: Token, item: Condition) -> Not:
        return Not(item)

    def comparison(self, path: FieldPath, op: Token, value: LiteralValue) -> Comparison:
        text = str(op)
        return Comparison(path, "!=" if text == "<>" else text, value)

    def in_list(self, path: FieldPath, _kw: Token, values: tuple[LiteralValue, ...]) -> InList:
        return InList(path, values)

    def not_in_list(self, path: FieldPath, _not: Token, _in: Token, values: tuple[LiteralValue, ...]) -> InList:
        return InList(path, values, negated=True)

    def like(self, path: FieldPath, _kw: Token, pattern: LiteralValue) -> Like:
        if not isinstance(pattern, StringLit):
            raise _LiteralError(_first_token_of(path), "LIKE requires a string literal")
        return Like(path, pattern)

    def value_list(self, *values: LiteralValue) -> tuple[LiteralValue, ...]:
        return values

    def string(self, token: Token) -> StringLit:
        return StringLit(
            decode_string(token, keep_wildcard_escapes=False), decode_string(token, keep_wildcard_escapes=True)
        )

    def number(self, token: Token) -> NumberLit:
        text = str(token)
        return NumberLit(float(text), is_integer=re.fullmatch(r"[+-]?\d+", text) is not None)

    def true(self, _t: Token) -> BoolLit:
        return BoolLit(True)

    def false(self, _t: Token) -> BoolLit:
        return BoolLit(False)

    def null(self, _t: Token) -> NullLit:
        return NullLit()

    def datetime_(self, token: Token) -> DateTimeLit:
        try:
            return DateTimeLit(parse_datetime_literal(str(token)))
        except ValueError:
            raise _LiteralError(token, f"unexpected token: '{token}'") from None

    def date_(self, token: Token) -> DateLit:
        try:
            return DateLit(date.fromisoformat(str(token)))
        except ValueError:
            raise _LiteralError(token, f"unexpected token: '{token}'") from None

    def relative_date(self, name: Token, n: Token | None = None) -> RelativeDateLit:
        if n is None:
            return RelativeDateLit(str(name).upper(), pos=_pos(name))
        if not re.fullmatch(r"\d+", str(n)):
            raise _LiteralError(n, f"unexpected token: '{n}'")
        return RelativeDateLit(str(name).upper(), int(str(n)), pos=_pos(name))

    def order_by(self, *items: Any) -> tuple[str, tuple[OrderKey, ...]]:
        return ("order", tuple(i for i in items if isinstance(i, OrderKey)))

    def order_item(self, path: FieldPath, *mods: Token) -> OrderKey:
        words = [m.type for m in mods]
        nulls_first: bool | None = None
        if "FIRST" in words:
            nulls_first = True
        elif "LAST" in words:
            nulls_first = False
        return OrderKey(path, descending="DESC" in words, nulls_first=nulls_first)

    def limit(self, _kw: Token, n: Token) -> tuple[str, int]:
        return ("limit", _non_negative_int(n))

    def offset(self, _kw: Token, n: Token) -> tuple[str, int]:
        return ("offset", _non_negative_int(n))


def _non_negative_int(token: Token) -> int:
    if not re.fullmatch(r"\d+", str(token)):
        raise _LiteralError(token, f"unexpected token: '{token}'")
    return int(str(token))


def _first_token_of(path: FieldPath) -> Token:
    pos = path.pos or Position(1, 1)
    return Token("NAME", path.text, line=pos.line, column=pos.column)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=False)


def parse(soql: str) -> Query:
    """Parse SOQL text; raise ``SalesforceError`` ``MALFORMED_QUERY`` on any syntax error."""
    try:
        tree = _parser().parse(soql)
    except UnexpectedEOF:
        raise malformed(soql, _eof_position(soql), "unexpected token: <EOF>") from None
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            raise malformed(soql, _eof_position(soql), "unexpected token: <EOF>") from None
        raise malformed(soql, Position(exc.line, exc.column), f"unexpected token: '{exc.token}'") from None
    except UnexpectedCharacters as exc:
        at = exc.pos_in_stream or 0
        char = soql[at] if at < len(soql) else ""
        raise malformed(soql, Position(exc.line, exc.column), f"unexpected token: '{char}'") from None
    except UnexpectedInput as exc:  # pragma: no cover - lark raises one of the subclasses above
        raise malformed(soql, None, str(exc)) from None
    try:
        result: Query = _ToAst().transform(tree)
    except VisitError as exc:
        orig = exc.orig_exc
        if isinstance(orig, _LiteralError):
            raise malformed(soql, _pos(orig.token), orig.text) from None
        raise
    return result


def _eof_position(soql: str) -> Position:
    lines = soql.splitlines() or [""]
    return Position(len(lines), len(lines[-1]) + 1)
