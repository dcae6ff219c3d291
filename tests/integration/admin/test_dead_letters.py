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
from typer.testing import CliRunner

from services.admin.auth import Role
from services.admin.cli import app as cli
from services.admin.config_store import ConfigStore
from services.common.change import ChangeKind, Side
from services.common.codec import record_key
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

        discarded = await post(api, "discard", {"ids": [b], "reason": "test data"}, operator)
        assert discarded.json() == {"done": [b], "already": []}
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
        everything = await post(api, "replay", {"all": True}, operator)
        assert everything.json() == {"done": [], "already": []}
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

        env = {"DUPLEX_SERVER": f"http://127.0.0.1:{api.running.port}", "DUPLEX_TOKEN": viewer, "COLUMNS": "200"}
        # In a thread: the CLI blocks on HTTP while this event loop serves the API it calls.
        shown = await asyncio.to_thread(CliRunner().invoke, cli, ["dead-letters", "list", TENANT], env=env)
        assert shown.exit_code == 0, shown.output
        assert a in shown.output
        assert "discarded" in shown.output


async def test_without_kafka_the_routes_say_so(fresh_database: str) -> None:
    await prepare_database(fresh_database)
    async with serving(fresh_database, kafka=None) as api:
        answer = await api.http.get(URL, headers=bearer(await api.token(Role.VIEWER)))
        assert "KAFKA_BOOTSTRAP_SERVERS" in problem(answer, 503)["detail"]
