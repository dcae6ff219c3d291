"""Both outer worlds of mapping and conflict-resolver, simulated, and an independent model of the policies.

- :class:`Model` says, without any Duplex code, what each side must hold after each round of
  edits, and how many writes each side may receive per field (see :meth:`Model.apply`).
- :class:`Plan` makes rounds of edits from a seeded random generator, using the model's state.
- :class:`World` is Salesforce with the writer and the app at once: it applies every command of
  crm-writes and app-updates (once per id, as the writer and the app deduplicate), publishes each
  applied write's change back as that side would (Salesforce CDC tagged with Duplex's client; the
  app copying the update's ``origin_client``, as docs/app-contract.md asks), and the writer's
  WriteSettled outcomes. It counts every field written to each side, notes every write that
  changed nothing, and every write of a value the side had already echoed back.
- :class:`Lag` reads a consumer group's committed offsets against the topics' end offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from duplex.change.v1 import record_changed_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2
from google.protobuf.message import Message

from services.common.change import ChangeKind, Side
from services.common.codec import encode_event, event_headers, link_key, record_key
from services.common.contract import to_value
from services.common.tenant_config import ConflictPolicy
from services.common.topics import Topic, TopicNames
from services.common.values import Value, is_blank
from services.mapping.links import external_id_for, link_id_for
from tests.e2e.sync.harness import CLIENT, TENANT, record_changed

RecordChanged = record_changed_pb2.RecordChanged
WriteRecords = write_records_pb2.WriteRecords
WriteSettled = write_settled_pb2.WriteSettled

PAIR = "partners"
APP_OBJECT = "partners"
CRM_OBJECT = "Account"
EXTERNAL_ID_FIELD = "Duplex_Id__c"
PARTITIONS = 12


@dataclass(frozen=True)
class FieldSpec:
    app: str
    crm: str
    policy: ConflictPolicy

    @property
    def blanks(self) -> bool:
        """Whether the test blanks this field: only the *_unless_blank policies are about blanks."""
        return self.policy in {ConflictPolicy.APP_UNLESS_BLANK, ConflictPolicy.CRM_UNLESS_BLANK}


# Every policy once. ``name`` takes the pair's default (newest_wins).
FIELDS = (
    FieldSpec("name", "Name", ConflictPolicy.NEWEST_WINS),
    FieldSpec("website", "Website", ConflictPolicy.APP_WINS),
    FieldSpec("rating", "Rating__c", ConflictPolicy.CRM_WINS),
    FieldSpec("phone", "Phone", ConflictPolicy.APP_UNLESS_BLANK),
    FieldSpec("fax", "Fax", ConflictPolicy.CRM_UNLESS_BLANK),
)
BY_APP = {f.app: f for f in FIELDS}
BY_CRM = {f.crm: f for f in FIELDS}

CONFIG: dict[str, Any] = {
    "apiVersion": "duplex.dev/v1",
    "kind": "Tenant",
    "metadata": {"name": TENANT},
    "spec": {
        "salesforce": {
            "instanceUrl": "https://acme.my.salesforce.com",
            "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
            "dailyApiCap": 100000,
            "callOptionsClient": CLIENT,
        },
        "objects": [
            {
                "name": PAIR,
                "app": {"object": APP_OBJECT},
                "salesforce": {"object": CRM_OBJECT, "externalIdField": EXTERNAL_ID_FIELD},
                "conflictPolicy": "newest_wins",
                "deletePolicy": "propagate",
                "fields": [
                    {"app": f.app, "salesforce": f.crm}
                    | ({} if f.policy is ConflictPolicy.NEWEST_WINS else {"conflictPolicy": str(f.policy)})
                    for f in FIELDS
                ],
            }
        ],
    },
}


# ---------------------------------------------------------------------------------------------
# The model


def winner(policy: ConflictPolicy, app: tuple[Value, int], crm: tuple[Value, int]) -> Side:
    """Which side's edit a policy prescribes when both sides edited a field concurrently.

    Each edit is (value, origin commit second); at most one of the two is blank (the plan sees to it).
    """
    (app_value, app_at), (crm_value, crm_at) = app, crm
    if policy is ConflictPolicy.APP_WINS:
        return Side.APP
    if policy is ConflictPolicy.CRM_WINS:
        return Side.CRM
    if policy is ConflictPolicy.NEWEST_WINS:
        return Side.APP if app_at > crm_at else Side.CRM  # the plan never gives two edits one time
    if policy is ConflictPolicy.APP_UNLESS_BLANK:
        return Side.CRM if is_blank(app_value) else Side.APP
    return Side.APP if is_blank(crm_value) else Side.CRM


@dataclass
class FieldModel:
    values: dict[Side, Value]
    # The most writes Duplex may make to each side for this field (see Model.apply).
    allowed: Counter[Side] = field(default_factory=Counter)


class Model:
    """What each side must hold, per record and field, after each round has settled.

    A round is a set of edits made concurrently: every side makes its edits of the round before
    any of Duplex's writes of that round reach it, and the next round starts only once everything
    has settled (no write in flight). Each side edits a field at most once per round. Then:

    - only one side S edited the field, to v: both sides hold v; except a blank v (nulls are not
      allowed by the mapping), which stays on S while the other side keeps its value;
    - both sides edited it: both hold the edit the policy picks (:func:`winner`).

    Writes allowed per field and side S, summed over rounds, with O the other side:
    ``[O edited the field] + [both edited it and S's edit won]``. Why: a genuine edit makes Duplex
    write at most once to each side; it writes to the editing side S itself only while a write to
    S is still in flight (to re-assert S's winning edit behind it), and at the start of a round
    nothing is in flight, so that happens only when O's concurrent edit of the round was resolved
    first and then lost to S's. When S's edit loses, the truth to restore on S is O's edit, which is
    already on its way to S, so no second write goes. Echoes (Duplex's writes coming back) and
    repeats of values a side already holds are not edits and allow no write.
    """

    def __init__(self) -> None:
        self.records: dict[int, dict[str, FieldModel]] = {}

    def apply(self, edits: Iterable[PlannedChange]) -> None:
        by_field: dict[tuple[int, str], dict[Side, tuple[Value, int]]] = {}
        for change in edits:
            if change.repeat:
                continue
            if change.kind is ChangeKind.CREATE:
                assert change.record not in self.records
                self.records[change.record] = {f.app: FieldModel({Side.APP: None, Side.CRM: None}) for f in FIELDS}
            for name, value in change.app_fields().items():
                slot = by_field.setdefault((change.record, name), {})
                assert change.side not in slot, "one edit per side, field and round"
                slot[change.side] = (value, change.at)
        for (record, name), slot in by_field.items():
            model = self.records[record][name]
            if len(slot) == 1:
                ((side, (value, _)),) = slot.items()
                if is_blank(value):
                    model.values[side] = value
                else:
                    model.values = {Side.APP: value, Side.CRM: value}
                    model.allowed[side.other] += 1
            else:
                won = winner(BY_APP[name].policy, slot[Side.APP], slot[Side.CRM])
                value = slot[won][0]
                assert not is_blank(value)
                model.values = {Side.APP: value, Side.CRM: value}
                model.allowed[Side.APP] += 1 + (won is Side.APP)
                model.allowed[Side.CRM] += 1 + (won is Side.CRM)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class PlannedChange:
    """One committed change of one record on one side, as that side publishes it."""

    side: Side
    record: int
    kind: ChangeKind
    # Field name on the change's side -> value.
    fields: dict[str, Value]
    event_id: str
    at: int = 0  # seconds after T0, set when the round is ordered
    # An untagged change repeating values the side already holds (not an edit: causes no write).
    repeat: bool = False

    def app_fields(self) -> dict[str, Value]:
        if self.side is Side.APP:
            return dict(self.fields)
        return {BY_CRM[name].app: value for name, value in self.fields.items()}


class Clock:
    """Origin commit times, in seconds after T0: every change and echo gets its own."""

    def __init__(self) -> None:
        self.now = 0

    def tick(self) -> int:
        self.now += 1
        return self.now


def side_name(side: Side, spec: FieldSpec) -> str:
    return spec.app if side is Side.APP else spec.crm


def new_round(
    rng: random.Random,
    model: Model,
    clock: Clock,
    number: int,
    creates: Iterable[tuple[int, Side]],
    *,
    edit_chance: float = 0.75,
    repeat_chance: float = 0.12,
    duplicate_chance: float = 0.1,
) -> tuple[list[PlannedChange], list[PlannedChange]]:
    """One round: the changes in publishing order (times rising), and that order with redeliveries.

    Records created in the round are not edited in it (the other side has no copy yet).
    """
    changes: list[PlannedChange] = []
    for record, side in creates:
        values: dict[str, Value] = {side_name(side, f): f"{f.app} r{record} k{number} {side}" for f in FIELDS}
        changes.append(PlannedChange(side, record, ChangeKind.CREATE, values, f"{side}-create-{record}"))
    edited: dict[int, dict[Side, dict[str, Value]]] = {}
    for record in sorted(model.records):
        for side in (Side.APP, Side.CRM):
            if rng.random() >= edit_chance:
                continue
            names = rng.sample([f.app for f in FIELDS], rng.randint(1, 3))
            values = {}
            for name in names:
                spec = BY_APP[name]
                blank = spec.blanks and rng.random() < 0.3
                values[name] = None if blank else f"{name} r{record} k{number} {side}"
            edited.setdefault(record, {})[side] = values
    for record, sides in edited.items():
        app, crm = sides.get(Side.APP, {}), sides.get(Side.CRM, {})
        for name in app.keys() & crm.keys():
            if app[name] is None and crm[name] is None:
                crm[name] = f"{name} r{record} k{number} {Side.CRM}"
        for side, values in sides.items():
            spec_values = {side_name(side, BY_APP[n]): v for n, v in values.items()}
            changes.append(
                PlannedChange(side, record, ChangeKind.UPDATE, spec_values, f"{side}-edit-{record}-k{number}")
            )
    # Untagged repeats of a synced value, of fields nobody edits this round: echoes by value.
    for record in sorted(model.records):
        if rng.random() >= repeat_chance:
            continue
        side = rng.choice((Side.APP, Side.CRM))
        touched = {n for values in edited.get(record, {}).values() for n in values}
        synced = [
            f
            for f in FIELDS
            if f.app not in touched
            and not is_blank(model.records[record][f.app].values[side])
            and model.records[record][f.app].values[Side.APP] == model.records[record][f.app].values[Side.CRM]
        ]
        if synced:
            spec = rng.choice(synced)
            value = model.records[record][spec.app].values[side]
            changes.append(
                PlannedChange(
                    side,
                    record,
                    ChangeKind.UPDATE,
                    {side_name(side, spec): value},
                    f"{side}-repeat-{record}-k{number}",
                    repeat=True,
                )
            )
    rng.shuffle(changes)
    for change in changes:
        change.at = clock.tick()
    # Redeliveries (a publisher retrying after a crash): the same change again, later on.
    delivered = list(changes)
    for change in changes:
        if rng.random() < duplicate_chance:
            position = delivered.index(change)
            delivered.insert(rng.randint(position + 1, len(delivered)), change)
    return changes, delivered


# ---------------------------------------------------------------------------------------------
# The simulated sides


@dataclass
class SimSide:
    """One side's records, and what was written to it and echoed from it."""

    side: Side
    records: dict[str, dict[str, Value]] = field(default_factory=dict)
    by_external: dict[str, str] = field(default_factory=dict)
    # (record id, field) -> values this side published as echoes of Duplex's writes.
    echoed: dict[tuple[str, str], set[Value]] = field(default_factory=dict)
    # (record id, field) -> how many of Duplex's commands wrote that field.
    writes: Counter[tuple[str, str]] = field(default_factory=Counter)
    noops: list[str] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)
    creates: Counter[str] = field(default_factory=Counter)  # external id -> records created for it

    def write(self, record_id: str, values: dict[str, Value], what: str) -> dict[str, Value]:
        """Apply one of Duplex's writes; returns the fields whose value it changed."""
        record = self.records.setdefault(record_id, {})
        changed = {}
        for name, value in values.items():
            self.writes[(record_id, name)] += 1
            if value in self.echoed.get((record_id, name), set()):
                self.rewrites.append(f"{what}: {self.side} {record_id}.{name} = {value!r} came back as its echo")
            if name not in record or record[name] != value:
                changed[name] = value
            record[name] = value
        if not changed:
            self.noops.append(f"{what}: {self.side} {record_id} {values} changed nothing")
        for name, value in changed.items():
            self.echoed.setdefault((record_id, name), set()).add(value)
        return changed


class World:
    """Salesforce (with the writer) and the app, around the two services."""

    def __init__(self, bootstrap: str, names: TopicNames, clock: Clock) -> None:
        self.names = names
        self.clock = clock
        self.crm = SimSide(Side.CRM)
        self.app = SimSide(Side.APP)
        self.held = True
        self.busy = False
        self.applied: set[str] = set()
        self.redelivered: Counter[str] = Counter()  # command ids seen more than once
        self.commands: list[tuple[str, WriteRecords | RecordChanged]] = []  # unique commands, in application order
        self.echo_events: list[RecordChanged] = []
        self.positions: dict[TopicPartition, int] = {}
        # Plan record number -> its id on each side (the creating side's first).
        self.ids: dict[int, dict[Side, str]] = {}
        self._ids = 0
        self._inputs = [names(Topic.CRM_WRITES), names(Topic.APP_UPDATES)]
        self._partitions = [TopicPartition(t, p) for t in self._inputs for p in range(PARTITIONS)]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> World:
        await self._producer.start()
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._producer.stop()

    # -- publishing ---------------------------------------------------------------------------

    async def send(self, events: Sequence[tuple[str, Message, bytes]]) -> None:
        """Publish (topic, event, key) in this order (per key order is kept), acks=all."""
        futures = [
            await self._producer.send(
                topic, encode_event(event), key=key, headers=[(k, v.encode()) for k, v in event_headers(event).items()]
            )
            for topic, event, key in events
        ]
        await asyncio.gather(*futures)

    def user_change(self, change: PlannedChange) -> tuple[str, RecordChanged, bytes]:
        """A user's change on its side: applied to that side's records, and its event."""
        if change.kind is ChangeKind.CREATE:
            own = f"a{change.record:03d}" if change.side is Side.APP else f"001U{change.record:014d}"
            self.ids[change.record] = {change.side: own}
        record_id = self.ids[change.record][change.side]
        records = self.app.records if change.side is Side.APP else self.crm.records
        records.setdefault(record_id, {}).update(change.fields)
        obj = APP_OBJECT if change.side is Side.APP else CRM_OBJECT
        topic = self.names(Topic.APP_CHANGES if change.side is Side.APP else Topic.CRM_CHANGES)
        event = record_changed(
            change.side, obj, record_id, change.fields, event_id=change.event_id, kind=change.kind, at=change.at
        )
        return topic, event, record_key(TENANT, obj, record_id)

    def learn_ids(self) -> None:
        """Each record's id on the side where Duplex created it, found by its link.

        A link's id derives from the record that founded it (services.mapping.links); Duplex's
        Salesforce record carries ``dx-<link id>`` in the external-id field, its app record was
        created for an update whose external_id is the link id. The test checks separately that
        every link Duplex wrote for is one of these (no stray or duplicate links).
        """
        for ids in self.ids.values():
            if len(ids) == 2:
                continue
            ((side, own),) = ids.items()
            link = link_id_for(TENANT, PAIR, side, own)
            found = (
                self.crm.by_external.get(external_id_for(link)) if side is Side.APP else self.app.by_external.get(link)
            )
            if found is not None:
                ids[side.other] = found

    def link_of(self, record: int) -> str:
        ((side, own), *_) = self.ids[record].items()
        return link_id_for(TENANT, PAIR, side, own)

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- applying Duplex's commands -----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self.held:
                await asyncio.sleep(0.05)
                continue
            batch = await self._consumer.getmany(timeout_ms=100)
            if not batch:
                continue
            if self.held:
                # A round started while getmany waited: its writes must not land before its last edit
                # is published, or the app's change stream would show our write before an edit the
                # record already holds. Take them again once released.
                for tp, records in batch.items():
                    self._consumer.seek(tp, records[0].offset)
                continue
            self.busy = True
            try:
                out: list[tuple[str, Message, bytes]] = []
                for tp, records in sorted(batch.items(), key=lambda item: (item[0].topic, item[0].partition)):
                    for r in records:
                        if tp.topic == self._inputs[0]:
                            command = WriteRecords()
                            command.ParseFromString(r.value)
                            out += self._write_crm(command)
                        else:
                            update = RecordChanged()
                            update.ParseFromString(r.value)
                            out += self._update_app(update)
                    self.positions[tp] = records[-1].offset + 1
                await self.send(out)
            finally:
                self.busy = False

    def _first(self, command_id: str, event: WriteRecords | RecordChanged) -> bool:
        if command_id in self.applied:
            self.redelivered[command_id] += 1
            return False
        self.applied.add(command_id)
        self.commands.append((command_id, event))
        return True

    def _write_crm(self, command: WriteRecords) -> list[tuple[str, Message, bytes]]:
        if not self._first(command.command_id, command):
            return []
        assert command.operation in (write_records_pb2.OPERATION_UPSERT, write_records_pb2.OPERATION_UPDATE), command
        out: list[tuple[str, Message, bytes]] = []
        for n, rec in enumerate(command.records):
            values = {name: to_value(v) for name, v in rec.fields.items()}
            created = False
            if command.operation == write_records_pb2.OPERATION_UPSERT:
                assert command.external_id_field == EXTERNAL_ID_FIELD
                record_id = self.crm.by_external.get(rec.external_id_value)
                if record_id is None:
                    created = True
                    record_id = f"001D{self._next_id():014d}"
                    self.crm.by_external[rec.external_id_value] = record_id
                    self.crm.creates[rec.external_id_value] += 1
                    self.crm.records[record_id] = {EXTERNAL_ID_FIELD: rec.external_id_value}
            else:
                record_id = rec.record_id
                assert record_id in self.crm.records, f"update of unknown Salesforce record {record_id}"
            changed = self.crm.write(record_id, values, f"crm-write {command.command_id}")
            # Salesforce CDC: a CREATE carries every field set, an UPDATE the changed ones;
            # changeOrigin names Duplex's client, which cdc-ingest passes on as origin_client.
            echoed = (self.crm.records[record_id] | {}) if created else changed
            if echoed:
                echo = record_changed(
                    Side.CRM,
                    CRM_OBJECT,
                    record_id,
                    echoed,
                    event_id=f"crm-echo-{command.command_id}-{n}",
                    kind=ChangeKind.CREATE if created else ChangeKind.UPDATE,
                    at=self.clock.tick(),
                    client=CLIENT,
                )
                self.echo_events.append(echo)
                out.append((self.names(Topic.CRM_CHANGES), echo, record_key(TENANT, CRM_OBJECT, record_id)))
            settled = WriteSettled(
                command_id=command.command_id,
                tenant_id=command.tenant_id,
                link_id=rec.link_id,
                crm_object=command.crm_object,
                operation=command.operation,
                status=write_settled_pb2.WRITE_STATUS_SUCCEEDED,
                record_id=record_id,
                external_id_value=rec.external_id_value,
                created=created,
                version=rec.version,
                attempts=1,
            )
            out.append((self.names(Topic.WRITE_OUTCOMES), settled, link_key(command.tenant_id, rec.link_id)))
        return out

    def _update_app(self, update: RecordChanged) -> list[tuple[str, Message, bytes]]:
        if not self._first(update.event_id, update):
            return []
        values = {name: to_value(v) for name, v in update.fields.items()}
        if update.kind == record_changed_pb2.CHANGE_KIND_CREATE:
            assert not update.record_id, update
            assert update.external_id, update
            self.app.creates[update.external_id] += 1
            record_id = f"b{self._next_id():05d}"
            self.app.by_external[update.external_id] = record_id
            self.app.records[record_id] = {}
            kind = ChangeKind.CREATE
        else:
            assert update.kind == record_changed_pb2.CHANGE_KIND_UPDATE, update
            record_id = update.record_id
            assert record_id in self.app.records, f"update of unknown app record {record_id}"
            kind = ChangeKind.UPDATE
        changed = self.app.write(record_id, values, f"app-update {update.event_id}")
        if not changed and kind is ChangeKind.UPDATE:
            return []
        # docs/app-contract.md: the change made by applying an update is published like any
        # other (every field on CREATE, the changed ones on UPDATE), with the update's
        # origin_client, and a created record carries the update's external_id.
        echo = record_changed(
            Side.APP,
            APP_OBJECT,
            record_id,
            self.app.records[record_id] if kind is ChangeKind.CREATE else changed,
            event_id=f"app-echo-{update.event_id}",
            kind=kind,
            at=self.clock.tick(),
            client=update.origin_client,
            external_id=update.external_id if kind is ChangeKind.CREATE else "",
        )
        self.echo_events.append(echo)
        return [(self.names(Topic.APP_CHANGES), echo, record_key(TENANT, APP_OBJECT, record_id))]


# ---------------------------------------------------------------------------------------------
# Consumer lag


class Lag:
    """Committed offsets of the services' consumer groups against the topics' end offsets."""

    def __init__(self, bootstrap: str, names: TopicNames) -> None:
        self.names = names
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> Lag:
        await self._admin.start()
        await self._probe.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._probe.stop()
        await self._admin.close()

    def partitions(self, topics: Iterable[Topic]) -> list[TopicPartition]:
        return [TopicPartition(self.names(t), p) for t in topics for p in range(PARTITIONS)]

    async def ends(self, topics: Iterable[Topic]) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self._probe.end_offsets(self.partitions(topics))
        return ends

    async def committed(self, group: str, topics: Iterable[Topic]) -> dict[TopicPartition, int]:
        for attempt in range(100):
            try:
                # Groups are prefixed like the topics (services.common.kafka.ServiceKafka.group).
                offsets = await self._admin.list_consumer_group_offsets(f"{self.names.prefix}{group}")
                break
            except KafkaError as error:  # the coordinator of a fresh broker or group may be loading
                if not error.retriable or attempt == 99:
                    raise
                await asyncio.sleep(0.1)
        return {
            tp: (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0 else 0)
            for tp in self.partitions(topics)
        }

    async def behind(self, group: str, topics: Iterable[Topic], ends: dict[TopicPartition, int] | None = None) -> int:
        """Records of ``topics`` (up to ``ends``, default now) the group has not committed."""
        topics = list(topics)
        ends = ends if ends is not None else await self.ends(topics)
        committed = await self.committed(group, topics)
        return sum(max(0, ends[tp] - committed[tp]) for tp in committed)

    async def total(self, topics: Iterable[Topic]) -> int:
        return sum((await self.ends(topics)).values())


MAPPING_GROUP = "mapping"
RESOLVER_GROUP = "conflict-resolver"
MAPPING_INPUTS = (Topic.APP_CHANGES, Topic.CRM_CHANGES)
RESOLVER_INPUTS = (Topic.MAPPED_CHANGES, Topic.WRITE_OUTCOMES)
OUTPUTS = (Topic.CRM_WRITES, Topic.APP_UPDATES)


async def settled(lag: Lag, world: World, *, quiet: float = 1.0, within: float = 60.0) -> float:
    """Wait until both services committed all their input and the world applied every command,
    for ``quiet`` seconds in a row; returns how long it took."""
    start = time.monotonic()
    calm_since: float | None = None
    while True:
        now = time.monotonic()
        if now - start > within:
            raise AssertionError(
                f"not settled within {within} s: mapping behind {await lag.behind(MAPPING_GROUP, MAPPING_INPUTS)}, "
                f"resolver behind {await lag.behind(RESOLVER_GROUP, RESOLVER_INPUTS)}"
            )
        outputs = await lag.ends(OUTPUTS)
        idle = (
            not world.busy
            and all(world.positions.get(tp, 0) >= end for tp, end in outputs.items())
            and await lag.behind(MAPPING_GROUP, MAPPING_INPUTS) == 0
            and await lag.behind(RESOLVER_GROUP, RESOLVER_INPUTS) == 0
            and not world.busy
        )
        if idle:
            calm_since = calm_since or now
            if now - calm_since >= quiet:
                return now - start
        else:
            calm_since = None
        await asyncio.sleep(0.1)
