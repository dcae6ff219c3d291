"""Change Data Capture end to end, the way Salesforce's own Pub/Sub example consumes it.

Log in with SOAP (reading the response by position, as the official Python example does), open a
TLS gRPC channel trusting the emulator's CA with the ``accesstoken``/``instanceurl``/``tenantid``
metadata, make changes with simple-salesforce, and read them back from ``/data/AccountChangeEvent``:
payloads decoded with both fastavro and the reference ``avro`` package, changed/nulled fields
expanded with the documented bitmap algorithm (written here from the documentation, independently
of the emulator's encoder). A private emulator is used because one test purges its events.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import grpc
import httpx
import pytest
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc

from devstack.emulator import API_VERSION, EmulatorProcess, start_emulator
from tests.fixtures.emulator import simple_salesforce

pytestmark = pytest.mark.conformance

TOPIC = "/data/AccountChangeEvent"
CLIENT = "conformance-cdc"


@pytest.fixture(scope="module")
def private_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    running = start_emulator(tmp_path_factory.mktemp("cdc-emulator"))
    yield running
    assert running.stop() == 0


@dataclass(frozen=True)
class Login:
    session_id: str
    server_url: str
    org_id: str


def soap_login(emulator: EmulatorProcess, username: str | None = None, password: str | None = None) -> Login:
    envelope = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:urn="urn:partner.soap.sforce.com"><soapenv:Body><urn:login>'
        f"<urn:username>{username or emulator.info['username']}</urn:username>"
        f"<urn:password>{password or emulator.info['password']}</urn:password>"
        "</urn:login></soapenv:Body></soapenv:Envelope>"
    )
    with emulator.http() as client:
        response = client.post(
            f"/services/Soap/u/{API_VERSION}/",
            content=envelope,
            headers={"content-type": "text/xml", "SOAPAction": "login"},
        )
    response.raise_for_status()
    # By position, exactly as the official example: Envelope > Body > loginResponse > result.
    result = ET.fromstring(response.text)[0][0][0]
    user_info = result[6]
    return Login(session_id=result[4].text or "", server_url=result[3].text or "", org_id=user_info[8].text or "")


def metadata(emulator: EmulatorProcess, login: Login) -> tuple[tuple[str, str], ...]:
    url = httpx.URL(login.server_url)
    instance = f"{url.scheme}://{url.netloc.decode()}"
    assert instance == emulator.instance_url
    return (("accesstoken", login.session_id), ("instanceurl", instance), ("tenantid", login.org_id))


def topic_schema_id(subscriber: Subscriber) -> str:
    return str(subscriber.stub.GetTopic(pb.TopicRequest(topic_name=TOPIC), metadata=subscriber.metadata).schema_id)


def earliest(n: int, topic: str = TOPIC) -> pb.FetchRequest:
    return pb.FetchRequest(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=n)


class Subscriber:
    """A pull subscriber on a thread: sends FetchRequests on demand, collects responses."""

    def __init__(self, emulator: EmulatorProcess, login: Login, first: pb.FetchRequest) -> None:
        credentials = grpc.ssl_channel_credentials(Path(emulator.ca_cert).read_bytes())
        self.channel = grpc.secure_channel(emulator.grpc_target, credentials)
        self.stub = pb_grpc.PubSubStub(self.channel)
        self.metadata = metadata(emulator, login)
        self.topic = first.topic_name
        self.requests: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        self.responses: queue.Queue[pb.FetchResponse | grpc.RpcError] = queue.Queue()
        self.requests.put(first)
        # A streaming call object (iterable, cancellable); grpc types it loosely.
        self.call: Any = self.stub.Subscribe(iter(self.requests.get, None), metadata=self.metadata)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def request(self, n: int) -> None:
        self.requests.put(pb.FetchRequest(topic_name=self.topic, num_requested=n))

    def next(self, timeout: float = 20) -> pb.FetchResponse:
        item = self.responses.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def expand(schema: dict[str, Any], bitmaps: list[str]) -> list[str]:
    """The documented algorithm: element 0 is a hex bitmap over the top-level schema fields
    (bit i = field i); later elements ``<index>-0x<hex>`` cover the children of the compound
    field at that index (its record branch), named ``Parent.Child``."""
    fields = schema["fields"]
    names: list[str] = []
    for element in bitmaps:
        if element.startswith("0x"):
            mask = int(element, 16)
            names += [fields[i]["name"] for i in range(len(fields)) if mask >> i & 1]
        else:
            index, _, hex_mask = element.partition("-")
            parent = fields[int(index)]
            record = next(t for t in parent["type"] if isinstance(t, dict) and t.get("type") == "record")
            mask = int(hex_mask, 16)
            children = record["fields"]
            names += [f"{parent['name']}.{children[i]['name']}" for i in range(len(children)) if mask >> i & 1]
    return names


@pytest.fixture(scope="module")
def login(private_emulator: EmulatorProcess) -> Login:
    return soap_login(private_emulator)


def test_soap_login_gives_what_the_pubsub_example_reads(private_emulator: EmulatorProcess, login: Login) -> None:
    assert login.org_id == private_emulator.info["org_id"]
    assert login.session_id


def test_changes_arrive_as_documented(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator, client=CLIENT)
    tag = uuid.uuid4().hex[:8]
    account = sf.Account.create({"Name": f"CDC {tag}", "Phone": "555-0100", "BillingCity": "Lyon"})["id"]
    sf.Account.update(account, {"Phone": None, "BillingCity": "Paris", "BillingState": "IDF"})
    sf.Account.delete(account)

    subscriber = Subscriber(
        private_emulator, login, pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=100)
    )
    try:
        topic = subscriber.stub.GetTopic(pb.TopicRequest(topic_name=TOPIC), metadata=subscriber.metadata)
        info = subscriber.stub.GetSchema(pb.SchemaRequest(schema_id=topic.schema_id), metadata=subscriber.metadata)
        mine: list[tuple[dict[str, Any], dict[str, Any]]] = []
        while len(mine) < 3:
            response = subscriber.next()
            for consumed in response.events:
                fast, reference = decode_both(info.schema_json, consumed.event.payload)
                assert fast == reference
                if account in fast["ChangeEventHeader"]["recordIds"]:
                    mine.append((fast, json.loads(info.schema_json)))
            if response.events and response.pending_num_requested == 0:
                subscriber.request(100)
    finally:
        subscriber.close()

    assert topic.can_subscribe
    assert topic.tenant_guid == login.org_id
    assert len(topic.schema_id) == 22
    (create, schema), (update, _), (delete, _) = mine
    headers = [event["ChangeEventHeader"] for event, _ in mine]
    assert [h["changeType"] for h in headers] == ["CREATE", "UPDATE", "DELETE"]
    assert all(h["changeOrigin"] == f"com/salesforce/api/rest/{API_VERSION};client={CLIENT}" for h in headers)
    assert len({h["transactionKey"] for h in headers}) == 3
    assert all(h["sequenceNumber"] == 1 for h in headers)
    assert headers[0]["commitTimestamp"] <= headers[1]["commitTimestamp"] <= headers[2]["commitTimestamp"]
    assert headers[0]["commitNumber"] < headers[1]["commitNumber"] < headers[2]["commitNumber"]
    assert headers[0]["commitUser"].startswith("005")
    assert schema["fields"][0]["name"] == "ChangeEventHeader"

    assert create["Name"] == f"CDC {tag}"
    assert create["BillingAddress"]["City"] == "Lyon"
    assert expand(schema, headers[0]["changedFields"]) == []

    changed = expand(schema, headers[1]["changedFields"])
    assert "LastModifiedDate" in changed
    assert {"Phone", "BillingAddress.City", "BillingAddress.State"} <= set(changed)
    assert "BillingAddress" not in changed  # only its children changed
    assert "Phone" in expand(schema, headers[1]["nulledFields"])
    assert update["BillingAddress"]["City"] == "Paris"
    assert update["Name"] is None  # unchanged fields are null in Pub/Sub payloads
    for element in headers[1]["changedFields"]:
        hex_part = element.split("x", 1)[1]
        assert hex_part == hex_part.upper()
        assert len(hex_part) % 2 == 0
    assert delete["ChangeEventHeader"]["recordIds"] == [account]


def decode_both(schema_json: str, payload: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    fast: Any = fastavro.schemaless_reader(io.BytesIO(payload), fastavro.parse_schema(json.loads(schema_json)), None)
    reader = avro.io.DatumReader(avro.schema.parse(schema_json))
    reference: Any = reader.read(avro.io.BinaryDecoder(io.BytesIO(payload)))
    return fast, reference


def test_flow_control_delivers_exactly_what_was_requested(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator)
    for i in range(5):
        sf.Account.create({"Name": f"flow {i}"})

    subscriber = Subscriber(
        private_emulator, login, pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=3)
    )
    try:
        delivered = 0
        while delivered < 3:
            response = subscriber.next()
            delivered += len(response.events)
            assert response.pending_num_requested == 3 - delivered
        subscriber.request(150)  # more than the 100 allowed: treated as 100
        response = subscriber.next()
    finally:
        subscriber.close()

    assert delivered == 3
    assert response.events
    assert response.pending_num_requested == 100 - len(response.events)
    assert len(response.latest_replay_id) == 8


def test_an_expired_replay_id_fails_with_the_documented_error(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator)
    sf.Account.create({"Name": "before the purge"})
    first = Subscriber(
        private_emulator, login, pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.EARLIEST, num_requested=1)
    )
    try:
        old_replay_id = first.next().events[0].replay_id
    finally:
        first.close()
    sf.Account.create({"Name": "after"})
    private_emulator.admin("POST", f"/orgs/{login.org_id}/events/purge", {"older_than_seconds": 0})

    expired = Subscriber(
        private_emulator,
        login,
        pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.CUSTOM, replay_id=old_replay_id, num_requested=1),
    )
    try:
        with pytest.raises(grpc.RpcError) as raised:
            expired.next()
    finally:
        expired.close()

    error: Any = raised.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["error-code"] == "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
    assert "rpcId" in error.details()


def test_a_bad_session_is_an_auth_error(private_emulator: EmulatorProcess, login: Login) -> None:
    bad = Login(session_id="not-a-session", server_url=login.server_url, org_id=login.org_id)
    subscriber = Subscriber(private_emulator, bad, pb.FetchRequest(topic_name=TOPIC, num_requested=1))
    try:
        with pytest.raises(grpc.RpcError) as raised:
            subscriber.next()
    finally:
        subscriber.close()

    error: Any = raised.value
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert dict(error.trailing_metadata() or ())["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"


def test_injected_gap_and_overflow_events_arrive_header_only(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator)
    account = sf.Account.create({"Name": "gap target"})["id"]
    probe = Subscriber(private_emulator, login, earliest(100))
    try:
        info = probe.stub.GetSchema(pb.SchemaRequest(schema_id=topic_schema_id(probe)), metadata=probe.metadata)
        last = b""
        while not last:
            response = probe.next()
            for consumed in response.events:
                header = decode_both(info.schema_json, consumed.event.payload)[0]["ChangeEventHeader"]
                if header["recordIds"] == [account]:
                    last = consumed.replay_id
            if response.events and response.pending_num_requested == 0:
                probe.request(100)
    finally:
        probe.close()
    org = login.org_id
    private_emulator.admin(
        "POST", f"/orgs/{org}/events/gap", {"entity": "Account", "record_ids": [account], "change_type": "GAP_UPDATE"}
    )
    private_emulator.admin("POST", f"/orgs/{org}/events/overflow", {"entity": "Account"})

    after = Subscriber(
        private_emulator,
        login,
        pb.FetchRequest(topic_name=TOPIC, replay_preset=pb.CUSTOM, replay_id=last, num_requested=2),
    )
    try:
        events: list[Any] = []
        schema = ""
        while len(events) < 2:
            for consumed in after.next().events:
                if not schema:
                    request = pb.SchemaRequest(schema_id=consumed.event.schema_id)
                    schema = after.stub.GetSchema(request, metadata=after.metadata).schema_json
                events.append(decode_both(schema, consumed.event.payload)[0])
    finally:
        after.close()

    gap, overflow = (event["ChangeEventHeader"] for event in events)
    assert (gap["changeType"], gap["recordIds"], gap["sequenceNumber"]) == ("GAP_UPDATE", [account], 1)
    assert (overflow["changeType"], overflow["recordIds"]) == ("GAP_OVERFLOW", [])
    assert overflow["entityName"] == "Account"
    assert events[0]["Name"] is None  # gap events carry no field values


def test_dropped_streams_end_with_unavailable(private_emulator: EmulatorProcess, login: Login) -> None:
    subscriber = Subscriber(private_emulator, login, pb.FetchRequest(topic_name=TOPIC, num_requested=1))
    try:
        # The LATEST subscription is open once the server has it; dropping then ends it.
        for _ in range(50):
            dropped = private_emulator.admin("POST", f"/orgs/{login.org_id}/streams/drop").json()["dropped"]
            if dropped:
                break
            threading.Event().wait(0.1)
        with pytest.raises(grpc.RpcError) as raised:
            subscriber.next()
    finally:
        subscriber.close()

    error: Any = raised.value
    assert dropped == 1
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def collect(subscriber: Subscriber, wanted: int, match: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(event decoded identically by fastavro and avro, its schema) for the first ``wanted`` matches."""
    schemas: dict[str, str] = {}
    found: list[tuple[dict[str, Any], dict[str, Any]]] = []
    while len(found) < wanted:
        response = subscriber.next()
        for consumed in response.events:
            schema_id = consumed.event.schema_id
            if schema_id not in schemas:
                request = pb.SchemaRequest(schema_id=schema_id)
                schemas[schema_id] = subscriber.stub.GetSchema(request, metadata=subscriber.metadata).schema_json
            fast, reference = decode_both(schemas[schema_id], consumed.event.payload)
            assert fast == reference
            if match(fast["ChangeEventHeader"]):
                found.append((fast, json.loads(schemas[schema_id])))
        if response.events and response.pending_num_requested == 0:
            subscriber.request(100)
    return found


def test_custom_object_changes_arrive_on_their_own_channel(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator, client=CLIENT)
    record = sf.Partner_Tier__c.create({"Name": f"Tier {uuid.uuid4().hex[:8]}", "Level__c": "Gold"})["id"]
    sf.Partner_Tier__c.update(record, {"Level__c": "Silver"})

    # Salesforce's channel for Partner_Tier__c: the "__c" suffix becomes "__ChangeEvent".
    channel = "/data/Partner_Tier__ChangeEvent"
    subscriber = Subscriber(private_emulator, login, earliest(100, channel))
    try:
        events = collect(subscriber, 2, lambda header: record in header["recordIds"])
    finally:
        subscriber.close()

    (create, schema), (update, _) = events
    assert schema["name"] == "Partner_Tier__ChangeEvent"
    assert schema["fields"][0]["name"] == "ChangeEventHeader"
    headers = [create["ChangeEventHeader"], update["ChangeEventHeader"]]
    assert [(h["entityName"], h["changeType"], h["recordIds"]) for h in headers] == [
        ("Partner_Tier__c", "CREATE", [record]),
        ("Partner_Tier__c", "UPDATE", [record]),
    ]
    assert create["Level__c"] == "Gold"
    assert update["Level__c"] == "Silver"
    assert "Level__c" in expand(schema, headers[1]["changedFields"])


def test_a_composite_transaction_shares_one_transaction_key(private_emulator: EmulatorProcess, login: Login) -> None:
    sf: Any = simple_salesforce(private_emulator, client=CLIENT)
    tag = uuid.uuid4().hex[:8]
    records = [{"attributes": {"type": "Account"}, "Name": f"txn {tag} {i}"} for i in (1, 2)]
    results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
    created = [r["id"] for r in results]

    subscriber = Subscriber(private_emulator, login, earliest(100))
    try:
        events = collect(subscriber, 2, lambda header: bool(set(created) & set(header["recordIds"])))
    finally:
        subscriber.close()

    headers = [event["ChangeEventHeader"] for event, _ in events]
    assert [h["recordIds"] for h in headers] == [[created[0]], [created[1]]]
    assert [h["changeType"] for h in headers] == ["CREATE", "CREATE"]
    assert len({h["transactionKey"] for h in headers}) == 1
    assert [h["sequenceNumber"] for h in headers] == [1, 2]
    assert headers[0]["commitNumber"] == headers[1]["commitNumber"]


def auth_error(emulator: EmulatorProcess, login: Login) -> Any:
    subscriber = Subscriber(emulator, login, pb.FetchRequest(topic_name=TOPIC, num_requested=1))
    try:
        with pytest.raises(grpc.RpcError) as raised:
            subscriber.next()
    finally:
        subscriber.close()
    error: Any = raised.value
    return error


def test_a_session_presented_for_another_org_is_an_auth_error(private_emulator: EmulatorProcess, login: Login) -> None:
    globex = private_emulator.admin("GET", "/orgs/globex").json()["org_id"]
    assert globex != login.org_id

    error = auth_error(private_emulator, Login(login.session_id, login.server_url, org_id=globex))

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert dict(error.trailing_metadata() or ())["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"
    assert "rpcId" in error.details()


def test_a_session_expired_by_the_fault_is_an_auth_error(private_emulator: EmulatorProcess) -> None:
    # Globex's session, so that expiring it leaves the module's acme login usable.
    globex = soap_login(private_emulator, "admin@globex.example", "globex-dev-password")
    alive = Subscriber(private_emulator, globex, earliest(1))
    try:
        topic = alive.stub.GetTopic(pb.TopicRequest(topic_name=TOPIC), metadata=alive.metadata)
    finally:
        alive.close()
    assert topic.tenant_guid == globex.org_id
    private_emulator.admin("POST", f"/orgs/{globex.org_id}/tokens/expire")

    error = auth_error(private_emulator, globex)

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert dict(error.trailing_metadata() or ())["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"
    assert "rpcId" in error.details()


def soap_merge(emulator: EmulatorProcess, login: Login, master: str, loser: str, client: str) -> ET.Element:
    envelope = (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:urn="urn:partner.soap.sforce.com" xmlns:urn1="urn:sobject.partner.soap.sforce.com">'
        f"<soapenv:Header><urn:SessionHeader><urn:sessionId>{login.session_id}</urn:sessionId></urn:SessionHeader>"
        f"<urn:CallOptions><urn:client>{client}</urn:client></urn:CallOptions></soapenv:Header>"
        "<soapenv:Body><urn:merge><urn:request><urn:masterRecord><urn1:type>Account</urn1:type>"
        f"<urn1:Id>{master}</urn1:Id><urn1:Phone>555-0123</urn1:Phone></urn:masterRecord>"
        f"<urn:recordToMergeIds>{loser}</urn:recordToMergeIds></urn:request></urn:merge></soapenv:Body>"
        "</soapenv:Envelope>"
    )
    with emulator.http() as http:
        response = http.post(
            f"/services/Soap/u/{API_VERSION}/",
            content=envelope,
            headers={"content-type": "text/xml", "SOAPAction": "merge"},
        )
    response.raise_for_status()
    return ET.fromstring(response.text)


def test_a_soap_merge_arrives_as_a_loser_delete_and_a_master_update(
    private_emulator: EmulatorProcess, login: Login
) -> None:
    sf: Any = simple_salesforce(private_emulator)
    tag = uuid.uuid4().hex[:8]
    master = sf.Account.create({"Name": f"master {tag}"})["id"]
    loser = sf.Account.create({"Name": f"loser {tag}"})["id"]

    reply = soap_merge(private_emulator, login, master, loser, client="conformance-merge")

    partner = "{urn:partner.soap.sforce.com}"
    assert reply.findtext(f".//{partner}result/{partner}success") == "true"
    [row] = sf.query_all(f"SELECT IsDeleted, MasterRecordId FROM Account WHERE Id = '{loser}'", include_deleted=True)[
        "records"
    ]
    assert (row["IsDeleted"], row["MasterRecordId"]) == (True, master)
    subscriber = Subscriber(private_emulator, login, earliest(100))
    try:
        events = collect(subscriber, 4, lambda header: bool({master, loser} & set(header["recordIds"])))
    finally:
        subscriber.close()

    merge_events = [event for event, _ in events[2:]]  # after the two CREATEs
    headers = [event["ChangeEventHeader"] for event in merge_events]
    assert sorted((h["changeType"], h["recordIds"][0]) for h in headers) == sorted(
        [("UPDATE", master), ("DELETE", loser)]
    )
    assert {h["changeOrigin"] for h in headers} == {f"com/salesforce/api/soap/{API_VERSION};client=conformance-merge"}
    assert len({h["transactionKey"] for h in headers}) == 1
    update = next(e for e in merge_events if e["ChangeEventHeader"]["changeType"] == "UPDATE")
    assert update["Phone"] == "555-0123"
