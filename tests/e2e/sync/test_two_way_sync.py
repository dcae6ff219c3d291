"""mapping and conflict-resolver as separate processes on the real broker and database, killed mid-stream.

The test plays both outer worlds (:mod:`tests.e2e.sync.world`): the app (app-changes in,
app-updates out) and Salesforce with the writer (crm-changes in, crm-writes out, write-outcomes
back). It applies every command Duplex sends, once per id, and publishes the resulting change
back as each side would: Salesforce CDC tagged with Duplex's client, the app copying the update's
origin_client (docs/app-contract.md).

Rounds of seeded random edits from both sides, with every conflict policy, blanks, untagged
repeats of synced values and redelivered events:

0. 48 records created, half on each side;
1. about a hundred changes (six of them creates): mapping is SIGKILLed once it has mapped part
   of them and before it has committed the rest, then restarted;
2. the same for the conflict-resolver;
3. about a hundred more changes for the restarted services, without a fault.

Each round ends when both services have committed all their input and every command is applied.
An independent model (:class:`~tests.e2e.sync.world.Model`) says what each side must then hold.
The test checks: every field of every record on both sides holds what the policies prescribe; no
side received more writes of a field than the model allows (the bound is explained there); no
write changed nothing or carried a value that side had already sent back as its echo; every
command Duplex sent derives from a genuine edit, none from an echo or a repeat; no record was
created twice; nothing more is written once settled.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2

from services.common.change import Side
from services.common.contract import from_proto, to_value
from services.common.topics import Topic, TopicNames
from services.conflict_resolver.contract import output_id
from services.mapping.links import mapped_event_id
from tests.e2e.sync.harness import TopicReader, prepare_database
from tests.e2e.sync.world import (
    CONFIG,
    FIELDS,
    MAPPING_GROUP,
    MAPPING_INPUTS,
    OUTPUTS,
    RESOLVER_GROUP,
    RESOLVER_INPUTS,
    Clock,
    Lag,
    Model,
    PlannedChange,
    World,
    new_round,
    settled,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[3]
SEED = 20260301
FIRST_RECORDS = 48
NEW_PER_ROUND = 6
# Round number -> which services are killed mid-round.
KILLS: dict[int, tuple[str, ...]] = {1: ("mapping",), 2: ("resolver",)}
RecordChanged = record_changed_pb2.RecordChanged
ChangeMapped = change_mapped_pb2.ChangeMapped
WriteRecords = write_records_pb2.WriteRecords


class Service:
    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def pause(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.module} exited on its own ({self.process.returncode})"
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"{self.module} exited on its own ({self.process.returncode})"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def services(bootstrap: str, names: TopicNames, dsn: str, logs: Path) -> Iterator[dict[str, Service]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": names.prefix,
        "POSTGRES_DSN": dsn,
        "POSTGRES_POOL_MAX_SIZE": "3",
        "MAPPING_CONFIG_CHECK_SECONDS": "1",
    }
    running = {
        "mapping": Service("services.mapping", env, logs / "mapping.log"),
        "resolver": Service("services.conflict_resolver", env, logs / "resolver.log"),
    }
    for s in running.values():
        s.start()
    try:
        yield running
    finally:
        for s in running.values():
            s.stop()


def derived_ids(event: RecordChanged) -> set[str]:
    """The ids of the crm write and the app update Duplex would send because of ``event``."""
    mapped = mapped_event_id(from_proto(event))
    return {output_id("crm", mapped), output_id("app", mapped)}


async def wait_for(what: str, check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_both_sides_converge_without_echoes_while_services_are_killed_mid_stream(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    await prepare_database(fresh_database, CONFIG)
    rng = random.Random(SEED)
    clock = Clock()
    model = Model()
    genuine: list[RecordChanged] = []  # every user edit and create (not the repeats)
    repeats: list[RecordChanged] = []
    kill_notes: list[str] = []
    timings: list[str] = []

    world = World(kafka_bootstrap, topic_names, clock)
    mapped_reader = TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES))
    with services(kafka_bootstrap, topic_names, fresh_database, tmp_path) as running:
        async with world, Lag(kafka_bootstrap, topic_names) as lag, mapped_reader as mapped:
            next_record = 0
            for number in range(4):
                count = FIRST_RECORDS if number == 0 else NEW_PER_ROUND
                creates = [(next_record + i, Side.APP if i % 2 == 0 else Side.CRM) for i in range(count)]
                next_record += count
                changes, delivered = new_round(rng, model, clock, number, creates)
                world.held = True  # every edit of the round is made before any write of it lands
                events = {c.event_id: world.user_change(c) for c in changes}
                for c in changes:
                    (repeats if c.repeat else genuine).append(events[c.event_id][1])
                model.apply(changes)
                sequence = [events[c.event_id] for c in delivered]
                round_start = time.monotonic()
                kills = KILLS.get(number, ())
                if not kills:
                    await world.send(sequence)
                else:
                    kill_notes.append(
                        await publish_and_kill(world, lag, mapped, running, kills, changes, sequence, number)
                    )
                world.held = False
                took = await settled(lag, world, within=90)
                world.learn_ids()
                timings.append(
                    f"round {number}: {len(changes)} changes ({len(sequence)} deliveries), "
                    f"settled in {time.monotonic() - round_start:.1f} s (last {took:.1f} s quiet wait)"
                )
            # Nothing more is written once settled: no echo loop keeps going.
            commands_settled = len(world.commands)
            await asyncio.sleep(2.0)
            await mapped.poll()
            assert len(world.commands) == commands_settled, world.commands[commands_settled:]
            mapped_events = mapped.records
        for s in running.values():
            assert s.process is not None
            assert s.process.poll() is None, f"{s.module} died; see {s.log}"

    report = check(model, world, genuine, repeats, mapped_events)
    print(
        "\n".join(
            [
                f"seed {SEED}, {len(model.records)} records, total {time.monotonic() - started:.1f} s",
                *timings,
                *kill_notes,
                *report,
            ]
        )
    )


async def publish_and_kill(
    world: World,
    lag: Lag,
    mapped: TopicReader,
    running: dict[str, Service],
    kills: tuple[str, ...],
    changes: list[PlannedChange],
    sequence: list[tuple[str, Any, bytes]],
    number: int,
) -> str:
    """Publish the round in two parts and SIGKILL ``kills`` mid-stream, with a backlog provably not drained.

    The first two fifths go out. As soon as the first service to kill has produced some of the
    round's outputs (which it publishes before committing its input), the services are frozen
    (SIGSTOP: a stall, as under CPU starvation, that keeps them from finishing or committing
    anything more), the rest of the round goes out, the world starts applying writes, and the
    services are killed with SIGKILL. The end offsets of their input just before the kill, against
    the offsets they had committed (frozen), prove input was left unprocessed; for mapping, the
    round's changes it had mapped by then prove it had started and not finished.
    """
    split = len(sequence) * 2 // 5
    watched = [Topic.MAPPED_CHANGES] if "mapping" in kills else list(OUTPUTS)
    before = await lag.total(watched)
    await world.send(sequence[:split])

    async def started() -> bool:
        return await lag.total(watched) > before

    await wait_for(f"{kills[0]} to produce part of the round", started)
    for name in kills:
        running[name].pause()
    await world.send(sequence[split:])
    world.held = False
    if "mapping" not in kills:
        # mapping goes on: let it map the rest, so that the resolver's own input holds it.
        async def mapping_done() -> bool:
            return await lag.behind(MAPPING_GROUP, MAPPING_INPUTS) == 0

        await wait_for("mapping to map the round", mapping_done, within=10.0)
    groups = {"mapping": (MAPPING_GROUP, MAPPING_INPUTS), "resolver": (RESOLVER_GROUP, RESOLVER_INPUTS)}
    ends = {name: await lag.ends(groups[name][1]) for name in kills}
    for name in kills:
        running[name].kill()
    notes = []
    for name in kills:
        group, inputs = groups[name]
        behind = await lag.behind(group, inputs, ends[name])
        assert behind > 0, f"round {number}: {name} had drained its input when killed"
        notes.append(f"{name} {behind} input records behind")
    if "mapping" in kills:
        await mapped.catch_up()
        round_ids = {c.event_id for c in changes}
        done = {m.source_event_id for m in decode_mapped(mapped.records) if m.source_event_id in round_ids}
        assert 0 < len(done) < len(round_ids), (
            f"round {number}: mapping had mapped {len(done)} of {len(round_ids)} changes when killed"
        )
        notes.append(f"mapping had mapped {len(done)} of the round's {len(round_ids)} changes")
    for name in kills:
        running[name].start()
    return f"round {number}: SIGKILL {' + '.join(kills)} mid-stream: " + "; ".join(notes)


def decode_mapped(records: list[Any]) -> list[ChangeMapped]:
    out = []
    for r in records:
        m = ChangeMapped()
        m.ParseFromString(r.value)
        out.append(m)
    return out


def trail(world: World, links: set[str], mapped_records: list[Any], app_ids: Collection[str] = ()) -> str:
    """The mapped changes (with their values) and the commands of ``links``, in the order they happened."""
    lines = []
    for command_id, command in world.commands:
        link = command.records[0].link_id if isinstance(command, WriteRecords) else command.external_id
        if link in links or (isinstance(command, RecordChanged) and command.record_id in app_ids):
            lines.append(f"{command_id}: {command}".replace("\n", " "))
    records = {r: ids for r, ids in world.ids.items() if world.link_of(r) in links}
    mapped = [
        f"mapped {m.event_id}: side {m.origin_side} record app {m.app_record_id!r} crm {m.crm_record_id!r}, "
        f"source {m.source_event_id}, origin client {m.origin_client!r}, at {m.origin_commit_time.seconds}, "
        f"values { {f.app_field: to_value(f.app_value) for f in m.fields} }"
        for m in decode_mapped(mapped_records)
        if m.link_id in links
    ]
    return f"records of those links: {records}\n" + "\n".join(mapped + lines)


def stray_trail(world: World, stray: dict[Side, dict[str, dict[str, Any]]], mapped_records: list[Any]) -> str:
    """The trail of the links that made stray records."""
    links = {str(v.get("Duplex_Id__c", ""))[3:] for v in stray[Side.CRM].values()}
    links |= {ext for ext, rid in world.app.by_external.items() if rid in stray[Side.APP]}
    return trail(world, links, mapped_records, set(stray[Side.APP]))


def check(
    model: Model, world: World, genuine: list[RecordChanged], repeats: list[RecordChanged], mapped_records: list[Any]
) -> list[str]:
    """Every assertion on the settled state; returns the figures for the report."""
    # No record created twice, on either side, and nothing unknown written.
    assert sorted(world.ids) == sorted(model.records)
    assert all(len(ids) == 2 for ids in world.ids.values()), "a record never reached the other side"
    known = {side: {ids[side] for ids in world.ids.values()} for side in Side}
    stray = {
        side: {rid: values for rid, values in state.records.items() if rid not in known[side]}
        for side, state in ((Side.APP, world.app), (Side.CRM, world.crm))
    }
    assert not stray[Side.APP], (
        f"app records created twice or unknown: {stray[Side.APP]}\n{stray_trail(world, stray, mapped_records)}"
    )
    assert not stray[Side.CRM], (
        f"Salesforce records created twice or unknown: {stray[Side.CRM]}\n{stray_trail(world, stray, mapped_records)}"
    )
    assert set(world.app.creates.values()) <= {1}, world.app.creates
    assert set(world.crm.creates.values()) <= {1}, world.crm.creates
    links = {world.link_of(r) for r in model.records}
    for _, command in world.commands:
        if isinstance(command, WriteRecords):
            assert {rec.link_id for rec in command.records} <= links, command
        elif command.kind == record_changed_pb2.CHANGE_KIND_CREATE:
            assert command.external_id in links, command

    # Both sides hold what the policies prescribe.
    wrong = []
    wrong_links = set()
    for record, fields in sorted(model.records.items()):
        app = world.app.records[world.ids[record][Side.APP]]
        crm = world.crm.records[world.ids[record][Side.CRM]]
        for spec in FIELDS:
            want = fields[spec.app].values
            got = {Side.APP: app.get(spec.app), Side.CRM: crm.get(spec.crm)}
            if got != want:
                wrong.append(f"record {record} {spec.app} ({spec.policy}): holds {got}, prescribed {want}")
                wrong_links.add(world.link_of(record))
    assert not wrong, "\n".join(wrong) + "\n" + trail(world, wrong_links, mapped_records)

    # No field written more often than it changed (Model explains the bound).
    over = []
    writes: Counter[Side] = Counter()
    for record, fields in sorted(model.records.items()):
        for spec in FIELDS:
            for side, state, name in ((Side.APP, world.app, spec.app), (Side.CRM, world.crm, spec.crm)):
                count = state.writes[(world.ids[record][side], name)]
                writes[side] += count
                if count > fields[spec.app].allowed[side]:
                    over.append(
                        f"record {record} {spec.app} ({spec.policy}) written {count} times to {side}, "
                        f"at most {fields[spec.app].allowed[side]} allowed"
                    )
    assert not over, "\n".join(over)
    assert not world.app.noops + world.crm.noops, world.app.noops + world.crm.noops

    # No echo is ever written back: no write carries a value its side had already echoed, and
    # every command derives from a genuine edit, none from an echo or an untagged repeat.
    assert not world.app.rewrites + world.crm.rewrites, world.app.rewrites + world.crm.rewrites
    from_edits = set().union(*(derived_ids(e) for e in genuine))
    from_echoes = set().union(*(derived_ids(e) for e in world.echo_events))
    from_repeats = set().union(*(derived_ids(e) for e in repeats))
    sent = {command_id for command_id, _ in world.commands}
    assert not sent & from_echoes, "an echo was written back"
    assert not sent & from_repeats, "an untagged repeat of a synced value was written"
    assert sent <= from_edits, f"commands from no known edit: {sorted(sent - from_edits)[:5]}"

    mapped_ids = Counter(m.event_id for m in decode_mapped(mapped_records))
    allowed = sum(f.allowed[s] for fields in model.records.values() for f in fields.values() for s in Side)
    return [
        f"{len(genuine)} genuine changes, {len(repeats)} repeats, {len(world.echo_events)} echoes; "
        f"{len(sent)} commands, {writes[Side.CRM]} field writes to Salesforce and {writes[Side.APP]} to the app "
        f"(at most {allowed} allowed)",
        f"redelivered after the kills: {sum(n - 1 for n in mapped_ids.values() if n > 1)} mapped changes, "
        f"{sum(world.redelivered.values())} commands",
    ]
