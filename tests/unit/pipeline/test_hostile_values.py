"""Hostile field values pushed through every hop, both ways, in-process (no Kafka, no PostgreSQL).

The property (issue "hostile values"): every value either

(a) arrives on the far side equal to the input under its field's documented rule (below), or
(b) stops at exactly one hop with a clear rejection: a reason code that hop documents, and the
    reason where that hop's sync log row gets it.

Anything else fails: an exception no hop expects (UnicodeEncodeError, OverflowError, a ValueError
from protobuf, a fastavro error, a RecursionError, an emulator 500), a write the writer would retry
for ever, a value that arrives changed, a state or sync-log row PostgreSQL could not store.

The hops are the real code of each service; only storage that needs PostgreSQL or Kafka is
replaced, the way each service's own unit tests replace it:

* app → Salesforce: the app's RecordChanged (protobuf; over Kafka's record limit the app's
  producer refuses it) → mapping intake (``decode_event``, ``changes_of``) → ``translate`` (with
  the describe the emulator serves, as cdc-ingest summarises it for mapping) → ChangeMapped
  (``keyed``, record limit as ``Sender.publish_all`` checks it) → the resolver's handler (in-memory
  store) → WriteRecords → the writer (``command_of``, ``record_writes``, ``Batcher``,
  ``BatchExecutor`` over the real ``SalesforceClient``, whose httpx encodes the JSON body) → the
  emulator's REST layer in-process (``json_body``, ``DataApi``, ``render``, the SQLite store) → the
  emulator's CDC encoding → cdc-ingest (``parse_schema``, ``decode``, ``translate_event``,
  ``Publisher``) → ``translate`` back (Salesforce side); and cdc-ingest's re-read of the record by
  REST (``RecordReader.row_change``), which must agree with the streamed change.
* Salesforce → app: a REST user's JSON body (any token: NaN, 1e400, lone-surrogate escapes, nested
  arrays and objects) → the emulator → CDC → cdc-ingest → mapping → the resolver's app update
  (RecordChanged) → the app's decoding.

Rules for values that arrive (``app_to_crm_rule`` and ``crm_to_app_rule``; blank == null
throughout, since Salesforce stores empty text as null):

* string: the same text; longer than the smaller of the mapping's maxLength and Salesforce's
  length is STRING_TOO_LONG;
* no transform: Salesforce's text form of the value (``payload.to_salesforce``, then the text
  field's coercion: booleans as ``true``/``false``, integral floats without ``.0``);
* int: the integer (numeric text and integral decimals coerced), within protobuf's int64;
* decimal (a currency field, precision 18, scale 2): Salesforce keeps a double rounded to the scale
  (its shortest repr, half away from zero), which comes back as the Decimal of its shortest repr;
  non-finite is INVALID_VALUE;
* double (precision 18, scale 6): the same finite double, rounded to the scale the same way;
* numbers (int, decimal, double): more integer digits than the field holds (an int's digits, else
  precision - scale), counted after that rounding, is NUMBER_OUTSIDE_VALID_RANGE, refused by
  mapping when the describe it reads gives the field's precision, else by Salesforce;
* bool, date, picklist: the same value (``true``/``false`` and ISO text coerced);
* datetime: the same instant in UTC, truncated to milliseconds (Salesforce's precision);
* picklist with a value map: mapped out and back; a value the map lacks is INVALID_PICKLIST_VALUE;
* multipicklist: joined with ``;`` and split back, empty parts dropped.

What Salesforce holds must fit its field: a finite number, an int within 32 bits (the Avro
``int`` of its change events). Values drawn from the "ordinary" strategies (right type, within
Salesforce's limits) must arrive: a rejection of those is a failure too. Values that once broke a
hop are kept as explicit examples, so that every run tries them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, TypeVar, cast

import httpx
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from services.cdc_ingest.event_schema import parse_schema
from services.cdc_ingest.publisher import Publisher
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rejection import UndecodableError
from services.cdc_ingest.rest import SalesforceRest
from services.cdc_ingest.translate import translate_event
from services.common.change import Change, ChangeKind, Side
from services.common.codec import decode_event, encode_event, message_type_name, record_key
from services.common.contract import from_proto, to_field_value, to_proto, to_value
from services.common.errors import InvalidEvent, RecordTooLargeError
from services.common.kafka import RECORD_HEADROOM
from services.common.salesforce import SalesforceClient, Session, UnlimitedBudget, env_secrets
from services.common.schema import field_summary
from services.common.tenant_config import FieldType, ObjectPair, StoredConfig, parse_tenant_config
from services.common.value_codec import encode_value, unstorable
from services.common.values import Value, is_blank, same_value
from services.conflict_resolver.handlers import Resolver
from services.conflict_resolver.resolve import FieldRecord, LinkState
from services.conflict_resolver.state_codec import decode_record, encode_record
from services.mapping.contract import changes_of, keyed
from services.mapping.describes import parse_describe
from services.mapping.events import MappedEvent, Unreadable
from services.mapping.links import Link, mapped_event_id
from services.mapping.translate import CrmFieldInfo, RejectedChangeError, coerce, translate
from services.salesforce_emulator import cdc
from services.salesforce_emulator.changes import CommittedTransaction
from services.salesforce_emulator.context import CallContext, parse_call_options
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.rest import DataApi, json_body, render
from services.salesforce_emulator.schema import STANDARD_OBJECTS, FieldDef, ObjectDef, custom_object
from services.salesforce_emulator.store import RecordStore
from services.writer.batching import Batcher, Ingestion
from services.writer.commands import Command, Delivery, record_writes
from services.writer.contract import command_of, write_settled
from services.writer.executor import BatchExecutor
from services.writer.payload import Outcome, WriteResult, to_salesforce
from tests.unit.conflict_resolver.fakes import FakeStore

pytestmark = pytest.mark.unit

T = TypeVar("T")

TENANT = "acme"
CLIENT = "duplex-acme"
INSTANCE_URL = "https://acme.my.salesforce.com"
API_VERSION = "62.0"
ORG_ID = "00D5g0000000001AAA"
USER_ID = "0055g0000000001AAA"
PAIR_NAME = "hostiles"
APP_OBJECT = "hostiles"
CRM_OBJECT = "Hostile__c"
APP_RECORD_ID = "app-1"
LINK_ID = "0" * 31 + "1"
EXTERNAL_ID = f"dx-{LINK_ID}"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Kafka's default record limit, which every producer of Duplex is configured with.
MAX_RECORD = 1024 * 1024
CHANNEL = "/data/ChangeEvents"

# Salesforce's error codes for a value it refuses (anything else from Salesforce is no answer about the value).
SALESFORCE_VALUE_CODES = frozenset(
    {
        "STRING_TOO_LONG",
        "JSON_PARSER_ERROR",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "REQUIRED_FIELD_MISSING",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "FIELD_INTEGRITY_EXCEPTION",
    }
)
# The codes each hop documents for a value it refuses.
EXPECTED_CODES: Mapping[str, frozenset[str]] = {
    # The app's own producer: the RecordChanged does not fit in a Kafka record.
    "app producer": frozenset({"RECORD_TOO_LARGE"}),
    "mapping intake": frozenset({"INVALID_CHANGE"}),
    "mapping": frozenset(
        {"INVALID_VALUE", "STRING_TOO_LONG", "NUMBER_OUTSIDE_VALID_RANGE", "INVALID_PICKLIST_VALUE", "RECORD_TOO_LARGE"}
    ),
    "resolver": frozenset({"UNSTORABLE_TEXT", "INCOMPARABLE_VALUE"}),
    # Refused before any call (a code the writer gives a value it cannot send belongs here too).
    "writer": frozenset({"MISSING_ARGUMENT", "INVALID_VALUE"}),
    "salesforce": SALESFORCE_VALUE_CODES,
    "cdc-ingest": frozenset({"RECORD_TOO_LARGE"}),
}

# Hops that write a rejection's reason to the sync log as it is (the resolver escapes its own, and
# Salesforce's answer to a REST user is not Duplex's to log).
RAW_SYNC_LOG_HOPS = frozenset({"mapping intake", "mapping", "cdc-ingest"})

# --- the org: one custom object with a field of every kind ------------------------------------------

HOSTILE = custom_object(
    CRM_OBJECT,
    "a07",
    "Hostile",
    [
        FieldDef("Ext__c", "string", "Ext", length=80, external_id=True, unique=True, custom=True),
        FieldDef("Title__c", "string", "Title", length=20, custom=True),
        FieldDef("Note__c", "string", "Note", length=255, custom=True),
        FieldDef("Memo__c", "textarea", "Memo", length=131_072, custom=True),
        FieldDef("Count__c", "int", "Count", precision=9, custom=True),
        FieldDef("Amount__c", "currency", "Amount", precision=18, scale=2, custom=True),
        FieldDef("Score__c", "double", "Score", precision=18, scale=6, custom=True),
        FieldDef(
            "Active__c",
            "boolean",
            "Active",
            nillable=False,
            defaulted_on_create=True,
            default_value=False,
            custom=True,
        ),
        FieldDef("Since__c", "date", "Since", custom=True),
        FieldDef("Seen_At__c", "datetime", "Seen At", custom=True),
        FieldDef("Level__c", "picklist", "Level", length=255, custom=True),
        FieldDef("Tier__c", "picklist", "Tier", length=255, picklist_values=("Gold", "Silver"), custom=True),
        FieldDef("Tags__c", "multipicklist", "Tags", length=4099, custom=True),
    ],
)
OBJECTS: dict[str, ObjectDef] = {o.name: o for o in (*STANDARD_OBJECTS, HOSTILE)}

TIER_MAP = {"gold": "Gold", "silver": "Silver"}
FIELD_MAPPINGS: list[dict[str, Any]] = [
    # Salesforce's length (20) is the only limit.
    {"app": "title", "salesforce": "Title__c", "transform": {"type": "string"}},
    # The mapping's maxLength (10) is tighter than Salesforce's (255).
    {"app": "note", "salesforce": "Note__c", "transform": {"type": "string", "maxLength": 10}},
    # No transform: whatever the app sends travels as it is.
    {"app": "memo", "salesforce": "Memo__c"},
    {"app": "count", "salesforce": "Count__c", "transform": {"type": "int"}},
    {"app": "amount", "salesforce": "Amount__c", "transform": {"type": "decimal"}},
    {"app": "score", "salesforce": "Score__c", "transform": {"type": "double"}},
    {"app": "active", "salesforce": "Active__c", "transform": {"type": "bool"}},
    {"app": "since", "salesforce": "Since__c", "transform": {"type": "date"}},
    {"app": "seen_at", "salesforce": "Seen_At__c", "transform": {"type": "datetime"}},
    {"app": "level", "salesforce": "Level__c", "transform": {"type": "picklist"}},
    {"app": "tier", "salesforce": "Tier__c", "transform": {"type": "picklist", "valueMap": TIER_MAP}},
    {"app": "tags", "salesforce": "Tags__c", "transform": {"type": "multipicklist"}},
]
CONFIG = parse_tenant_config(
    {
        "apiVersion": "duplex.dev/v1",
        "kind": "Tenant",
        "metadata": {"name": TENANT},
        "spec": {
            "salesforce": {
                "instanceUrl": INSTANCE_URL,
                "apiVersion": API_VERSION,
                "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
                "dailyApiCap": 5000,
                "callOptionsClient": CLIENT,
            },
            "objects": [
                {
                    "name": PAIR_NAME,
                    "app": {"object": APP_OBJECT},
                    "salesforce": {"object": CRM_OBJECT, "externalIdField": "Ext__c"},
                    "conflictPolicy": "newest_wins",
                    # Blanks travel as nulls, so that a blank is a value like any other here.
                    "fields": [{**m, "allowNulls": True} for m in FIELD_MAPPINGS],
                }
            ],
        },
    }
)
STORED = StoredConfig(TENANT, 1, "", AT, "test", CONFIG)
PAIR: ObjectPair = CONFIG.spec.objects[0]


@dataclass(frozen=True)
class Spec:
    """One mapped field: its names, the mapping's type and the limits that apply to it."""

    app: str
    crm: str
    kind: FieldType | None
    max_length: int
    value_map: Mapping[str, str] | None
    crm_type: str
    # The digits a number field holds before its decimal point, and after it (0, 0: not a number).
    integer_digits: int = 0
    scale: int = 0


def _spec(app: str) -> Spec:
    mapping = PAIR.field_by_app(app)
    assert mapping is not None
    crm = HOSTILE.field(mapping.salesforce)
    assert crm is not None
    transform = mapping.transform
    limits = [n for n in (transform.max_length if transform else None, crm.length) if n]
    return Spec(
        app=app,
        crm=crm.name,
        kind=transform.type if transform else None,
        max_length=min(limits) if limits and crm.type in {"string", "textarea"} else 0,
        value_map=transform.value_map if transform else None,
        crm_type=crm.type,
        integer_digits=crm.precision if crm.type == "int" else crm.precision - crm.scale,
        scale=crm.scale,
    )


SPECS = {m["app"]: _spec(m["app"]) for m in FIELD_MAPPINGS}
BY_CRM = {s.crm: s for s in SPECS.values()}


# --- rejections and hops ----------------------------------------------------------------------------


class Rejected(Exception):  # noqa: N818 (an outcome of the property, not an error of the test)
    """A hop refused the value with a reason code (and wrote the reason where its sync log gets it)."""

    def __init__(self, hop: str, code: str, reason: str) -> None:
        super().__init__(f"{hop}: {code}: {reason[:300]}")
        self.hop = hop
        self.code = code
        self.reason = reason


@contextmanager
def hop(name: str) -> Iterator[None]:
    """Name the hop in the report of anything it raises but a :class:`Rejected`."""
    try:
        yield
    except Rejected:
        raise
    except Exception as error:
        error.add_note(f"unexpected failure at hop: {name}")
        raise


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    # A loop of its own: asyncio.run would unset the thread's loop under pytest-asyncio's.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def strings_in(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from strings_in(item)


def assert_storable_json(text: str, what: str) -> None:
    """PostgreSQL's jsonb refuses U+0000 and lone surrogates, escaped or not."""
    bad = [s for s in strings_in(json.loads(text)) if unstorable(s)]
    assert not bad, f"{what} cannot be stored in PostgreSQL: {bad[0][:80]!r}"


def record_size(message: Message, key: bytes) -> int:
    # As Sender.publish_all (and aiokafka's own check) counts it.
    return len(encode_event(message)) + len(key) + RECORD_HEADROOM


class KafkaTopic:
    """Stands in for a service's publish to a topic: keeps what was sent, refuses records over the
    limit the way ``Sender.publish_all`` does (RecordTooLargeError before anything is sent)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Message, bytes]] = []

    async def __call__(self, events: Sequence[tuple[Message, bytes]]) -> None:
        for index, (message, key) in enumerate(events):
            size = record_size(message, key)
            if size > MAX_RECORD:
                raise RecordTooLargeError(index, f"{size:,} bytes, over the {MAX_RECORD:,}-byte limit")
        self.sent.extend(events)


class CrmChangesSink:
    """cdc-ingest's ChangeSink without Kafka: the producer's size check, and the dead letters."""

    max_request_size = MAX_RECORD

    def __init__(self) -> None:
        self.sent: list[record_changed_pb2.RecordChanged] = []
        self.dead_letters: list[str] = []

    async def publish(
        self, changes: Sequence[record_changed_pb2.RecordChanged]
    ) -> list[record_changed_pb2.RecordChanged]:
        too_large = []
        for change in changes:
            key = record_key(change.tenant_id, change.object_type, change.record_id)
            if record_size(change, key) > self.max_request_size:
                too_large.append(change)
            else:
                self.sent.append(change)
        return too_large

    async def dead_letter(self, payload: bytes, *, tenant_id: str, reason: str, origin: dict[str, str]) -> None:
        self.dead_letters.append(reason)


@dataclass
class SyncLogRows:
    """cdc-ingest's sync log, in memory."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    async def log_event(
        self,
        tenant_id: str,
        event: str,
        *,
        message: str,
        record_id: str | None = None,
        code: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.rows.append({"event": event, "code": code, "message": message, "detail": detail or {}})


# --- the emulated org, in-process ---------------------------------------------------------------------


def strict_json(text: bytes) -> Any:
    """JSON as Salesforce writes it: NaN and Infinity are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


class Org:
    """The emulator's REST layer and store in-process, one seeded record, and what it committed.

    ``handle`` is what the emulator's sObject route does (``json_body``, ``DataApi.dispatch`` and
    ``render``); an exception other than a SalesforceError is what the real app answers 500
    UNKNOWN_EXCEPTION to, and is kept to be raised with its traceback.
    """

    def __init__(self) -> None:
        self.committed: list[CommittedTransaction] = []
        self.crashes: list[BaseException] = []
        ticks = itertools.count(1_772_366_400)
        self.store = RecordStore(
            ":memory:",
            schema_for=lambda _org: OBJECTS,
            faults_for=lambda _org: OrgFaults(),
            sink=self,
            clock=lambda: float(next(ticks)),
        )
        self.api = DataApi(self.store, query_handler=self._no_queries)
        with self.store.transaction(CallContext(ORG_ID, USER_ID, API_VERSION)) as txn:
            self.record_id = txn.create(CRM_OBJECT, {"Name": "seed", "Ext__c": EXTERNAL_ID})
        self.committed.clear()

    def close(self) -> None:
        self.store.close()

    @staticmethod
    def _no_queries(ctx: CallContext, url: str, headers: Mapping[str, str]) -> Any:
        raise AssertionError("no query is expected")

    def publish(self, transaction: CommittedTransaction) -> None:
        # The emulator's EventLog encodes here, inside the store's commit, and only logs a failure;
        # encoding later instead makes a failure visible.
        self.committed.append(transaction)

    def take_committed(self) -> list[CommittedTransaction]:
        taken, self.committed = self.committed, []
        return taken

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        query = request.url.query.decode()
        version = re.match(r"^/services/data/v([^/]+)/", path)
        ctx = CallContext(
            ORG_ID,
            USER_ID,
            version.group(1) if version else API_VERSION,
            client=parse_call_options(request.headers.get("sforce-call-options")),
        )
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body = json_body(request.content) if request.method in {"POST", "PATCH", "PUT"} else None
            reply = self.api.dispatch(ctx, request.method, path + (f"?{query}" if query else ""), body, headers)
            rendered = render(reply)
            content = bytes(rendered.body)
        except SalesforceError as error:
            try:
                # What the emulator's error handler answers (install_error_handlers).
                rendered = JSONResponse(error.rest_body(), status_code=error.http_status)
            except Exception as unrenderable:
                self.crashes.append(unrenderable)
                return httpx.Response(500, text="Internal Server Error")
            return httpx.Response(error.http_status, content=bytes(rendered.body))
        except Exception as error:
            self.crashes.append(error)
            return httpx.Response(500, json=[{"errorCode": "UNKNOWN_EXCEPTION", "message": str(error)[:200]}])
        response = httpx.Response(rendered.status_code, headers=dict(rendered.headers), content=content)
        if content:
            try:
                strict_json(content)
            except ValueError as error:
                self.crashes.append(AssertionError(f"the emulator answered {path} with invalid JSON: {error}"))
        return response

    def raise_crash(self) -> None:
        if self.crashes:
            raise self.crashes[0]

    def client(self) -> SalesforceClient:
        """Duplex's client for the tenant, signed in, its HTTP served by this org."""
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return SalesforceClient(
            TENANT,
            CONFIG.spec.salesforce,
            secrets=env_secrets({}),
            budget=UnlimitedBudget(),
            http=http,
            session=Session("00Dtoken", INSTANCE_URL),
        )

    def read(self) -> dict[str, Any]:
        """The record as REST returns it."""
        url = f"{INSTANCE_URL}/services/data/v{API_VERSION}/sobjects/{CRM_OBJECT}/{self.record_id}"
        with hop("emulator REST read"):
            response = self.handle(httpx.Request("GET", url))
            self.raise_crash()
        assert response.status_code == 200, response.text
        row: dict[str, Any] = strict_json(response.content)
        return row


# --- one trip through the pipeline -----------------------------------------------------------------


@dataclass(frozen=True)
class Arrived:
    """Where the value ended up: what Salesforce holds (the REST record's JSON value), and the app
    form a change event carried to the app side, unless no change event carried the field
    (Salesforce already held the value, so nothing changed)."""

    stored: Any
    app_value: Value = None
    carried: bool = False


@dataclass
class Trip:
    """One example's world: a fresh org, a linked record, a resolver over an in-memory store."""

    org: Org = field(default_factory=Org)
    store: FakeStore = field(default_factory=lambda: FakeStore([STORED]))
    crm_writes: KafkaTopic = field(default_factory=KafkaTopic)
    app_updates: KafkaTopic = field(default_factory=KafkaTopic)
    cdc_log: SyncLogRows = field(default_factory=SyncLogRows)
    crm_fields: Mapping[str, CrmFieldInfo] = field(default_factory=dict)
    replay: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.store.add_link(
            TENANT,
            LinkState(LINK_ID, PAIR_NAME, EXTERNAL_ID, app_record_id=APP_RECORD_ID, crm_record_id=self.org.record_id),
        )
        self.resolver = Resolver(
            self.store,
            publish_crm=self.crm_writes,
            publish_app=self.app_updates,
            service_name="conflict-resolver",
            clock=lambda: AT + timedelta(minutes=1),
        )
        self.sf = self.org.client()

        async def summarise(_entity: str, describe: Mapping[str, Any]) -> None:
            # What cdc-ingest stores (crm_object_fields) and mapping reads back.
            self.crm_fields = parse_describe(json.dumps(field_summary(describe["fields"])))

        self.rest = SalesforceRest(self.sf, on_describe=summarise)

    def link(self) -> Link:
        return Link(TENANT, PAIR_NAME, LINK_ID, APP_RECORD_ID, self.org.record_id, EXTERNAL_ID)

    # --- mapping ------------------------------------------------------------------------------------

    def map_change(self, data: bytes, key: bytes, side: Side) -> Change:
        """Mapping's intake of one RecordChanged record."""
        with hop("mapping intake"):
            try:
                event = decode_event(
                    record_changed_pb2.RecordChanged,
                    data,
                    declared_type=message_type_name(record_changed_pb2.RecordChanged),
                )
            except InvalidEvent as error:
                raise Rejected("mapping intake", "INVALID_CHANGE", error.reason) from error
            (change,) = changes_of([event], [key], side)
        if isinstance(change, Unreadable):
            raise Rejected("mapping intake", "INVALID_CHANGE", change.reason)
        return change

    def translate(self, change: Change) -> MappedEvent:
        """Mapping's translate, and the event the mapper would publish."""
        with hop("mapping translate"):
            try:
                mapped = translate(PAIR, change, resolve=lambda *_: None, crm_fields=self.crm_fields)
            except RejectedChangeError as error:
                raise Rejected("mapping", error.code, str(error)) from error
        if not mapped.fields:
            reasons = "; ".join(f"{d.field}: {d.reason}" for d in mapped.dropped)
            raise AssertionError(f"every field is mapped both ways, yet mapping dropped: {reasons or 'everything'}")
        return MappedEvent(
            event_id=mapped_event_id(change),
            link=self.link(),
            mapping_version=STORED.version,
            side=change.side,
            kind=change.kind,
            at=change.at,
            origin_client=change.origin_client,
            source_event_id=change.event_id,
            fields=mapped.fields,
            dropped=mapped.dropped,
        )

    def publish_mapped(self, event: MappedEvent) -> bytes:
        """Mapping's ChangeMapped on the wire (the mapper refuses one over the record limit)."""
        with hop("mapping publish (ChangeMapped)"):
            ((message, key),) = keyed([event])
            size = record_size(message, key)
        if size > MAX_RECORD:
            raise Rejected("mapping", "RECORD_TOO_LARGE", f"the mapped change is {size:,} bytes")
        return encode_event(message)

    # --- resolver -----------------------------------------------------------------------------------

    async def resolve(self, data: bytes) -> None:
        with hop("resolver"):
            event = decode_event(change_mapped_pb2.ChangeMapped, data)
            refused = await self.resolver.on_mapped_batch([event])
            self.check_resolver_storage()
        if refused:
            rows = [row for row in self.store.tables.log if row[2] == "change.rejected"]
            assert rows, f"the resolver refused the change without a sync log row: {refused}"
            raise Rejected("resolver", str(rows[-1][5]), str(rows[-1][6]))

    def check_resolver_storage(self) -> None:
        """Everything the resolver keeps must survive PostgreSQL (jsonb and text) exactly."""
        for key, records in self.store.tables.fields.items():
            for name, record in records.items():
                text = json.dumps(encode_record(record))
                assert_storable_json(text, f"field state {key}/{name}")
                again = encode_record(decode_record(json.loads(text)))
                assert again == json.loads(text), f"field state {name} does not round-trip: {again} != {text}"
        for _, pending in self.store.tables.sent.values():
            assert_storable_json(json.dumps({n: encode_value(v) for n, v in pending.items()}), "pending writes")
        for row in self.store.tables.log:
            texts: tuple[str | None, ...] = row[:7]
            bad = [t for t in texts if t is not None and unstorable(t)]
            assert not bad, f"sync log row {row[2]} cannot be stored: {bad[0]!r:.100}"
            assert_storable_json(row[7], f"sync log detail of {row[2]}")

    # --- writer -------------------------------------------------------------------------------------

    async def write(self) -> None:
        """The writer: every WriteRecords the resolver sent, through the real executor."""
        commands = [m for m, _ in self.crm_writes.sent if isinstance(m, write_records_pb2.WriteRecords)]
        for command_message in commands:
            data = encode_event(command_message)
            with hop("writer intake"):
                message = decode_event(write_records_pb2.WriteRecords, data)
                command = command_of(message)
                writes, refused = record_writes(command, "token-1")
            for result in refused:
                await self.settle_rejected(command, result)
            batcher = Batcher(ingestion=Ingestion.REST)
            for write in writes:
                batcher.add(write, AT)
            for batch in batcher.drain():
                with hop("writer call"):
                    results = await BatchExecutor(self.sf).execute(batch)
                with hop("emulator REST write"):
                    self.org.raise_crash()
                for result in results:
                    assert result.outcome is not Outcome.RETRY, (
                        f"the writer would retry this write for ever: {result.errors}"
                    )
                    if result.outcome is Outcome.REJECTED:
                        await self.settle_rejected(command, result)

    async def settle_rejected(self, command: Command, result: WriteResult) -> None:
        """The write was refused for good: the resolver settles it and its sync log says why."""
        delivery = Delivery(
            token="token-1",
            command_id=command.command_id,
            tenant_id=TENANT,
            partition=("crm-writes", 0),
            offset=0,
            backfill=False,
            origin_commit_time=command.origin_commit_time,
            key=None,
            headers=(),
            timestamp_ms=None,
        )
        with hop("resolver (write settled)"):
            settled = write_settled(result, delivery, attempts=1, settled_at=AT + timedelta(minutes=2))
            event = decode_event(write_settled_pb2.WriteSettled, encode_event(settled))
            refused = await self.resolver.on_settled_batch([event])
            self.check_resolver_storage()
        assert not refused, f"the resolver refused the writer's outcome: {refused}"
        codes = [row[5] for row in self.store.tables.log if row[2] == "write.rejected"]
        assert codes == [result.code], f"the sync log should say why the write was refused: {codes}"
        refused_by = "salesforce" if result.code in SALESFORCE_VALUE_CODES else "writer"
        raise Rejected(refused_by, result.code, result.errors[0].message if result.errors else "")

    # --- cdc-ingest ---------------------------------------------------------------------------------

    async def ingest(self) -> list[bytes]:
        """The change events of what the org committed, read by cdc-ingest: RecordChanged records."""
        transactions = self.org.take_committed()
        with hop("emulator CDC encoding"):
            events = [event for t in transactions for event in cdc.change_events(t, OBJECTS)]
        with hop("cdc-ingest describe"):
            types = await self.rest.fields(CRM_OBJECT)
            self.org.raise_crash()
        published: list[bytes] = []
        for change_event in events:
            replay_id = next(self.replay).to_bytes(8, "big")
            with hop("cdc-ingest decode/translate"):
                # A change event of a value Salesforce accepted must be readable: no UndecodableError.
                schema = parse_schema(change_event.schema.schema_id, change_event.schema.schema_json)
                record = schema.decode(change_event.payload)
                translated = translate_event(
                    tenant_id=TENANT,
                    channel=CHANNEL,
                    replay_id=replay_id,
                    schema=schema,
                    record=record,
                    field_types=types,
                )
            sink = CrmChangesSink()
            with hop("cdc-ingest publish"):
                await Publisher(TENANT, sink, self.cdc_log).publish(list(translated.changes), "stream")
            if len(sink.sent) < len(translated.changes):
                rows = [r for r in self.cdc_log.rows if r["code"] == "RECORD_TOO_LARGE"]
                assert rows, "cdc-ingest refused a change without a sync log row"
                raise Rejected("cdc-ingest", "RECORD_TOO_LARGE", str(rows[-1]["message"]))
            published += [encode_event(change) for change in sink.sent]
        return published

    async def reread(self, types_changed: Mapping[str, Value]) -> None:
        """cdc-ingest's REST re-read of the record must agree with the streamed change."""
        row = self.org.read()
        with hop("cdc-ingest re-read"):
            reader = RecordReader(tenant_id=TENANT, rest=self.rest, publisher=cast(Publisher, None), page_size=1)
            read = from_proto(
                reader.row_change(CRM_OBJECT, row, await self.rest.fields(CRM_OBJECT), ChangeKind.SNAPSHOT, "poll")
            )
        for name, streamed in types_changed.items():
            again = read.fields.get(name)
            assert same_value(again, streamed) or _both_nan(again, streamed), (
                f"{name}: the CDC stream says {streamed!r}, a REST re-read says {again!r}"
            )


def _both_nan(a: Value, b: Value) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


APP_KEY = record_key(TENANT, APP_OBJECT, APP_RECORD_ID)


def _app_edit(spec: Spec, value: Value) -> Change:
    return Change(
        event_id="app-event-1",
        tenant_id=TENANT,
        side=Side.APP,
        object_type=APP_OBJECT,
        record_id=APP_RECORD_ID,
        kind=ChangeKind.UPDATE,
        fields={spec.app: value},
        at=AT,
        changed=frozenset({spec.app}),
        nulled=frozenset({spec.app}) if value is None else frozenset(),
    )


async def app_to_salesforce(trip: Trip, spec: Spec, value: Value) -> Arrived:
    """An app edit of ``spec``'s field to ``value``, into Salesforce and back to the app side."""
    # The app's producer: protobuf, then Kafka's record limit.
    message = to_proto(_app_edit(spec, value))
    if record_size(message, APP_KEY) > MAX_RECORD:
        raise Rejected("app producer", "RECORD_TOO_LARGE", f"{record_size(message, APP_KEY):,} bytes")

    with hop("cdc-ingest describe"):
        await trip.rest.fields(CRM_OBJECT)
    mapped = trip.translate(trip.map_change(encode_event(message), APP_KEY, Side.APP))
    await trip.resolve(trip.publish_mapped(mapped))
    if trip.crm_writes.sent:
        await trip.write()
    else:
        # The record holds nothing in this field yet: a blank needs no write.
        assert is_blank(value), "the resolver wrote nothing for a value Salesforce does not hold"

    published = await trip.ingest()
    arrived = Arrived(trip.org.read().get(spec.crm))
    streamed: dict[str, Value] = {}
    for data in published:
        # The echo must come back readable, or Duplex wrote something it cannot read.
        echo = trip.map_change(data, record_key(TENANT, CRM_OBJECT, trip.org.record_id), Side.CRM)
        if spec.crm not in echo.fields:
            continue
        streamed[spec.crm] = echo.fields[spec.crm]
        for f in trip.translate(echo).fields:
            if f.app_field == spec.app:
                arrived = Arrived(arrived.stored, f.app_value, carried=True)
    await trip.reread(streamed)
    return arrived


async def salesforce_to_app(trip: Trip, spec: Spec, token: str) -> Arrived:
    """A REST user sets ``spec``'s Salesforce field to the JSON ``token``; into the app."""
    with hop("cdc-ingest describe"):
        await trip.rest.fields(CRM_OBJECT)
    body = ('{"%s": %s}' % (spec.crm, token)).encode()  # noqa: UP031 (the token is raw JSON text)
    url = f"{INSTANCE_URL}/services/data/v{API_VERSION}/sobjects/{CRM_OBJECT}/{trip.org.record_id}"
    with hop("emulator REST write"):
        response = trip.org.handle(
            httpx.Request("PATCH", url, content=body, headers={"Content-Type": "application/json"})
        )
        trip.org.raise_crash()
    if response.status_code >= 400:
        errors = strict_json(response.content)
        raise Rejected("salesforce", str(errors[0]["errorCode"]), str(errors[0].get("message")))
    assert response.status_code == 204, response.text
    stored = trip.org.read().get(spec.crm)
    published = await trip.ingest()
    updates_before = len(trip.app_updates.sent)
    streamed: dict[str, Value] = {}
    for data in published:
        change = trip.map_change(data, record_key(TENANT, CRM_OBJECT, trip.org.record_id), Side.CRM)
        streamed.update({k: v for k, v in change.fields.items() if k == spec.crm})
        if spec.crm not in change.fields:
            continue
        await trip.resolve(trip.publish_mapped(trip.translate(change)))
    await trip.reread(streamed)
    if not streamed:
        # Salesforce kept the value it held (the seed's blank): nothing changed, nothing travels.
        assert is_blank(stored) or stored is False, f"{spec.crm} changed to {stored!r} without a change event"
        return Arrived(stored)
    updates = [m for m, _ in trip.app_updates.sent[updates_before:]]
    assert updates, "the resolver accepted a Salesforce edit and sent the app nothing"
    value: Value = None
    for update in updates:
        with hop("app edge (app update)"):
            decoded = from_proto(decode_event(record_changed_pb2.RecordChanged, encode_event(update)))
        value = decoded.fields.get(spec.app, value)
    return Arrived(stored, value, carried=True)


# --- the rules --------------------------------------------------------------------------------------


class Invalid(Exception):  # noqa: N818 (says the rule has no arriving form for the value)
    """The rule says this value must not arrive: some hop has to refuse it."""


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise Invalid(f"{number} is not finite")
    return number


def _to_scale(spec: Spec, number: float) -> Decimal:
    """What Salesforce holds for ``number``: its shortest repr rounded to the scale, half away from
    zero, refused when more integer digits than the field holds remain."""
    exact = Decimal(repr(_finite(number)))
    # Checked before rounding too: quantizing 1e300 to six places needs hundreds of digits.
    for candidate in (exact, exact.quantize(Decimal(1).scaleb(-spec.scale), ROUND_HALF_UP, Context(prec=400))):
        digits = 0 if candidate.is_zero() else max(candidate.adjusted() + 1, 0)
        if digits > spec.integer_digits:
            raise Invalid(f"{digits} integer digits, at most {spec.integer_digits}")
        exact = candidate
    return exact


def _text_limit(spec: Spec, text: str) -> str:
    if spec.max_length and len(text) > spec.max_length:
        raise Invalid(f"{len(text)} characters, at most {spec.max_length}")
    return text


def salesforce_text(value: Value) -> str | None:
    """A value's form in a Salesforce text field (``to_salesforce``, then the field's coercion)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        _finite(value)
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, int | str):
        return str(value) or None
    return str(to_salesforce(value)) or None


def app_to_crm_rule(spec: Spec, value: Value) -> Value:
    """The app form that an app value must come back as, after Salesforce held it."""
    # As the app contract carries it (a naive datetime is UTC, docs/app-contract.md).
    value = to_value(to_field_value(value))
    if spec.kind is None:
        return _text_limit(spec, salesforce_text(value) or "") or None
    try:
        typed = coerce(value, spec.kind, spec.app)
    except RejectedChangeError as error:
        raise Invalid(str(error)) from None
    if is_blank(typed):
        return None
    if spec.kind is FieldType.STRING:
        assert isinstance(typed, str)
        return _text_limit(spec, typed)
    if spec.kind is FieldType.INT:
        assert isinstance(typed, int)
        if not -(2**63) <= typed < 2**63:
            raise Invalid("beyond protobuf's int64")
        if len(str(abs(typed))) > spec.integer_digits:
            raise Invalid(f"{len(str(abs(typed)))} digits, at most {spec.integer_digits}")
        return typed
    if spec.kind is FieldType.DECIMAL:
        assert isinstance(typed, Decimal)
        return Decimal(repr(float(_to_scale(spec, float(typed)))))
    if spec.kind is FieldType.DOUBLE:
        assert isinstance(typed, float)
        return float(_to_scale(spec, typed))
    if spec.kind is FieldType.DATETIME:
        assert isinstance(typed, datetime)
        return typed.replace(microsecond=typed.microsecond // 1000 * 1000)
    if spec.kind is FieldType.PICKLIST and spec.value_map is not None and typed not in spec.value_map:
        raise Invalid(f"{typed!r} is not in the value map")
    if spec.kind is FieldType.MULTIPICKLIST:
        assert isinstance(typed, tuple)
        return tuple(part for part in ";".join(typed).split(";") if part) or None
    return typed


def crm_to_app_rule(spec: Spec, stored: Any) -> Value:
    """The app form that the value Salesforce holds (REST JSON) must reach the app as."""
    if stored is None:
        return None
    if spec.kind is None or spec.kind is FieldType.STRING:
        return _text_limit(spec, str(stored))
    if spec.kind is FieldType.INT:
        return int(stored)
    if spec.kind is FieldType.DECIMAL:
        return Decimal(repr(_finite(float(stored))))
    if spec.kind is FieldType.DOUBLE:
        return _finite(float(stored))
    if spec.kind is FieldType.DATE:
        return date.fromisoformat(stored)
    if spec.kind is FieldType.DATETIME:
        return datetime.strptime(stored, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)
    if spec.kind is FieldType.PICKLIST and spec.value_map is not None:
        inverse = {crm: app for app, crm in spec.value_map.items()}
        if stored not in inverse:
            raise Invalid(f"{stored!r} is not in the value map")
        return inverse[stored]
    if spec.kind is FieldType.MULTIPICKLIST:
        return tuple(part for part in str(stored).split(";") if part) or None
    return cast(Value, stored)


def check_held(spec: Spec, stored: Any) -> None:
    """What Salesforce holds fits its field's type, which its change events' Avro schema declares too."""
    if isinstance(stored, float):
        assert math.isfinite(stored), f"Salesforce holds {stored}, which no Salesforce field can"
    if spec.crm_type == "int" and isinstance(stored, int):
        assert -(2**31) <= stored < 2**31, f"Salesforce holds {stored} in an int field (32 bits, an Avro int in CDC)"


def check(spec: Spec, outcome: Arrived | Rejected, expected: Value | Invalid, must_arrive: bool) -> None:
    if isinstance(outcome, Rejected):
        event(f"refused at {outcome.hop}: {outcome.code}")
        note(f"rejected at {outcome.hop} with {outcome.code}: {outcome.reason[:300]}")
        assert outcome.code in EXPECTED_CODES[outcome.hop], (
            f"{outcome.hop} refused with {outcome.code}, which it does not document for a value: {outcome.reason:.300}"
        )
        assert not must_arrive, f"an ordinary value was refused at {outcome.hop}: {outcome.code}"
        if outcome.hop in RAW_SYNC_LOG_HOPS:
            assert not unstorable(outcome.reason), (
                f"the reason cannot be stored in the sync log: {outcome.reason!r:.200}"
            )
        return
    event("arrived" if outcome.carried else "arrived: Salesforce already held it")
    note(f"Salesforce holds {outcome.stored!r:.200}; carried: {outcome.carried}, as {outcome.app_value!r:.200}")
    check_held(spec, outcome.stored)
    assert not isinstance(expected, Invalid), f"arrived although the rule says it must not ({expected})"
    if outcome.carried:
        assert same_value(outcome.app_value, expected), (
            f"arrived as {outcome.app_value!r:.200}, expected {expected!r:.200}"
        )


def expect(rule: Callable[..., Value], *args: Any) -> Value | Invalid:
    try:
        return rule(*args)
    except Invalid as invalid:
        return invalid


# --- hostile values -----------------------------------------------------------------------------

# Control characters, separators, noncharacters, the BOM, emoji, and the multi-picklist separator.
SPECIAL_CHARACTERS = (
    "\x00\x01\x08\x1b\x7f\x85\xa0\u200b\u2028\u2029\ufeff\ufffd\ufffe\uffff\U0001f600\U0010ffff;,\"\\'\n\r\t "
)
# The app's protobuf cannot carry a lone surrogate (see the byte-level test below); JSON can.
texts = st.text(st.one_of(st.sampled_from(SPECIAL_CHARACTERS), st.characters(codec="utf-8")), max_size=30)
json_texts = st.text(st.one_of(st.sampled_from(SPECIAL_CHARACTERS), st.characters()), max_size=30)
# Few and fixed: generating megabytes is slow, and their size is the point, not their content.
HUGE_TEXTS = [
    "x" * 11,  # just over the mapping's maxLength of `note`
    "x" * 21,  # just over Salesforce's length of `title`
    "x" * 131_072,  # a long text area, full
    "x" * 131_073,
    "\U0001f600" * 131_072,  # full too, but 512 KiB: both sides of it in one ChangeMapped exceed 1 MiB
    "\x00" * 1000,
    "x" * (1 << 20) + "y",  # over a megabyte
]
NUMERIC_TEXTS = [
    "12",
    " 12 ",
    "12.50",
    "1e3",
    "1E+400",
    "-0",
    "0x10",
    "1_000",
    "\u0661\u0662",  # Arabic-Indic digits
    "NaN",
    "sNaN",
    "Infinity",
    "-inf",
    "1e-7",
    "9" * 30,
    "1e10000",
]
DATE_TEXTS = [
    "2026-02-30",
    "0000-01-01",
    "+275760-09-13",
    "2026-1-1",
    "20260101",
    "2026-W01-1",
    " 2026-01-01 ",
    "2026-02-28T00:00:00Z",
]
DATETIME_TEXTS = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00",  # naive
    "2026-01-01T24:00:00Z",
    "2026-02-30T00:00:00Z",
    "9999-12-31T23:59:59.999999-14:00",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01 00:00:00+00:00",
]
SPECIAL_DECIMALS = [
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("1E+400"),
    Decimal("-1E+400"),
    Decimal("1E-400"),
    Decimal("9.999999999999999999999999999E+9999"),
    Decimal("1E+5000"),
    Decimal("123456789012345678901234567890.123456789"),
    Decimal("0E-1000"),
    Decimal("-0"),
]
# Numbers at the edges of the fields' precision and scale: amount holds 16 integer digits and 2
# decimals, score 12 and 6, count 9 digits. Halves round away from zero; a carry can add a digit.
PRECISION_EDGES: list[Value] = [
    Decimal("2.345"),
    Decimal("-2.345"),
    Decimal("0.005"),
    Decimal("999999999999999.99"),
    Decimal("9999999999999999.995"),
    Decimal("1E+16"),
    Decimal("-12345678901234567"),
    2.5e-7,
    -0.0000005,
    999999999999.9999,
    999999999999.99999999,
    1e12,
    -1e12,
    999_999_999,
    1_000_000_000,
    -1_000_000_000,
    "1e12",
    "99999999999999999.5",
]
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12, minutes=30)), timezone(timedelta(minutes=1))]
)

any_value: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    texts,
    st.sampled_from(HUGE_TEXTS),
    st.sampled_from(NUMERIC_TEXTS + DATE_TEXTS + DATETIME_TEXTS + ["true", " TRUE ", "yes", "", "   "]),
    # The app's protobuf carries int64; larger numbers can only come as decimals or text.
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63), 10**9]),
    st.floats(),
    st.decimals(),
    st.sampled_from(SPECIAL_DECIMALS),
    st.sampled_from(PRECISION_EDGES),
    st.booleans(),
    st.dates(),
    # A protobuf Timestamp holds years 1 to 9999 in UTC; naive datetimes are taken as UTC.
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.one_of(st.none(), OFFSETS)
    ),
    st.lists(texts, max_size=4).map(tuple),
    st.sampled_from([("a;b",), (" ",), (), ("",), ("x" * 300,) * 20]),
)

words = st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8)
ordinary_dates = st.dates(min_value=date(1700, 1, 1), max_value=date(4000, 12, 31))
ordinary_datetimes = st.datetimes(min_value=datetime(1700, 1, 2), max_value=datetime(4000, 12, 30), timezones=OFFSETS)
ordinary_tags = st.lists(words, min_size=1, max_size=4, unique=True).map(tuple)
# Right type, within Salesforce's limits: these must arrive.
ORDINARY: Mapping[str, st.SearchStrategy[Value]] = {
    "title": st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=20),
    "note": st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=10),
    "memo": st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=200),
    "count": st.integers(min_value=-999_999_999, max_value=999_999_999),
    "amount": st.decimals(min_value=-(10**12), max_value=10**12, places=2),
    # Twelve integer digits (precision 18, scale 6).
    "score": st.floats(min_value=-1e11, max_value=1e11, allow_nan=False),
    "active": st.booleans(),
    "since": ordinary_dates,
    "seen_at": ordinary_datetimes,
    "level": st.sampled_from(["Low", "High", "Medium Rare"]),
    "tier": st.sampled_from(sorted(TIER_MAP)),
    "tags": ordinary_tags,
}


def app_edit(app: str) -> st.SearchStrategy[tuple[str, tuple[Value, bool]]]:
    # One draw in three is ordinary: one_of would hardly ever pick it.
    values = st.sampled_from([True, False, False]).flatmap(
        lambda ordinary: ORDINARY[app].map(lambda v: (v, True)) if ordinary else any_value.map(lambda v: (v, False))
    )
    return st.tuples(st.just(app), values)


app_edits = st.sampled_from(sorted(SPECS)).flatmap(app_edit)

# What a REST user's JSON can hold as a field's value, nested structures included.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**31, 2**63, 2**70, -(2**70), 10**400]),
    st.sampled_from([1e12, -1e16, 1e17, 999999999999.9999995, 0.0000005, 2.345, 1_000_000_000, 999_999_999]),
    st.floats(),
    json_texts,
    st.sampled_from(["\ud800", "a\udfffb", "\x00", *DATE_TEXTS, *DATETIME_TEXTS, *NUMERIC_TEXTS, "Gold", "A;B;;C"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_texts, inner, max_size=3),
    max_leaves=6,
)
# Deeper than any JSON parser's recursion (Python's stops near 1,000).
DEEP_ARRAY = "[" * 5000 + "]" * 5000
RAW_TOKENS = [
    "NaN",
    "-Infinity",
    "1e400",
    "-1e400",
    "1" + "0" * 400,
    "1.0e-400",
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"a\\u0000b"',
    DEEP_ARRAY,
    '{"a":' * 5000 + "1" + "}" * 5000,
    json.dumps("x" * (1 << 20) + "y"),
    json.dumps("\U0001f600" * 131_072),
]
ORDINARY_JSON: Mapping[str, st.SearchStrategy[Any]] = {
    "Title__c": ORDINARY["title"],
    "Note__c": ORDINARY["note"],
    "Memo__c": ORDINARY["memo"],
    "Count__c": ORDINARY["count"],
    "Amount__c": st.decimals(min_value=-(10**12), max_value=10**12, places=2).map(float),
    "Score__c": ORDINARY["score"],
    "Active__c": st.booleans(),
    "Since__c": ordinary_dates.map(date.isoformat),
    "Seen_At__c": ordinary_datetimes.map(datetime.isoformat),
    "Level__c": ORDINARY["level"],
    "Tier__c": st.sampled_from(sorted(TIER_MAP.values())),
    "Tags__c": ordinary_tags.map(";".join),
}


def crm_edit(crm: str) -> st.SearchStrategy[tuple[str, tuple[str, bool]]]:
    branches: Mapping[str, st.SearchStrategy[tuple[str, bool]]] = {
        "ordinary": ORDINARY_JSON[crm].map(lambda v: (json.dumps(v), True)),
        "json": json_values.map(lambda v: (json.dumps(v), False)),
        "raw": st.sampled_from(RAW_TOKENS).map(lambda t: (t, False)),
    }
    tokens = st.sampled_from(["ordinary", "json", "json", "raw"]).flatmap(branches.__getitem__)
    return st.tuples(st.just(crm), tokens)


crm_edits = st.sampled_from(sorted(BY_CRM)).flatmap(crm_edit)

# Each example builds an org, a resolver and an event loop: a few milliseconds.
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- the properties ---------------------------------------------------------------------------------


@PROPERTY
@given(app_edits)
# Values that once broke a hop, kept so that every run tries them.
@example(("count", (float(2**63), False)))
@example(("count", (2**31, False)))
@example(("amount", (Decimal("1E+400"), False)))
# A number beyond its field's integer digits, and halves that round away from zero.
@example(("amount", (Decimal("1E+16"), False)))
@example(("amount", (Decimal("9999999999999999.995"), False)))
@example(("amount", (Decimal("-2.345"), False)))
@example(("score", (1e12, False)))
@example(("score", (-0.0000005, False)))
@example(("count", (1_000_000_000, False)))
@example(("score", ("1E400", False)))
@example(("memo", (math.nan, False)))
@example(("seen_at", (datetime(2515, 1, 1, 0, 0, 0, 51_000, tzinfo=UTC), True)))
def test_an_app_value_reaches_salesforce_and_comes_back_by_its_rule_or_one_hop_refuses_it(
    edit: tuple[str, tuple[Value, bool]],
) -> None:
    """An app edit of one field: into Salesforce by the field's rule and back, or refused once."""
    app_field, (value, must_arrive) = edit
    spec = SPECS[app_field]
    expected = expect(app_to_crm_rule, spec, value)
    note(f"{app_field} ({spec.kind}) <- {value!r:.200}; the rule says {expected!r:.200}")
    trip = Trip()
    try:
        outcome: Arrived | Rejected = run(app_to_salesforce(trip, spec, value))
    except Rejected as rejected:
        outcome = rejected
    finally:
        trip.org.close()
    check(spec, outcome, expected, must_arrive)
    if isinstance(outcome, Arrived):
        # Salesforce holds the value in its own form, whether or not a change event carried it back.
        held = expect(crm_to_app_rule, spec, outcome.stored)
        assert same_value(cast(Value, held), cast(Value, expected)), (
            f"Salesforce holds {outcome.stored!r:.200}, expected the form of {expected!r:.200}"
        )


@PROPERTY
@given(crm_edits)
@example(("Amount__c", ("NaN", False)))
@example(("Score__c", ("1e400", False)))
@example(("Amount__c", (str(10**400), False)))
@example(("Count__c", ("2147483648", False)))
@example(("Count__c", (str(10**30), False)))
@example(("Count__c", ("1000000000", False)))
@example(("Amount__c", ("1e17", False)))
@example(("Amount__c", ("-2.345", False)))
@example(("Score__c", ("999999999999.9999995", False)))
@example(("Title__c", ('"\\ud800"', False)))
@example(("Active__c", ('"\\ud800"', False)))
@example(("Active__c", (DEEP_ARRAY, False)))
@example(("Since__c", ('"9999-12-31T23:59:59.999999-14:00"', False)))
@example(("Seen_At__c", ('"0001-01-01T00:00:00"', False)))
@example(("Seen_At__c", ('"2515-01-01T00:00:00.051000+00:00"', True)))
def test_a_salesforce_value_reaches_the_app_by_its_rule_or_one_hop_refuses_it(
    edit: tuple[str, tuple[str, bool]],
) -> None:
    """A REST user's edit of one Salesforce field: into the app by the field's rule, or refused once."""
    crm_field, (token, must_arrive) = edit
    spec = BY_CRM[crm_field]
    note(f"{crm_field} ({spec.kind}) <- {token[:200]}")
    trip = Trip()
    try:
        outcome: Arrived | Rejected = run(salesforce_to_app(trip, spec, token))
    except Rejected as rejected:
        outcome = rejected
    finally:
        trip.org.close()
    if isinstance(outcome, Rejected):
        check(spec, outcome, None, must_arrive)
        return
    if spec.crm_type in {"string", "textarea", "picklist", "multipicklist"} and token.startswith('"'):
        # Salesforce stores text as sent (empty text as null).
        sent = json.loads(token)
        assert outcome.stored == (sent or None), f"Salesforce holds {outcome.stored!r:.100} for {sent!r:.100}"
    check(spec, outcome, expect(crm_to_app_rule, spec, outcome.stored), must_arrive)


BEYOND_PRECISION: list[tuple[str, Value]] = [
    ("amount", Decimal("1E+16")),
    # 16 integer digits as typed, 17 once rounded to cents: Salesforce rounds before it checks.
    ("amount", Decimal("9999999999999999.995")),
    ("amount", Decimal("-123456789012345678")),
    ("score", 1e12),
    ("score", -999999999999.9999999),
    ("count", 1_000_000_000),
    ("count", -1_000_000_000),
]


@pytest.mark.parametrize(("app_field", "value"), BEYOND_PRECISION)
def test_a_number_beyond_its_fields_precision_is_refused_for_its_record_only(app_field: str, value: Value) -> None:
    """NUMBER_OUTSIDE_VALID_RANGE at mapping, which reads the field's precision from the describe
    summary cdc-ingest stores, with the reason in the sync log and no write sent."""
    spec = SPECS[app_field]
    assert isinstance(expect(app_to_crm_rule, spec, value), Invalid)
    trip = Trip()
    try:
        with pytest.raises(Rejected) as refused:
            run(app_to_salesforce(trip, spec, value))
        assert trip.org.read().get(spec.crm) is None, "Salesforce holds a value it should have refused"
    finally:
        trip.org.close()
    assert (refused.value.code, refused.value.hop) == ("NUMBER_OUTSIDE_VALID_RANGE", "mapping")
    assert "integer digits, at most" in refused.value.reason
    assert not trip.crm_writes.sent, "mapping refused the change, yet a write went out"


@pytest.mark.parametrize(
    ("app_field", "value", "held", "arrives"),
    [
        ("amount", Decimal("2.345"), 2.35, Decimal("2.35")),
        ("amount", Decimal("-2.345"), -2.35, Decimal("-2.35")),
        ("amount", Decimal("9999999999999999.99"), 1e16, None),
        ("score", 0.0000025, 0.000003, 0.000003),
        ("score", -2.5e-7, -0.0, -0.0),
        ("score", 999999999999.5, 999999999999.5, 999999999999.5),
        ("count", 999_999_999, 999_999_999, 999_999_999),
    ],
)
def test_a_number_with_more_decimals_than_the_scale_is_rounded_half_away_from_zero(
    app_field: str, value: Value, held: float, arrives: Value
) -> None:
    """Salesforce rounds to the field's scale, and its change event carries the rounded value back."""
    spec = SPECS[app_field]
    trip = Trip()
    try:
        if arrives is None:
            # The double nearest 9999999999999999.99 is 1e16: 17 integer digits where 16 fit.
            with pytest.raises(Rejected) as refused:
                run(app_to_salesforce(trip, spec, value))
            assert (refused.value.hop, refused.value.code) == ("salesforce", "NUMBER_OUTSIDE_VALID_RANGE")
            return
        outcome = run(app_to_salesforce(trip, spec, value))
    finally:
        trip.org.close()
    assert outcome.stored == held
    assert outcome.carried
    assert same_value(outcome.app_value, arrives), outcome.app_value
    assert same_value(cast(Value, expect(app_to_crm_rule, spec, value)), arrives)


async def _echo_confirmed(trip: Trip, spec: Spec, value: Value) -> FieldRecord:
    """The field's resolver state after an app edit to ``value`` was written and its echo decided."""
    await trip.rest.fields(CRM_OBJECT)
    mapped = trip.translate(trip.map_change(encode_event(to_proto(_app_edit(spec, value))), APP_KEY, Side.APP))
    await trip.resolve(trip.publish_mapped(mapped))
    await trip.write()
    for data in await trip.ingest():
        echo = trip.map_change(data, record_key(TENANT, CRM_OBJECT, trip.org.record_id), Side.CRM)
        await trip.resolve(trip.publish_mapped(trip.translate(echo)))
    return trip.store.tables.fields[(TENANT, LINK_ID)][spec.app]


def test_a_write_salesforce_rounded_is_confirmed_by_its_echo() -> None:
    """Mapping sends the value rounded as Salesforce stores it, so its change event confirms the
    write: sent 2.345 and stored 2.35 would leave the write pending for ever, and the next person's
    edit of the field would count as a conflict with it (and lose under app-wins, silently)."""
    spec = SPECS["amount"]
    trip = Trip()
    try:
        record = run(_echo_confirmed(trip, spec, Decimal("2.345")))
        assert trip.org.read().get(spec.crm) == 2.35
    finally:
        trip.org.close()
    assert record.state.pending_crm == ()
    assert not [m for m, _ in trip.app_updates.sent], "Duplex's own write came back as an edit"


def test_an_int_with_a_huge_exponent_is_refused_before_it_is_expanded() -> None:
    """Ten characters, ``"1e40000000"``, would take mapping hours to expand into an int that no
    side can hold anyway: the int64 bound must be checked on the exponent first."""
    started = time.process_time()
    with pytest.raises(RejectedChangeError) as refused:
        coerce("1e200000", FieldType.INT, "count")
    assert refused.value.code == "INVALID_VALUE"
    assert time.process_time() - started < 0.5


# --- hostile bytes at the edges ----------------------------------------------------------------------


def test_an_app_change_whose_text_is_not_utf8_is_refused_at_mapping_intake() -> None:
    """A lone surrogate cannot be in a protobuf string; an app that writes one anyway (as
    CESU-8 bytes) is refused with the reason, not taken apart later."""
    change = Change(
        event_id="app-event-1",
        tenant_id=TENANT,
        side=Side.APP,
        object_type=APP_OBJECT,
        record_id=APP_RECORD_ID,
        kind=ChangeKind.UPDATE,
        fields={"title": "a\ufffdb"},
        at=AT,
        changed=frozenset({"title"}),
    )
    data = encode_event(to_proto(change)).replace("\ufffd".encode(), b"\xed\xa0\x80")
    trip = Trip()
    try:
        with pytest.raises(Rejected) as refused:
            trip.map_change(data, record_key(TENANT, APP_OBJECT, APP_RECORD_ID), Side.APP)
    finally:
        trip.org.close()
    assert refused.value.code == "INVALID_CHANGE"


def test_a_change_event_whose_text_is_not_utf8_is_undecodable_not_a_crash() -> None:
    """Salesforce never sends such bytes; if it did, cdc-ingest dead-letters the one event
    (UNDECODABLE_EVENT) instead of failing the stream."""
    trip = Trip()
    try:
        url = f"{INSTANCE_URL}/services/data/v{API_VERSION}/sobjects/{CRM_OBJECT}/{trip.org.record_id}"
        response = trip.org.handle(httpx.Request("PATCH", url, json={"Title__c": "a\ufffdb"}))
        assert response.status_code == 204
        (change_event,) = [e for t in trip.org.take_committed() for e in cdc.change_events(t, OBJECTS)]
    finally:
        trip.org.close()
    payload = change_event.payload.replace("\ufffd".encode(), b"\xed\xa0\x80")
    schema = parse_schema(change_event.schema.schema_id, change_event.schema.schema_json)
    with pytest.raises(UndecodableError) as undecodable:
        schema.decode(payload)
    assert undecodable.value.stage == "payload"
