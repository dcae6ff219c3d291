"""``POST /api/v1/tenants/{tenant}/retries`` and ``duplex retry`` against real PostgreSQL and Kafka:
the records whose latest write Salesforce rejected, and only those, are asked of the app on
app-updates, each once per request, with a sync-log row on its link and one audit row; bad requests
are refused and send nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2 as rc
from typer.testing import CliRunner, Result

from services.admin.auth import Role
from services.admin.cli import app as cli
from services.common.settings import KafkaSettings
from services.common.topics import Topic, TopicNames
from tests.e2e.sync.harness import TENANT, TopicReader, decode, prepare_database
from tests.integration.admin_api.harness import Api, bearer, problem, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

URL = f"/api/v1/tenants/{TENANT}/retries"
NOW = datetime.now(UTC)


async def link(api: Api, link_id: str, pair: str, app_id: str | None, crm_id: str | None) -> None:
    await api.db.execute(
        "INSERT INTO links (tenant_id, object_pair, link_id, app_record_id, crm_record_id, external_id)"
        " VALUES ($1, $2, $3, $4, $5, 'dx-' || $3)",
        TENANT,
        pair,
        link_id,
        app_id,
        crm_id,
    )


async def rejected(api: Api, link_id: str, version: int | None, at: datetime) -> None:
    """A rejection as the sync log holds it: the conflict-resolver's row carries the write's version."""
    detail = {"version": version, "errors": []} if version is not None else {"crm_object": "Contact"}
    await api.db.execute(
        "INSERT INTO sync_log (at, tenant_id, service, event, link_id, code, message, detail)"
        " VALUES ($1, $2, $3, 'write.rejected', $4, 'REQUIRED_FIELD_MISSING',"
        " 'Required fields are missing: [LastName]', $5::jsonb)",
        at,
        TENANT,
        "conflict-resolver" if version is not None else "writer",
        link_id,
        json.dumps(detail),
    )


async def seed(api: Api) -> None:
    # c-1: created in the app, its create rejected (and logged by the writer too): to retry.
    await link(api, "l-1", "contacts", "c-1", None)
    await rejected(api, "l-1", None, NOW - timedelta(minutes=5))
    await rejected(api, "l-1", 1, NOW - timedelta(minutes=5))
    # c-2: rejected, then a later write succeeded (the writer applied version 3): nothing to retry.
    await link(api, "l-2", "contacts", "c-2", "003000000000002AAA")
    await rejected(api, "l-2", 2, NOW - timedelta(minutes=4))
    await api.db.execute(
        "INSERT INTO writer_applied_versions (tenant_id, link_id, version) VALUES ($1, 'l-2', 3)", TENANT
    )
    # A Salesforce record the app has not created yet: the app cannot be asked for it.
    await link(api, "l-3", "partners", None, "001000000000003AAA")
    await rejected(api, "l-3", 1, NOW - timedelta(minutes=3))
    # p-4: rejected two days ago.
    await link(api, "l-4", "partners", "p-4", None)
    await rejected(api, "l-4", 1, NOW - timedelta(days=2))


async def duplex(api: Api, token: str, *args: str) -> Result:
    env = {"DUPLEX_SERVER": f"http://127.0.0.1:{api.running.port}", "DUPLEX_TOKEN": token, "COLUMNS": "200"}
    # In a thread: the CLI blocks on HTTP while this event loop serves the API it calls.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


async def post(api: Api, body: dict[str, Any], token: str, tenant: str = TENANT) -> Any:
    return await api.http.post(f"/api/v1/tenants/{tenant}/retries", json=body, headers=bearer(token))


async def test_only_records_still_rejected_are_asked_of_the_app_once_per_request(
    kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str
) -> None:
    await prepare_database(fresh_database)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_names.prefix)
    async with (
        serving(fresh_database, kafka=kafka) as api,
        TopicReader(kafka_bootstrap, topic_names(Topic.APP_UPDATES)) as updates,
    ):
        await seed(api)
        viewer, operator = await api.token(Role.VIEWER), await api.token(Role.OPERATOR, name="on call")
        since = (NOW - timedelta(days=1)).isoformat()

        # Bad requests: a clear 4xx, nothing sent.
        nothing = problem(await post(api, {}, operator), 422)
        assert [e["field"] for e in nothing["errors"]] == ["record", "objectPair", "since"]
        unknown_pair = problem(await post(api, {"objectPair": "nope"}, operator), 422)
        assert [e["field"] for e in unknown_pair["errors"]] == ["objectPair"]
        assert "its pairs: contacts, partners" in unknown_pair["errors"][0]["message"]
        assert problem(await post(api, {"since": since}, viewer), 403)
        assert problem(await post(api, {"since": since}, operator, tenant="nobody"), 404)
        succeeded = problem(await post(api, {"record": "c-2"}, operator), 404)
        assert succeeded["detail"] == "record 'c-2' has nothing to retry: its latest write to Salesforce succeeded"
        assert "'zzz'" in problem(await post(api, {"record": "zzz"}, operator), 404)["detail"]
        assert await updates.settle(quiet=1.0) == []

        answer = await post(api, {"since": since}, operator)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert (body["requested"], [r["linkId"] for r in body["records"]]) == (1, ["l-1"])
        assert body["records"][0] | {"rejectedAt": None} == {
            "objectPair": "contacts",
            "appRecordId": "c-1",
            "salesforceId": None,
            "linkId": "l-1",
            "rejectedAt": None,
            "code": "REQUIRED_FIELD_MISSING",
        }
        assert [(s["linkId"], s["salesforceId"]) for s in body["skipped"]] == [("l-3", "001000000000003AAA")]
        assert "the app has no record of it yet" in body["skipped"][0]["reason"]

        (record,) = await updates.until(1)
        (request,) = decode([record], rc.RecordChanged)
        assert record.key == f"{TENANT}/contacts/c-1".encode()
        assert (request.kind, request.record_id, request.external_id, request.origin_client) == (
            rc.CHANGE_KIND_RESEND,
            "c-1",
            "l-1",
            "",
        )
        logged = await api.db.fetch(
            "SELECT link_id, record_id, service, detail FROM sync_log WHERE event = 'record.resend_requested'"
        )
        assert [(r["link_id"], r["record_id"], r["service"]) for r in logged] == [("l-1", "c-1", "admin-api")]
        assert json.loads(logged[0]["detail"])["event_id"] == request.event_id
        timeline = await api.http.get(f"/api/v1/tenants/{TENANT}/records/c-1/timeline", headers=bearer(viewer))
        assert "record.resend_requested" in [e["event"] for e in timeline.json()["entries"]]
        audit = await api.db.fetch("SELECT actor, detail FROM audit_log WHERE action = 'retries.requested'")
        assert [json.loads(a["detail"])["links"] for a in audit] == [["l-1"]]
        assert audit[0]["actor"].startswith("on call (token ")

        # Asked again (another fix, say), the record is asked for again, under a new event id.
        again = await duplex(api, operator, "retry", TENANT, "--record", "c-1")
        assert again.exit_code == 0, again.output
        assert again.stdout.startswith(f"tenant/{TENANT}: the app was asked to publish 1 record again\n")
        assert "c-1" in again.stdout
        assert "REQUIRED_FIELD_MISSING" in again.stdout
        _, second = decode(await updates.until(2), rc.RecordChanged)
        assert (second.record_id, second.event_id != request.event_id) == ("c-1", True)

        # A pair with nothing to retry since then: no error, nothing sent; the skipped one is told.
        old = await duplex(api, operator, "retry", TENANT, "--pair", "partners", "--since", "1h", "--json")
        assert old.exit_code == 0, old.output
        answered = json.loads(old.stdout)
        assert (answered["requested"], [s["linkId"] for s in answered["skipped"]]) == (0, ["l-3"])
        assert (await duplex(api, operator, "retry", TENANT)).exit_code == 2
        assert (await duplex(api, operator, "retry", TENANT, "--record", "c-2")).exit_code == 3
        assert len(await updates.settle(quiet=1.0)) == 2

        # Without Kafka, nothing is asked or logged.
        async with serving(fresh_database) as without:
            assert problem(await post(without, {"record": "c-1"}, operator), 503)
        rows = await api.db.fetchval("SELECT count(*) FROM sync_log WHERE event = 'record.resend_requested'")
        assert rows == 2
