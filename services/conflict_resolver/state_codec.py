"""Field records as JSON (the ``field_states.state`` jsonb column), with every value kept exact by
:mod:`services.common.value_codec`.

Hostile text (U+0000, surrogates) in a field value is stored escaped there. One such value used to
fail the whole batch, which was retried until the resolver halted for every tenant. An identifier
the resolver keys its rows by (tenant, event, link, record ids, object pair, external id, command
id) holding either is refused instead: :func:`services.common.value_codec.unstorable` names it, and
the handler dead-letters that event alone with the reason, in the sync log too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.change import Side
from services.common.value_codec import decode_value, encode_value
from services.conflict_resolver.policy import Edit, FieldState
from services.conflict_resolver.resolve import FieldRecord

Json = Any


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


def encode_record(record: FieldRecord) -> Json:
    """One field's state and the Salesforce forms of its truth and lost edit (values are kept in
    app terms)."""
    state = record.state
    return {
        "truth": _edit(state.truth),
        "pending_app": [_edit(e) for e in state.pending_app],
        "pending_crm": [_edit(e) for e in state.pending_crm],
        "seen_app": _edit(state.seen_app),
        "seen_crm": _edit(state.seen_crm),
        "written_app": _edit(state.written_app),
        "written_crm": _edit(state.written_crm),
        "lost": _edit(state.lost),
        "echoed_app": _edit(state.echoed_app),
        "echoed_crm": _edit(state.echoed_crm),
        "crm_form": encode_value(record.crm_form),
        "lost_crm_form": encode_value(record.lost_crm_form),
    }


def decode_record(data: Json) -> FieldRecord:
    state = FieldState(
        truth=_from_edit(data["truth"]),
        pending_app=_edits(data["pending_app"]),
        pending_crm=_edits(data["pending_crm"]),
        seen_app=_from_edit(data["seen_app"]),
        seen_crm=_from_edit(data["seen_crm"]),
        # Absent from states stored before they were kept.
        written_app=_from_edit(data.get("written_app")),
        written_crm=_from_edit(data.get("written_crm")),
        lost=_from_edit(data.get("lost")),
        echoed_app=_from_edit(data.get("echoed_app")),
        echoed_crm=_from_edit(data.get("echoed_crm")),
    )
    return FieldRecord(state, decode_value(data["crm_form"]), decode_value(data.get("lost_crm_form")))
