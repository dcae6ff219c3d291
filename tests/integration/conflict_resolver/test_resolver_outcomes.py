"""The conflict-resolver's write outcomes and sync log against the real database: a created record's
id is kept, a rejected write rolls back exactly what it left pending, a redelivered outcome changes
nothing; echoes, conflicts and dropped fields are explained in the sync log."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from duplex.change.v1 import record_changed_pb2
from duplex.writer.v1 import write_records_pb2, write_settled_pb2

from services.common.change import Side
from services.conflict_resolver.repository import ResolverRepository
from tests.e2e.sync.harness import CLIENT, TENANT, prepare_database
from tests.integration.conflict_resolver.test_resolver_batches import Outbox, mapped, resolver, state
from tests.unit.conflict_resolver.test_resolver_handlers import settled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WriteSettled = write_settled_pb2.WriteSettled
WriteRecords = write_records_pb2.WriteRecords


def commands(outbox: Outbox) -> list[WriteRecords]:
    return [c for _, c in outbox.sent if isinstance(c, WriteRecords)]


async def pending(dsn: str, link_id: str) -> dict[str, list[Any]]:
    """Per field, the values still waiting for Salesforce's echo."""
    conn = await asyncpg.connect(dsn)
    try:
        fields = await ResolverRepository(conn, TENANT).fields(link_id)
    finally:
        await conn.close()
    return {name: [edit.value for edit in record.state.pending(Side.CRM)] for name, record in sorted(fields.items())}


async def fetch(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def test_write_outcomes_store_created_ids_roll_back_rejections_and_ignore_redeliveries(
    fresh_database: str,
) -> None:
    await prepare_database(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        # mapping's links: L0 waits for its Salesforce id; L1's was already set by a re-point.
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id) VALUES"
            " ('acme', 'partners', 'L0', 'app-L0', NULL, 'dx-L0'),"
            " ('acme', 'partners', 'L1', 'app-L1', '001X', 'dx-L1')"
        )
    finally:
        await conn.close()
    create = record_changed_pb2.CHANGE_KIND_CREATE
    crm = Outbox()
    async with resolver(fresh_database, crm, Outbox()) as r:
        assert await r.on_mapped_batch([mapped("c0", "L0", {"name": "n0", "phone": "1"}, at=0, kind=create)]) == {}
        assert await r.on_mapped_batch([mapped("c1", "L1", {"name": "n1"}, at=0, kind=create)]) == {}
        upsert0, upsert1 = commands(crm)
        assert upsert0.operation == write_records_pb2.OPERATION_UPSERT

        # The writer created both records.
        assert await r.on_settled_batch([settled(upsert0, record_id="001L0", created=True)]) == {}
        assert await r.on_settled_batch([settled(upsert1, record_id="001L1", created=True)]) == {}
        assert await fetch(fresh_database, "SELECT link_id, crm_record_id FROM link_states ORDER BY 1") == [
            ("L0", "001L0"),
            ("L1", "001L1"),
        ]
        # mapping's link learns the new id, unless mapping has set one itself meanwhile.
        assert await fetch(fresh_database, "SELECT link_id, crm_record_id FROM links ORDER BY 1") == [
            ("L0", "001L0"),
            ("L1", "001X"),
        ]

        # Two edits of the name in flight, then Salesforce refuses the first for good.
        await r.on_mapped_batch([mapped("u1", "L0", {"name": "v1"}, at=10)])
        await r.on_mapped_batch([mapped("u2", "L0", {"name": "v2", "phone": "2"}, at=11)])
        first_edit, second_edit = commands(crm)[2:]
        assert first_edit.operation == second_edit.operation == write_records_pb2.OPERATION_UPDATE
        assert (await pending(fresh_database, "L0"))["name"] == ["n0", "v1", "v2"]
        assert await r.on_settled_batch([settled(first_edit, rejected=True)]) == {}
        # Only that write's value stops waiting; the later one and the other fields still wait.
        assert await pending(fresh_database, "L0") == {"name": ["n0", "v2"], "phone": ["1", "2"]}
        before_redelivery = await state(fresh_database)

        # A delete Salesforce refuses: the record is not deleted there after all.
        deleted = record_changed_pb2.CHANGE_KIND_DELETE
        await r.on_mapped_batch([mapped("d0", "L0", {}, at=12, kind=deleted)])
        delete = commands(crm)[-1]
        assert delete.operation == write_records_pb2.OPERATION_DELETE
        assert await fetch(fresh_database, "SELECT crm_deleted FROM link_states WHERE link_id = 'L0'") == [(True,)]
        assert await r.on_settled_batch([settled(delete, rejected=True)]) == {}
        assert await fetch(fresh_database, "SELECT crm_deleted FROM link_states WHERE link_id = 'L0'") == [(False,)]
        after_delete = await state(fresh_database)

        # Every outcome again (the offsets were not committed): nothing changes.
        again = [
            settled(upsert0, record_id="001L0", created=True),
            settled(upsert1, record_id="001L1", created=True),
            settled(first_edit, rejected=True),
            settled(delete, rejected=True),
        ]
        assert await r.on_settled_batch(again) == {}
        assert await state(fresh_database) == after_delete
    assert before_redelivery != after_delete  # the comparison above can tell states apart

    log = await fetch(
        fresh_database, "SELECT event, link_id, record_id, code, detail FROM sync_log WHERE event <> 'change.resolved'"
    )
    assert [row[:4] for row in log] == [
        ("record.created", "L0", "001L0", None),
        ("record.created", "L1", "001L1", None),
        ("write.rejected", "L0", "001L0", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ("write.rejected", "L0", "001L0", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
    ]
    assert json.loads(log[2][4])["rolled_back"] == ["name"]
    assert json.loads(log[3][4])["version"] == delete.records[0].version


async def test_the_sync_log_explains_echoes_conflicts_and_dropped_fields(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    create = record_changed_pb2.CHANGE_KIND_CREATE
    with_dropped = mapped("s1", "L0", {"name": "crm edit 2"}, at=20, side="crm", crm_id="001L0")
    with_dropped.dropped_fields.add(field="Status__c", reason="read-only in Salesforce (formula field)")
    events = [
        mapped("c0", "L0", {"name": "n0", "phone": "1"}, at=0, kind=create),
        # Salesforce's CDC event of Duplex's own write, tagged with the tenant's client id.
        mapped("e0", "L0", {"name": "n0", "phone": "1"}, at=5, side="crm", client=CLIENT, crm_id="001L0"),
        mapped("s0", "L0", {"name": "crm edit"}, at=12, side="crm", crm_id="001L0"),
        # Made in the app before Salesforce's edit, delivered after it: newest wins, Salesforce.
        mapped("u0", "L0", {"name": "older app edit"}, at=11),
        with_dropped,
    ]
    async with resolver(fresh_database, Outbox(), Outbox()) as r:
        assert await r.on_mapped_batch(events) == {}

    rows = await fetch(fresh_database, "SELECT event, link_id, code, message, detail FROM sync_log ORDER BY id")
    by_source: dict[str, list[tuple[Any, ...]]] = {}
    current = ""
    for event, link_id, code, message, detail in rows:
        if event == "echoes.dropped":
            continue
        decoded = json.loads(detail)
        current = decoded.get("source_event_id", current)  # a conflict row follows its change's row
        by_source.setdefault(current, []).append((event, link_id, code, message, decoded))

    # The echo has no row of its own: the batch counts its echoes in one row, written last.
    assert "e0" not in by_source
    (event, link_id, _, message, echoes) = (*rows[-1][:4], json.loads(rows[-1][4]))
    assert (event, link_id) == ("echoes.dropped", None)
    assert echoes == {"count": 1, "object_pair": "partners", "side": "crm", "echo": "origin_client"}
    assert message.startswith("1 of Duplex's own writes to crm came back for partners")

    (change, conflict) = by_source["u0"]
    assert change[0] == "change.resolved"
    assert change[4]["fields"]["name"]["outcome"] != "accepted"
    assert conflict[:3] == ("conflict.decided", "L0", "newest_wins")
    assert conflict[3].startswith("name: crm wins (")
    assert conflict[4]["field"] == "name"
    assert conflict[4]["winner"] == "crm"

    ((event, _, _, _, dropped),) = by_source["s1"]
    assert event == "change.resolved"
    assert dropped["dropped"] == {"Status__c": "read-only in Salesforce (formula field)"}
    assert by_source["c0"][0][4]["dropped"] == {}
