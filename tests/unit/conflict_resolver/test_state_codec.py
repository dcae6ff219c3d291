"""Field state survives the jsonb column exactly, whatever the value types, hostile text included."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.change import Side
from services.common.value_codec import (
    decode_value,
    encode_value,
    escape,
    storable_json,
    storable_json_text,
    storable_text,
    unescape,
    unstorable,
)
from services.common.values import Reference, Value
from services.conflict_resolver.policy import Edit, FieldState
from services.conflict_resolver.resolve import FieldRecord
from services.conflict_resolver.state_codec import decode_record, encode_record

pytestmark = pytest.mark.unit

# Any code point, U+0000 and surrogates (lone or paired) included, and the escape's own backslash.
hostile = st.text(st.characters() | st.sampled_from(["\x00", "\\", "\ud800", "\udc00"]))

values: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    hostile,
    hostile.filter(bool).map(Reference),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.lists(hostile).map(tuple),
)
edits = st.builds(Edit, values, st.sampled_from(list(Side)), st.datetimes(timezones=st.just(UTC)))
optional_edits = st.none() | edits
pending = st.lists(edits, max_size=3).map(tuple)
states = st.builds(
    FieldState,
    truth=optional_edits,
    pending_app=pending,
    pending_crm=pending,
    seen_app=optional_edits,
    seen_crm=optional_edits,
    written_app=optional_edits,
    written_crm=optional_edits,
    lost=optional_edits,
    echoed_app=optional_edits,
    echoed_crm=optional_edits,
)


def stored(data: object) -> object:
    """``data`` through JSON text as PostgreSQL's jsonb takes it: no U+0000, valid UTF-8."""
    text = json.dumps(data, ensure_ascii=False)
    assert "\\u0000" not in text
    text.encode("utf-8")  # raises on a surrogate
    return json.loads(text)


@given(values)
def test_every_value_round_trips_with_its_type(value: Value) -> None:
    back = decode_value(stored(encode_value(value)))
    assert type(back) is type(value)
    assert back == value or (back != back and value != value)


@given(states, values, values)
def test_field_records_round_trip(state: FieldState, crm_form: Value, lost_crm_form: Value) -> None:
    record = FieldRecord(state, crm_form, lost_crm_form)
    assert decode_record(stored(encode_record(record))) == record


def test_a_record_stored_before_the_lost_edit_and_echoes_were_kept_reads_without_them() -> None:
    old = encode_record(FieldRecord(FieldState(), "x"))
    for key in ("written_app", "written_crm", "lost", "echoed_app", "echoed_crm", "lost_crm_form"):
        del old[key]

    assert decode_record(old) == FieldRecord(FieldState(), "x")


@given(hostile)
def test_the_escape_round_trips_and_leaves_nothing_postgresql_refuses(text: str) -> None:
    assert unescape(escape(text)) == text
    assert not unstorable(escape(text))
    assert not unstorable(storable_text(text))


def test_hostile_values_are_kept_under_their_own_tags_and_ordinary_ones_as_before() -> None:
    assert encode_value("a\\b") == {"s": "a\\b"}
    assert encode_value("a\x00b\\") == {"se": "a\\0b\\\\"}
    assert encode_value(Reference("001\ud800")) == {"re": "001\\ud800"}
    assert encode_value(("ok", "\x00")) == {"me": ["ok", "\\0"]}
    # A surrogate pair is two code points in Python; stored as such it would come back as one.
    pair = "\ud83d\ude00"
    assert pair != "\U0001f600"
    assert decode_value(stored(encode_value(pair))) == pair


def test_explanations_are_made_storable_keys_included() -> None:
    detail = {"source_event_id": "e\x00", "dropped": {"Bad\x00Field": "too long: a\ud800"}, "n": 3, "l": ("x",)}

    assert storable_json(detail) == {
        "source_event_id": "e\\0",
        "dropped": {"Bad\\0Field": "too long: a\\ud800"},
        "n": 3,
        "l": ["x"],
    }


# Text as hostile as a sync-log detail can get: NUL, lone surrogates, backslashes before "u0000".
_TEXTS = st.text(alphabet=st.sampled_from(["a", "\\", "u", "0", "\x00", "\ud800", "\udfff", "\U0001f600", "é"]))
_DETAILS = st.recursive(
    st.none() | st.integers() | st.booleans() | _TEXTS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXTS, inner, max_size=3),
    max_leaves=12,
)


@given(_DETAILS)
def test_a_details_json_text_is_the_storable_details_dumped(detail: object) -> None:
    text = storable_json_text(detail)
    assert text == json.dumps(storable_json(detail), sort_keys=True, default=str)
    assert "\\u0000" not in text.replace("\\\\", "")
