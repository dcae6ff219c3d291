"""``/api/v1/tenants/{tenant}/dead-letters`` and ``duplex dead-letters`` against the real broker and
the real mapping service: a change mapping refused is listed with its reason, replayed once its
configuration is fixed and then mapped exactly once; a discarded one is never replayed; bad
requests change nothing."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import asyncpg
import pytest
from duplex.mapping.v1 import change_mapped_pb2
from typer.testing import CliRunner, Result

from services.admin.auth import Role
from services.admin.cli import app as cli
from services.admin.config_store import ConfigStore
from services.admin.dead_letters import Place, record_actions
from services.common.change import ChangeKind, Side
from services.common.codec import record_key
from services.common.dlq import ERROR_REASON, FAILED_AT
from services.common.settings import KafkaSettings
from services.common.tenant_config import parse_tenant_config
from services.common.topics import Topic, TopicNames
from tests.e2e.sync.harness import (
    CONFIG,
    TENANT,
    TopicReader,
    decode,
    prepare_database,
    producer,
    publish,
    record_changed,
)
from tests.integration.admin_api.harness import Api, bearer, problem, serving
from tests.integration.mapping.test_mapping_service import running_mapping

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

URL = f"/api/v1/tenants/{TENANT}/dead-letters"
TOO_LONG = "x" * 41  # the partners pair's name field takes 40


async def fix_the_mapping(dsn: str) -> None:
    fixed = copy.deepcopy(CONFIG)
    for pair in fixed["spec"]["objects"]:
        for field in pair["fields"]:
            if field.get("transform", {}).get("maxLength") == 40:
                field["transform"]["maxLength"] = 80
    conn = await asyncpg.connect(dsn)
    try:
        await ConfigStore(conn).apply([parse_tenant_config(fixed)], "test")
    finally:
        await conn.close()


async def duplex(api: Api, token: str, *args: str) -> Result:
    env = {"DUPLEX_SERVER": f"http://127.0.0.1:{api.running.port}", "DUPLEX_TOKEN": token, "COLUMNS": "200"}
    # In a thread: the CLI blocks on HTTP while this event loop serves the API it calls.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


async def post(api: Api, action: str, body: dict[str, Any], token: str) -> Any:
    return await api.http.post(f"{URL}:{action}", json=body, headers=bearer(token))


async def test_a_refused_change_is_replayed_after_the_fix_and_mapped_once(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    async with producer(kafka_bootstrap) as upstream:
        for record in ("a1", "b1"):
            change = record_changed(
                Side.APP, "partners", record, {"name": TOO_LONG}, event_id=f"poison-{record}", kind=ChangeKind.CREATE
            )
            await publish(upstream, topic_names, Topic.APP_CHANGES, change, record_key(TENANT, "partners", record))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    async with (
        running_mapping(kafka_bootstrap, topic_names, fresh_database),
        serving(fresh_database, kafka=kafka) as api,
        TopicReader(kafka_bootstrap, topic_names(Topic.MAPPED_CHANGES)) as mapped,
    ):
        async with TopicReader(kafka_bootstrap, topic_names(Topic.APP_CHANGES_DLQ), partitions=3) as dlq:
            await dlq.until(2)
        viewer, operator = await api.token(Role.VIEWER), await api.token(Role.OPERATOR, name="on call")

        listed = (await api.http.get(URL, headers=bearer(viewer))).json()
        assert listed["total"] == 2
        entries = {e["payload"]["record_id"]: e for e in listed["entries"]}
        assert {e["state"] for e in entries.values()} == {"pending"}
        assert {e["topic"] for e in entries.values()} == {"app_changes"}
        assert entries["a1"]["reason"].startswith("STRING_TOO_LONG: Name: 41 characters")
        assert entries["a1"]["service"] == "mapping"
        assert entries["a1"]["recordKey"] == f"{TENANT}/partners/a1"
        a, b = entries["a1"]["id"], entries["b1"]["id"]

        # Bad requests: a clear 4xx, nothing sent.
        assert problem(await post(api, "replay", {"ids": ["nope"]}, operator), 422)["errors"][0]["field"] == "ids[0]"
        assert problem(await post(api, "replay", {}, operator), 422)
        assert problem(await post(api, "replay", {"ids": [a], "all": True}, operator), 422)
        missing = await post(api, "replay", {"ids": [a, "app_changes_dlq:0:99999"]}, operator)
        assert "app_changes_dlq:0:99999" in problem(missing, 404)["detail"]
        assert problem(await post(api, "replay", {"ids": [a]}, viewer), 403)
        assert problem(await post(api, "discard", {"ids": [b]}, operator), 422)  # a reason is required

        discarded = await duplex(api, operator, "dead-letters", "discard", TENANT, b, "--reason", "test data")
        assert (discarded.exit_code, discarded.stdout) == (0, f"1 discarded: {b}\n")
        refused = await post(api, "replay", {"ids": [a, b]}, operator)
        assert b in problem(refused, 409)["detail"]
        assert await mapped.settle(quiet=1.0) == []  # not even a, which was fine

        await fix_the_mapping(fresh_database)
        replayed = await post(api, "replay", {"ids": [a]}, operator)
        assert replayed.json() == {"done": [a], "already": []}
        (event,) = decode(await mapped.until(1), change_mapped_pb2.ChangeMapped)
        assert event.source_event_id == "poison-a1"

        again = await post(api, "replay", {"ids": [a]}, operator)
        assert again.json() == {"done": [], "already": [a]}
        everything = await duplex(api, operator, "dead-letters", "replay", TENANT, "--all", "--json")
        assert (everything.exit_code, json.loads(everything.stdout)) == (0, {"done": [], "already": []})
        assert len(await mapped.settle(quiet=1.5)) == 1

        after = {e["id"]: e for e in (await api.http.get(URL, headers=bearer(viewer))).json()["entries"]}
        assert (after[a]["state"], after[b]["state"], after[b]["discardReason"]) == (
            "replayed",
            "discarded",
            "test data",
        )
        assert after[a]["actor"].startswith("on call (token ")
        audit = await api.db.fetch(
            "SELECT action, detail FROM audit_log WHERE action LIKE 'dead_letters.%' ORDER BY id"
        )
        assert [(r["action"], json.loads(r["detail"])["ids"]) for r in audit] == [
            ("dead_letters.discarded", [b]),
            ("dead_letters.replayed", [a]),
            ("dead_letters.replayed", []),
            ("dead_letters.replayed", []),
        ]
        pending = (await api.http.get(URL, params={"state": "pending"}, headers=bearer(viewer))).json()
        assert pending == {"entries": [], "total": 0}

        shown = await duplex(api, viewer, "dead-letters", "list", TENANT)
        assert shown.exit_code == 0, shown.output
        assert a in shown.output
        assert "discarded" in shown.output


async def test_without_kafka_the_routes_say_so(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    async with serving(fresh_database, kafka=None) as api:
        answer = await api.http.get(URL, headers=bearer(await api.token(Role.VIEWER)))
        assert "KAFKA_BOOTSTRAP_SERVERS" in problem(answer, 503)["detail"]


async def test_of_two_requests_acting_on_one_entry_only_the_first_records_it(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    place = Place(Topic.APP_CHANGES_DLQ, 1, 7)
    first, second = await asyncpg.connect(fresh_database), await asyncpg.connect(fresh_database)
    try:
        async with first.transaction():
            assert await record_actions(first, TENANT, [place], "replayed", "one", None) == [place]
            # The second request's insert waits for the first to commit, then takes nothing.
            racing = asyncio.create_task(record_actions(second, TENANT, [place], "replayed", "two", None))
            blocked = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            async with asyncio.timeout(30):
                while await first.fetchval(blocked) == 0:  # noqa: ASYNC110 (only the server can tell)
                    await asyncio.sleep(0.01)
            assert not racing.done()
        assert await racing == []
        assert await second.fetchval("SELECT actor FROM dead_letter_actions") == "one"
    finally:
        await first.close()
        await second.close()


async def test_listing_and_replaying_all_select_by_record_and_time(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    """Retrying what Salesforce refused for one record, or since a time: the crm_writes dead letters
    found by any of the record's ids (its link's, its app id, its Salesforce id) or failure time."""
    await prepare_database(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute(
            "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
            " VALUES ($1, 'partners', 'L-a', 'p-a', '001000000000001AAA', 'dx-L-a')",
            TENANT,
        )
    finally:
        await conn.close()
    old, new = "2026-12-01T10:00:00+00:00", "2026-12-07T10:00:00+00:00"
    rejected = [("L-a", old), ("L-a", new), ("L-b", new)]
    async with producer(kafka_bootstrap) as upstream:
        for n, (link, failed_at) in enumerate(rejected):
            await upstream.publish(
                f"command {n}".encode(),
                topic_names(Topic.CRM_WRITES_DLQ),
                key=f"{TENANT}/{link}".encode(),
                partition=0,
                headers={FAILED_AT: failed_at, ERROR_REASON: "REQUIRED_FIELD_MISSING: Name"},
            )
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    async with (
        serving(fresh_database, kafka=kafka) as api,
        TopicReader(kafka_bootstrap, topic_names(Topic.CRM_WRITES)) as writes,
    ):
        viewer, operator = await api.token(Role.VIEWER), await api.token(Role.OPERATOR)

        async def listed(**params: str) -> list[str]:
            answer = await api.http.get(URL, params={"topic": "crm_writes", **params}, headers=bearer(viewer))
            return sorted(e["id"] for e in answer.json()["entries"])

        every = await listed()
        assert len(every) == 3
        # The Salesforce id (15 characters, as a report shows it), the app id and the link id find the same.
        for record in ("001000000000001", "p-a", "L-a"):
            assert await listed(record=record) == every[:2], record
        assert await listed(record="001000000000001", since="2026-12-05T00:00:00Z") == every[1:2]
        assert await listed(since="2026-12-05T00:00:00Z") == every[1:]
        assert problem(await api.http.get(URL, params={"since": "yesterday"}, headers=bearer(viewer)), 422)
        no_zone = {"all": True, "since": "2026-12-05T00:00:00"}
        assert problem(await post(api, "replay", no_zone, operator), 422)
        assert problem(await post(api, "replay", {"ids": [every[0]], "record": "p-a"}, operator), 422)

        retried = await duplex(
            api,
            operator,
            "dead-letters",
            "replay",
            TENANT,
            "--all",
            "--topic",
            "crm_writes",
            "--record",
            "p-a",
            "--since",
            "2026-12-05T00:00:00Z",
            "--json",
        )
        assert retried.exit_code == 0, retried.output
        assert json.loads(retried.stdout) == {"done": every[1:2], "already": []}
        (sent,) = await writes.until(1)
        assert (sent.key, sent.value) == (f"{TENANT}/L-a".encode(), b"command 1")
        assert len(await writes.settle(quiet=1.0)) == 1
