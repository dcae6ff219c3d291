"""Field state as JSON (the ``field_states.state`` jsonb column), with every value type kept exact.

JSON has no decimals, dates or references, and a float would silently round big ints, so every
value is tagged: ``{"d": "12.50"}`` is a Decimal, ``{"r": "001..."}`` a reference, and so on.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from services.common.change import Side
from services.common.values import Reference, Value
from services.conflict_resolver.policy import Edit, FieldState

Json = Any


def encode_value(value: Value) -> Json:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, Reference):
        return {"r": str(value)}
    if isinstance(value, str):
        return {"s": value}
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
    return {"m": list(value)}


def decode_value(data: Json) -> Value:
    if data is None:
        return None
    (tag, raw), *_ = data.items()
    decoders: dict[str, Any] = {
        "b": bool,
        "r": Reference,
        "s": str,
        "i": int,
        "d": Decimal,
        "f": float,
        "dt": datetime.fromisoformat,
        "da": date.fromisoformat,
        "m": tuple,
    }
    value: Value = decoders[tag](raw)
    return value


def _edit(edit: Edit | None) -> Json:
    if edit is None:
        return None
    return {"v": encode_value(edit.value), "a": str(edit.author), "t": edit.at.isoformat()}


def _from_edit(data: Json) -> Edit | None:
    if data is None:
        return None
    return Edit(decode_value(data["v"]), Side(data["a"]), datetime.fromisoformat(data["t"]))


def _edits(data: Json) -> tuple[Edit, ...]:
    return tuple(e for e in (_from_edit(d) for d in data) if e is not None)


def encode_state(state: FieldState, crm_form: Value) -> Json:
    """The state of one field and the Salesforce form of its truth (values are kept in app terms)."""
    return {
        "truth": _edit(state.truth),
        "pending_app": [_edit(e) for e in state.pending_app],
        "pending_crm": [_edit(e) for e in state.pending_crm],
        "seen_app": _edit(state.seen_app),
        "seen_crm": _edit(state.seen_crm),
        "written_app": _edit(state.written_app),
        "written_crm": _edit(state.written_crm),
        "crm_form": encode_value(crm_form),
    }


def decode_state(data: Json) -> tuple[FieldState, Value]:
    state = FieldState(
        truth=_from_edit(data["truth"]),
        pending_app=_edits(data["pending_app"]),
        pending_crm=_edits(data["pending_crm"]),
        seen_app=_from_edit(data["seen_app"]),
        seen_crm=_from_edit(data["seen_crm"]),
        # Absent from states stored before it was kept.
        written_app=_from_edit(data.get("written_app")),
        written_crm=_from_edit(data.get("written_crm")),
    )
    return state, decode_value(data["crm_form"])
