"""Hostile input against the real database and broker: a value PostgreSQL cannot take as it is
(U+0000) is stored escaped and written on exactly; an identifier it cannot store refuses that event
alone, with its reason in the sync log and the DLQ; the other tenants' events in the same batch are
resolved and the resolver keeps running. And the per-side state the policy keeps (a conflict's lost
edit, each side's last tagged echo) survives being stored between batches."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.mapping.v1 import change_mapped_pb2
from duplex.writer.v1 import write_records_pb2
from pydantic import SecretStr

from services.common.change import Side
from services.common.codec import event_headers, link_key
from services.common.contract import RecordChanged, from_proto, to_value
from services.common.dlq import ERROR_REASON
from services.common.settings import KafkaSettings, PostgresSettings
from services.common.topics import Topic, TopicNames
from services.common.values import Value
from services.conflict_resolver.app import run
from services.conflict_resolver.policy import Edit
from services.conflict_resolver.repository import ResolverRepository
from services.conflict_resolver.resolve import FieldRecord
from services.conflict_resolver.settings import ResolverSettings
from tests.e2e.sync.harness import CLIENT, CONFIG, T0, TENANT, TopicReader, decode, prepare_database, producer, publish
from tests.integration.conflict_resolver.test_resolver_batches import Outbox, mapped, resolver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ChangeMapped = change_mapped_pb2.ChangeMapped
WriteRecords = write_records_pb2.WriteRecords
OTHER = "globex"
CREATE = record_changed_pb2.CHANGE_KIND_CREATE


def config(tenant: str, client: str, *, phone_nulls: bool = False) -> dict[str, Any]:
    """The harness tenant's configuration under another name (and, if asked, nulls on the phone)."""
    doc = copy.deepcopy(CONFIG)
    doc["metadata"]["name"] = tenant
    doc["spec"]["salesforce"]["callOptionsClient"] = client
    doc["spec"]["objects"][0]["fields"][1]["allowNulls"] = phone_nulls
    return doc


def of(tenant: str, event: ChangeMapped) -> ChangeMapped:
    event.tenant_id = tenant
    return event


def by_link(outbox: Outbox) -> dict[tuple[str, str], list[WriteRecords]]:
    commands: dict[tuple[str, str], list[WriteRecords]] = {}
    for _, command in outbox.sent:
        if isinstance(command, WriteRecords):
            commands.setdefault((command.tenant_id, command.records[0].link_id), []).append(command)
    return commands


def written(command: WriteRecords) -> dict[str, Value]:
    return {name: to_value(value) for name, value in command.records[0].fields.items()}


async def fields(dsn: str, tenant: str, link_id: str) -> dict[str, FieldRecord]:
    conn = await asyncpg.connect(dsn)
    try:
        return await ResolverRepository(conn, tenant).fields(link_id)
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def test_a_nul_in_a_batch_of_two_tenants_costs_only_the_event_that_cannot_be_stored(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    await prepare_database(fresh_database, config(OTHER, "duplex-globex"))
    batch = [
        mapped("c1", "L1", {"name": "Acme"}, at=0, kind=CREATE),
        of(OTHER, mapped("g1", "G1", {"name": "Globex"}, at=0, kind=CREATE)),
        mapped("c2", "L2", {"name": "Nul\x00Name"}, at=1, kind=CREATE),
        mapped("bad", "L\x00", {"name": "x"}, at=2),
        of(OTHER, mapped("g2", "G1", {"phone": "2"}, at=5)),
    ]
    crm = Outbox()
    async with resolver(fresh_database, crm, Outbox()) as r:
        refused = await r.on_mapped_batch(batch)

        assert list(refused) == [3]
        assert "link_id" in refused[3].reason
        assert "PostgreSQL cannot store" in refused[3].reason
        commands = by_link(crm)
        assert sorted(commands) == [(TENANT, "L1"), (TENANT, "L2"), (OTHER, "G1")]
        # The second is an upsert too (no Salesforce id yet): it carries the name again.
        assert [written(c) for c in commands[(OTHER, "G1")]] == [{"Name": "Globex"}, {"Name": "Globex", "Phone": "2"}]
        # The value went on exactly as it came, and its state was stored escaped.
        assert [written(c) for c in commands[(TENANT, "L2")]] == [{"Name": "Nul\x00Name"}]
        stored = await fetch(
            fresh_database, "SELECT state FROM field_states WHERE tenant_id = $1 AND link_id = 'L2'", TENANT
        )
        assert json.loads(stored[0][0])["truth"]["v"] == {"se": "Nul\\0Name"}

        # Still running, and the stored value is the value: Salesforce's echo of it confirms our write.
        echo = mapped("e2", "L2", {"name": "Nul\x00Name"}, at=9, side="crm", client=CLIENT, crm_id="001L2")
        assert await r.on_mapped_batch([echo]) == {}
    name = (await fields(fresh_database, TENANT, "L2"))["name"].state
    assert name.truth is not None
    assert name.truth.value == "Nul\x00Name"
    assert name.pending(Side.CRM) == ()

    log = await fetch(fresh_database, "SELECT tenant_id, event, link_id, code, message FROM sync_log ORDER BY id")
    assert [row[:4] for row in log if row[1] == "change.rejected"] == [
        (TENANT, "change.rejected", "L\\0", "UNSTORABLE_TEXT")
    ]
    resolved = {(row[0], row[2]) for row in log if row[1] == "change.resolved"}
    assert resolved == {(TENANT, "L1"), (TENANT, "L2"), (OTHER, "G1")}
    # L2's last change, the echo confirming the write, is counted, not logged as a row.
    assert [row[0] for row in log if row[1] == "echoes.dropped"] == [TENANT]


async def test_the_lost_edit_and_the_last_tagged_echo_survive_between_batches(fresh_database: str) -> None:
    await prepare_database(fresh_database, config(TENANT, CLIENT, phone_nulls=True))
    crm, app = Outbox(), Outbox()
    async with resolver(fresh_database, crm, app) as r:
        # phone, app-unless-blank with nulls: Salesforce's "a" loses to the app's "b", then the app's
        # blank (made before "a", delivered after it) loses to "a". One batch each: the lost edit is
        # read back from its row every time.
        for event in (
            mapped("p1", "L1", {"phone": "b"}, at=1),
            mapped("p2", "L1", {"phone": "a"}, at=3, side="crm", crm_id="001L1"),
            mapped("p3", "L1", {"phone": None}, at=2),
        ):
            assert await r.on_mapped_batch([event]) == {}
        phone = (await fields(fresh_database, TENANT, "L1"))["phone"]
        assert phone.state.truth == Edit("a", Side.CRM, T0 + timedelta(seconds=3))
        assert phone.state.lost == Edit(None, Side.APP, T0 + timedelta(seconds=2))
        assert phone.crm_form == "a"
        assert written(by_link(crm)[(TENANT, "L1")][-1]) == {"Phone": "a"}
        last_update = app.sent[-1][1]
        assert isinstance(last_update, RecordChanged)
        assert from_proto(last_update).fields == {"phone": "a"}

        # name, newest-wins: Salesforce's "a", "b", "a" go to the app; the first "a" echoed there
        # (t4) before the second was sent. That echo, replayed under a new event id, must not
        # confirm the second "a", still behind "b".
        for event in (
            mapped("n1", "L2", {"name": "a"}, at=1, side="crm", crm_id="001L2"),
            mapped("n2", "L2", {"name": "b"}, at=2, side="crm", crm_id="001L2"),
            mapped("n3", "L2", {"name": "a"}, at=4, client=CLIENT),
            mapped("n4", "L2", {"name": "a"}, at=3, side="crm", crm_id="001L2"),
            mapped("n3-replayed", "L2", {"name": "a"}, at=4, client=CLIENT),
        ):
            assert await r.on_mapped_batch([event]) == {}
        name = (await fields(fresh_database, TENANT, "L2"))["name"].state
        assert [e.value for e in name.pending(Side.APP)] == ["b", "a"]
        # The real echoes, later in the app's commit order, confirm both.
        for event in (
            mapped("n5", "L2", {"name": "b"}, at=5, client=CLIENT),
            mapped("n6", "L2", {"name": "a"}, at=6, client=CLIENT),
        ):
            assert await r.on_mapped_batch([event]) == {}
        assert (await fields(fresh_database, TENANT, "L2"))["name"].state.pending(Side.APP) == ()


def surrogate_bytes(event: ChangeMapped) -> bytes:
    """``event`` on the wire with "XXX" in its link's ids turned into an encoded lone surrogate
    (ED A0 80): what a producer that does not check UTF-8 could send."""
    wire = event.SerializeToString()
    assert b"LXXX" in wire
    return wire.replace(b"LXXX", b"L\xed\xa0\x80")


async def test_hostile_input_through_the_broker_is_dead_lettered_alone_and_the_resolver_keeps_running(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    await prepare_database(fresh_database, config(OTHER, "duplex-globex"))
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix),
        postgres=PostgresSettings(dsn=SecretStr(fresh_database), pool_max_size=2),
    )
    good = [
        (mapped("c1", "L1", {"name": "Acme"}, at=0, kind=CREATE), link_key(TENANT, "L1")),
        (of(OTHER, mapped("g1", "G1", {"name": "Globex"}, at=0, kind=CREATE)), link_key(OTHER, "G1")),
        (mapped("c2", "L2", {"name": "Nul\x00Name"}, at=1, kind=CREATE), link_key(TENANT, "L2")),
    ]
    nul_link = mapped("bad-1", "L\x00", {"name": "x"}, at=2)
    surrogate = mapped("bad-2", "LXXX", {"name": "x"}, at=2)
    async with (
        producer(kafka_bootstrap) as upstream,
        run(settings) as running,
        TopicReader(kafka_bootstrap, topic_names(Topic.CRM_WRITES)) as writes,
        TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES_DLQ), partitions=3) as dead,
    ):
        await publish(upstream, topic_names, Topic.MAPPED_CHANGES, *good[0])
        await publish(upstream, topic_names, Topic.MAPPED_CHANGES, nul_link, link_key(TENANT, "L1"))
        await upstream.publish(
            surrogate_bytes(surrogate),
            topic_names(Topic.MAPPED_CHANGES),
            key=link_key(TENANT, "L1"),
            headers=event_headers(surrogate),
        )
        for event, key in good[1:]:
            await publish(upstream, topic_names, Topic.MAPPED_CHANGES, event, key)

        commands = decode(await writes.until(3), WriteRecords)
        assert {(c.tenant_id, c.records[0].link_id): written(c) for c in commands} == {
            (TENANT, "L1"): {"Name": "Acme"},
            (OTHER, "G1"): {"Name": "Globex"},
            (TENANT, "L2"): {"Name": "Nul\x00Name"},
        }
        reasons = sorted(dict(r.headers)[ERROR_REASON] for r in await dead.until(2))
        assert any(b"PostgreSQL cannot store" in reason for reason in reasons), reasons
        assert any(b"UTF-8" in reason for reason in reasons), reasons

        # Still running: the next change of the tenant whose event was refused goes through.
        later = mapped("u1", "L1", {"name": "Acme Ltd"}, at=5)
        await publish(upstream, topic_names, Topic.MAPPED_CHANGES, later, link_key(TENANT, "L1"))
        (*_, last) = decode(await writes.until(4), WriteRecords)
        assert written(last) == {"Name": "Acme Ltd"}
        assert running.halt.error is None
        assert await running.health.is_live()
    rejected = await fetch(fresh_database, "SELECT link_id, code FROM sync_log WHERE event = 'change.rejected'")
    assert rejected == [("L\\0", "UNSTORABLE_TEXT")]
