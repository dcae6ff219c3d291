"""Field state survives the jsonb column exactly, whatever the value types."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.change import Side
from services.common.values import Reference, Value
from services.conflict_resolver.policy import Edit, FieldState
from services.conflict_resolver.state_codec import decode_state, decode_value, encode_state, encode_value

pytestmark = pytest.mark.unit

values: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    st.text(),
    st.text(min_size=1).map(Reference),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.lists(st.text()).map(tuple),
)
edits = st.builds(Edit, values, st.sampled_from(list(Side)), st.datetimes(timezones=st.just(UTC)))


@given(values)
def test_every_value_round_trips_with_its_type(value: Value) -> None:
    back = decode_value(json.loads(json.dumps(encode_value(value))))
    assert type(back) is type(value)
    assert back == value or (back != back and value != value)


@given(
    st.builds(
        FieldState,
        st.none() | edits,
        st.lists(edits, max_size=3).map(tuple),
        st.lists(edits, max_size=3).map(tuple),
        st.none() | edits,
        st.none() | edits,
    ),
    values,
)
def test_field_state_round_trips(state: FieldState, crm_form: Value) -> None:
    assert decode_state(json.loads(json.dumps(encode_state(state, crm_form)))) == (state, crm_form)
