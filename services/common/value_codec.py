"""Typed field values as JSON, exactly (the conflict-resolver's ``field_states``, and a reconcile
reading them), and texts made storable in PostgreSQL.

JSON has no decimals, dates or references, and a float would silently round big ints, so every
value is tagged: ``{"d": "12.50"}`` is a Decimal, ``{"r": "001..."}`` a reference, and so on.

Hostile text. PostgreSQL refuses U+0000 in ``text`` and ``jsonb`` alike, and cannot store a
surrogate code point as UTF-8 (a lone one is refused; a pair would come back as the one character
it encodes). A field value (string, reference, multi-value) holding either is stored escaped under
its own tag (``"se"``, ``"re"``, ``"me"``): ``\\`` becomes ``\\\\``, U+0000 ``\\0`` and a surrogate
``\\udxxx``. The escape round-trips exactly. Texts that only explain (sync log messages and
details) are stored with the same escape, :func:`storable_text` and :func:`storable_json`,
readable rather than exact.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from services.common.values import Reference, Value

Json = Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_ESCAPED_CHARS = re.compile("[\\\\\x00\ud800-\udfff]")
_ESCAPE_SEQUENCE = re.compile(r"\\(\\|0|u[0-9a-f]{4})")


def unstorable(text: str) -> bool:
    """Whether PostgreSQL refuses ``text`` (or would not give it back as it was)."""
    return _UNSTORABLE.search(text) is not None


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    return "\\0" if char == "\x00" else f"\\u{ord(char):04x}"


def _unescape_sequence(match: re.Match[str]) -> str:
    code = match.group(1)
    if code == "\\":
        return "\\"
    return "\x00" if code == "0" else chr(int(code[1:], 16))


def escape(text: str) -> str:
    return _ESCAPED_CHARS.sub(_escape_char, text)


def unescape(text: str) -> str:
    return _ESCAPE_SEQUENCE.sub(_unescape_sequence, text)


def storable_text(text: str) -> str:
    """``text`` itself when PostgreSQL can store it, else escaped (for texts that only explain)."""
    return escape(text) if unstorable(text) else text


def storable_json(data: Json) -> Json:
    """``data`` with every string in it (keys included) made storable by :func:`storable_text`."""
    if isinstance(data, str):
        return storable_text(data)
    if isinstance(data, dict):
        return {storable_json(k): storable_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [storable_json(v) for v in data]
    return data


# What json.dumps (ASCII output) writes for U+0000 and for a surrogate code point: PostgreSQL's
# jsonb refuses both. A string with a backslash before "u0000" matches too; it only costs the slow path.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(0000|d[89a-f][0-9a-f]{2})")


def storable_json_text(data: Json) -> str:
    """``data`` as JSON text (keys sorted, anything else as ``str``), its strings made storable by
    :func:`storable_text`. Most data needs no escaping: it is dumped once and checked, instead of
    rebuilt string by string first."""
    text = json.dumps(data, sort_keys=True, default=str)
    if _UNSTORABLE_ESCAPE.search(text) is None:
        return text
    return json.dumps(storable_json(data), sort_keys=True, default=str)


def encode_value(value: Value) -> Json:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, Reference):
        return {"re": escape(value)} if unstorable(value) else {"r": str(value)}
    if isinstance(value, str):
        return {"se": escape(value)} if unstorable(value) else {"s": value}
    if isinstance(value, int):
        return {"i": str(value)}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, date):
        return {"da": value.isoformat()}
    if any(unstorable(v) for v in value):
        return {"me": [escape(v) for v in value]}
    return {"m": list(value)}


_DECODERS: dict[str, Any] = {
    "b": bool,
    "r": Reference,
    "re": lambda raw: Reference(unescape(raw)),
    "s": str,
    "se": unescape,
    "i": int,
    "d": Decimal,
    "f": float,
    "dt": datetime.fromisoformat,
    "da": date.fromisoformat,
    "m": tuple,
    "me": lambda raw: tuple(unescape(v) for v in raw),
}


def decode_value(data: Json) -> Value:
    if data is None:
        return None
    (tag, raw), *_ = data.items()
    value: Value = _DECODERS[tag](raw)
    return value
