"""Pure parts of the Pub/Sub servicer: flow control, topic names, hand-built FetchResponses."""

from __future__ import annotations

import pytest
from eventbus.v1 import pubsub_api_pb2 as pb

from services.salesforce_emulator import cdc, schema
from services.salesforce_emulator.event_log import LoggedEvent, consumer_event_entry, replay_bytes
from services.salesforce_emulator.pubsub import (
    FlowControl,
    fetch_response_wire,
    resolve_topic,
    rpc_id_field,
    within_budget,
)

pytestmark = pytest.mark.unit

EMPLOYEE = schema.custom_object("Employee__c", "a01", "Employee", [])
ORDER = cdc.platform_event_def("Order__e", [schema.FieldDef("Ref__c", "string")])
OBJECTS = {o.name: o for o in (schema.ACCOUNT, EMPLOYEE, ORDER)}


def test_requests_add_up_and_are_capped_at_one_hundred() -> None:
    flow = FlowControl()
    flow.request(150)
    assert flow.pending == 100
    flow.delivered(70)
    flow.request(50)
    assert flow.pending == 80
    flow.request(-5)
    assert flow.pending == 80


@pytest.mark.parametrize(
    ("name", "kind", "can_publish"),
    [
        ("/data/ChangeEvents", "change_events", False),
        ("/data/AccountChangeEvent", "change_event", False),
        ("/data/Employee__ChangeEvent", "change_event", False),
        ("/event/Order__e", "platform_event", True),
    ],
)
def test_known_topics(name: str, kind: str, can_publish: bool) -> None:
    topic = resolve_topic(name, OBJECTS)

    assert topic is not None
    assert (topic.kind, topic.can_publish) == (kind, can_publish)
    assert (topic.schema is None) == (kind == "change_events")


@pytest.mark.parametrize(
    "name",
    ["/data/accountchangeevent", "/data/ContactChangeEvent", "/event/Missing__e", "/data/SalesEvents__chn", "", "/x"],
)
def test_unknown_topics(name: str) -> None:
    assert resolve_topic(name, OBJECTS) is None


@pytest.mark.parametrize("pending", [0, 1, 100, 300])
def test_fetch_response_wire_parses_as_the_generated_message(pending: int) -> None:
    entries = [consumer_event_entry(f"id{n}", "schema", b"payload" * n, n) for n in range(1, 4)]

    raw = fetch_response_wire(entries, replay_bytes(3), rpc_id_field("rpc-123"), pending)

    response = pb.FetchResponse.FromString(raw)
    assert [e.replay_id for e in response.events] == [replay_bytes(n) for n in range(1, 4)]
    assert response.latest_replay_id == replay_bytes(3)
    assert response.rpc_id == "rpc-123"
    assert response.pending_num_requested == pending
    assert raw == response.SerializeToString()


def test_keepalive_wire_has_no_events() -> None:
    response = pb.FetchResponse.FromString(fetch_response_wire((), replay_bytes(0), rpc_id_field("r"), 5))
    assert list(response.events) == []
    assert response.latest_replay_id == replay_bytes(0)
    assert response.pending_num_requested == 5


def logged(replay: int, size: int) -> LoggedEvent:
    payload = b"x" * size
    return LoggedEvent(replay, ("/c",), "id", "s", payload, 0, consumer_event_entry("id", "s", payload, replay))


def test_batches_stay_under_the_response_budget_but_always_make_progress() -> None:
    batch = [logged(n, 1000) for n in range(1, 6)]
    entry = len(batch[0].wire)

    assert within_budget(batch, entry * 5) == batch
    assert within_budget(batch, entry * 2 + 1) == batch[:2]
    assert within_budget(batch, 10) == batch[:1]
    assert within_budget([], 10) == []
