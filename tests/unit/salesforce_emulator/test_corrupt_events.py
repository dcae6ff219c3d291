"""The admin route that puts an undecodable change event on /data/ChangeEvents (a fault for subscribers' tests)."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator
from services.salesforce_emulator.event_log import replay_bytes

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-token"}
ROUTE = "/__emulator__/orgs/acme/events/corrupt"


def test_the_default_corrupt_event_has_a_valid_schema_and_header_and_a_union_branch_that_does_not_exist(
    client: TestClient, emulator: Emulator
) -> None:
    answer = client.post(ROUTE, headers=ADMIN, json={"entity": "Account"})
    assert answer.status_code == 200, answer.text
    [event] = [e for e in emulator.event_log.events(emulator.default_org.org_id) if e.event_id.startswith("corrupt-")]
    assert answer.json() == {"replay_id": replay_bytes(event.replay).hex(), "schema_id": event.schema_id}
    assert event.channels == ("/data/ChangeEvents",)
    schema_json = emulator.event_log.schema_json(event.schema_id)
    assert schema_json is not None
    schema = json.loads(schema_json)
    header = fastavro.schemaless_reader(
        io.BytesIO(event.payload), fastavro.parse_schema(schema["fields"][0]["type"]), None
    )
    assert isinstance(header, dict)
    assert header["entityName"] == "Account"
    with pytest.raises(IndexError):
        fastavro.schemaless_reader(io.BytesIO(event.payload), fastavro.parse_schema(schema), None)


def test_a_given_payload_is_logged_as_given_and_bad_requests_are_refused(
    client: TestClient, emulator: Emulator
) -> None:
    answer = client.post(ROUTE, headers=ADMIN, json={"entity": "Account", "payload_hex": "ff00"})
    assert answer.status_code == 200, answer.text
    assert emulator.event_log.events(emulator.default_org.org_id)[-1].payload == b"\xff\x00"
    assert client.post(ROUTE, headers=ADMIN, json={"entity": "Nope"}).status_code == 404
    assert client.post(ROUTE, headers=ADMIN, json={"entity": "Account", "payload_hex": "xyz"}).status_code == 400
    assert client.post(ROUTE, json={"entity": "Account"}).status_code == 401
