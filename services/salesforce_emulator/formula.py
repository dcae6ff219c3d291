"""A tiny evaluator for formula fields.

Real Salesforce formulas are a large language; the emulator supports the subset that the standard
objects in :mod:`schema` and simple custom fields need:

- literals: ``'text'`` / ``"text"``, numbers, ``TRUE``, ``FALSE``, ``NULL``
- field references by API name (case-insensitive)
- ``&`` (text concatenation; null concatenates as empty text)
- ``+ - * /`` and unary ``-`` (null if an operand is null)
- ``= == != <> < <= > >=`` (null compares unequal to anything except null)
- ``AND``/``&&``, ``OR``/``||``, ``NOT``/``!``, ``x IN ('a', 'b')`` and ``x NOT IN (…)``
- functions ``UPPER``, ``LOWER``, ``LEN``, ``TEXT``, ``ISBLANK``, ``ISNULL``, ``BLANKVALUE``,
  ``IF``, ``ISPICKVAL``, ``CONTAINS``, ``BEGINS``, ``ABS``, ``ROUND``, ``MIN``, ``MAX``

Formulas are compiled once per definition; evaluation reads a record in REST JSON form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

Value = str | int | float | bool | None


class FormulaError(ValueError):
    """The formula is outside the supported subset or malformed."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>\d+(?:\.\d+)?)
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|<>|<=|>=|&&|\|\||[-+*/&=<>(),!])
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    source = source.rstrip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            msg = f"unexpected character at {pos}: {source[pos : pos + 10]!r}"
            raise FormulaError(msg)
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        tokens.append(_Tok(kind, m.group(kind)))
    return tokens


# An expression node evaluates against a record.
Node = Callable[[Mapping[str, Any]], Value]

_BINARY_PRECEDENCE = {
    "OR": 1,
    "||": 1,
    "AND": 2,
    "&&": 2,
    "=": 4,
    "==": 4,
    "!=": 4,
    "<>": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "IN": 4,
    "&": 5,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
}


def _truthy(v: Value) -> bool:
    return bool(v) if v is not None else False


def _num(v: Value) -> float | int | None:
    if v is None or isinstance(v, bool):
        return None if v is None else int(v)
    if isinstance(v, int | float):
        return v
    try:
        return float(v)
    except ValueError:
        return None


def _text(v: Value) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _equal(a: Value, b: Value) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return a == b


def _compare(op: str, a: Value, b: Value) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, int | float) and isinstance(b, int | float):
        x: Any = a
        y: Any = b
    else:
        x, y = _text(a), _text(b)
    if op == "<":
        return bool(x < y)
    if op == "<=":
        return bool(x <= y)
    if op == ">":
        return bool(x > y)
    return bool(x >= y)


def _arith(op: str, a: Value, b: Value) -> Value:
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return None
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        return None
    return x / y


def _round(v: Value, digits: Value = 0) -> Value:
    x, d = _num(v), _num(digits)
    if x is None:
        return None
    return round(float(x), int(d or 0))


def _min_max(pick: Callable[..., Any]) -> Callable[..., Value]:
    def f(*args: Value) -> Value:
        nums = [n for n in (_num(a) for a in args) if n is not None]
        return pick(nums) if nums else None

    return f


_FUNCTIONS: dict[str, Callable[..., Value]] = {
    "UPPER": lambda v: None if v is None else _text(v).upper(),
    "LOWER": lambda v: None if v is None else _text(v).lower(),
    "LEN": lambda v: len(_text(v)),
    "TEXT": lambda v: None if v is None else _text(v),
    "ISBLANK": lambda v: v is None or v == "",
    "ISNULL": lambda v: v is None or v == "",
    "BLANKVALUE": lambda v, d: d if v is None or v == "" else v,
    "ISPICKVAL": lambda v, lit: _equal(v, lit),
    "CONTAINS": lambda s, sub: _text(sub) in _text(s),
    "BEGINS": lambda s, prefix: _text(s).startswith(_text(prefix)),
    "ABS": lambda v: None if _num(v) is None else abs(_num(v) or 0),
    "ROUND": _round,
    "MIN": _min_max(min),
    "MAX": _min_max(max),
}


class _Parser:
    def __init__(self, tokens: list[_Tok], resolve: Callable[[str], str]) -> None:
        self._toks = tokens
        self._pos = 0
        self._resolve = resolve

    def _peek(self) -> _Tok | None:
        return self._toks[self._pos] if self._pos < len(self._toks) else None

    def _take(self) -> _Tok:
        tok = self._peek()
        if tok is None:
            msg = "unexpected end of formula"
            raise FormulaError(msg)
        self._pos += 1
        return tok

    def _expect(self, text: str) -> None:
        tok = self._take()
        if tok.text.upper() != text:
            msg = f"expected {text!r}, got {tok.text!r}"
            raise FormulaError(msg)

    def parse(self) -> Node:
        node = self._expr(0)
        if self._peek() is not None:
            msg = f"unexpected {self._take().text!r}"
            raise FormulaError(msg)
        return node

    def _binary_op(self) -> str | None:
        tok = self._peek()
        if tok is None:
            return None
        text = tok.text.upper() if tok.kind == "name" else tok.text
        if text == "NOT" and self._pos + 1 < len(self._toks) and self._toks[self._pos + 1].text.upper() == "IN":
            return "NOT IN"
        return text if text in _BINARY_PRECEDENCE else None

    def _expr(self, min_prec: int) -> Node:
        left = self._unary()
        while True:
            op = self._binary_op()
            prec = _BINARY_PRECEDENCE["IN"] if op == "NOT IN" else _BINARY_PRECEDENCE.get(op or "", -1)
            if op is None or prec < min_prec:
                return left
            self._take()
            if op in ("IN", "NOT IN"):
                if op == "NOT IN":
                    self._take()
                left = self._in_list(left, negate=op == "NOT IN")
                continue
            right = self._expr(prec + 1)
            left = _binary(op, left, right)

    def _in_list(self, subject: Node, *, negate: bool) -> Node:
        self._expect("(")
        items: list[Node] = [self._expr(0)]
        while self._peek_text() == ",":
            self._take()
            items.append(self._expr(0))
        self._expect(")")

        def node(rec: Mapping[str, Any]) -> Value:
            v = subject(rec)
            found = v is not None and any(_equal(v, item(rec)) for item in items)
            return not found if negate else found

        return node

    def _unary(self) -> Node:
        tok = self._take()
        upper = tok.text.upper()
        if tok.text in ("-", "+"):
            operand = self._unary()
            if tok.text == "+":
                return operand
            return lambda rec: None if (n := _num(operand(rec))) is None else -n
        if tok.text == "!" or (tok.kind == "name" and upper == "NOT" and self._peek_text() != "("):
            operand = self._expr(3)
            return lambda rec: not _truthy(operand(rec))
        if tok.text == "(":
            inner = self._expr(0)
            self._expect(")")
            return inner
        if tok.kind == "num":
            num: Value = float(tok.text) if "." in tok.text else int(tok.text)
            return lambda _rec: num
        if tok.kind == "str":
            s = re.sub(r"\\(.)", r"\1", tok.text[1:-1])
            return lambda _rec: s
        if tok.kind == "name":
            if upper in ("TRUE", "FALSE"):
                b = upper == "TRUE"
                return lambda _rec: b
            if upper == "NULL":
                return lambda _rec: None
            if self._peek_text() == "(":
                return self._call(upper)
            name = self._resolve(tok.text)
            return lambda rec: rec.get(name)
        msg = f"unexpected {tok.text!r}"
        raise FormulaError(msg)

    def _peek_text(self) -> str | None:
        tok = self._peek()
        return tok.text if tok else None

    def _call(self, fname: str) -> Node:
        self._expect("(")
        args: list[Node] = []
        if self._peek_text() != ")":
            args.append(self._expr(0))
            while self._peek_text() == ",":
                self._take()
                args.append(self._expr(0))
        self._expect(")")
        if fname == "IF":
            if len(args) != 3:
                msg = "IF takes 3 arguments"
                raise FormulaError(msg)
            cond, then, other = args
            return lambda rec: then(rec) if _truthy(cond(rec)) else other(rec)
        if fname in ("AND", "OR"):
            combine = all if fname == "AND" else any
            return lambda rec: combine(_truthy(a(rec)) for a in args)
        if fname == "NOT" and len(args) == 1:
            only = args[0]
            return lambda rec: not _truthy(only(rec))
        func = _FUNCTIONS.get(fname)
        if func is None:
            msg = f"unsupported function {fname}"
            raise FormulaError(msg)
        return lambda rec: func(*(a(rec) for a in args))


def _binary(op: str, left: Node, right: Node) -> Node:
    if op in ("AND", "&&"):
        return lambda rec: _truthy(left(rec)) and _truthy(right(rec))
    if op in ("OR", "||"):
        return lambda rec: _truthy(left(rec)) or _truthy(right(rec))
    if op == "&":
        return lambda rec: _text(left(rec)) + _text(right(rec))
    if op in ("=", "=="):
        return lambda rec: _equal(left(rec), right(rec))
    if op in ("!=", "<>"):
        return lambda rec: not _equal(left(rec), right(rec))
    if op in ("<", "<=", ">", ">="):
        return lambda rec: _compare(op, left(rec), right(rec))
    return lambda rec: _arith(op, left(rec), right(rec))


@dataclass(frozen=True)
class Formula:
    """A compiled formula."""

    source: str
    _node: Node

    def evaluate(self, record: Mapping[str, Any]) -> Value:
        """The formula's value for ``record`` (keys are canonical API field names)."""
        return self._node(record)


def compile_formula(source: str, resolve: Callable[[str], str] = lambda name: name) -> Formula:
    """Parse ``source``; ``resolve`` maps a field reference to its canonical API name (or raises)."""
    return Formula(source, _Parser(_tokenize(source), resolve).parse())


@lru_cache(maxsize=1024)
def compile_cached(source: str, field_names: tuple[str, ...]) -> Formula:
    """Compile once per (formula, object field set); unknown field references are errors."""
    by_lower = {n.lower(): n for n in field_names}

    def resolve(name: str) -> str:
        canonical = by_lower.get(name.lower())
        if canonical is None:
            msg = f"unknown field {name!r} in formula"
            raise FormulaError(msg)
        return canonical

    return compile_formula(source, resolve)
