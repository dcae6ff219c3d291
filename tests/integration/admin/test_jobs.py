"""``/api/v1/tenants/{tenant}/jobs`` and ``duplex run|jobs|job``: asking for a poll, backfill or reconcile
of one pair now, and following jobs to their end (cdc-ingest's part is played by the test, writing
what the worker writes; tests/e2e/pipeline/test_reconcile.py runs the real one)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.admin.auth import Role
from services.common.schema import CrmObject
from services.common.schema_store import save_described
from tests.integration.admin.conftest import Cli
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration

JOBS = "/api/v1/tenants/acme/jobs"


async def test_asking_listing_and_following_jobs(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    operator = bearer(await cli.token(Role.OPERATOR, name="night shift"))
    viewer = bearer(await cli.token(Role.VIEWER))

    asked = await cli.api.http.post(JOBS, json={"kind": "reconcile", "objectPair": "PARTNERS"}, headers=operator)
    assert asked.status_code == 202, asked.text
    job = asked.json()
    assert (job["kind"], job["objectPair"], job["object"], job["status"], job["trigger"]) == (
        "reconcile",
        "partners",
        "Account",
        "requested",
        "operator",
    )
    assert job["requestedBy"].startswith("night shift (token ")
    audit = await cli.api.db.fetchrow("SELECT detail FROM audit_log WHERE action = 'job.requested'")
    assert json.loads(audit["detail"]) == {
        "job": job["id"],
        "kind": "reconcile",
        "object_pair": "partners",
        "version": 1,
    }

    # Asked again while it waits: that job (200), nothing new, nothing audited.
    again = await cli.api.http.post(JOBS, json={"kind": "reconcile", "objectPair": "partners"}, headers=operator)
    assert (again.status_code, again.json()["id"]) == (200, job["id"])
    assert await cli.api.db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'job.requested'") == 1

    backfill = await cli.api.http.post(
        JOBS, json={"kind": "backfill", "objectPair": "partner_contacts"}, headers=operator
    )
    assert backfill.status_code == 202
    # The object's backfill shows as requested until cdc-ingest claims the job and starts it.
    progress = (await cli.api.http.get("/api/v1/tenants/acme/backfills/Contact", headers=viewer)).json()
    assert (progress["status"], progress["published"]) == ("requested", 0)
    # Asked again, as /backfills does too: the same job.
    again_backfill = await cli.api.http.post(
        "/api/v1/tenants/acme/backfills", json={"object": "Contact"}, headers=operator
    )
    assert (again_backfill.status_code, again_backfill.json()["job"]) == (200, backfill.json()["id"])

    listed = (await cli.api.http.get(JOBS, headers=viewer)).json()
    assert [j["id"] for j in listed["jobs"]] == [backfill.json()["id"], job["id"]]
    assert listed["nextBefore"] is None
    first = (await cli.api.http.get(JOBS, params={"limit": 1}, headers=viewer)).json()
    assert [j["id"] for j in first["jobs"]] == [backfill.json()["id"]]
    rest = (await cli.api.http.get(JOBS, params={"limit": 1, "before": first["nextBefore"]}, headers=viewer)).json()
    assert [j["id"] for j in rest["jobs"]] == [job["id"]]
    only = (await cli.api.http.get(JOBS, params={"kind": "backfill"}, headers=viewer)).json()["jobs"]
    assert [j["kind"] for j in only] == ["backfill"]
    assert (await cli.api.http.get(f"{JOBS}/{job['id']}", headers=viewer)).json() == job

    # What cdc-ingest writes while the reconcile runs, then at its end; --wait follows it.
    async def worker() -> None:
        await asyncio.sleep(0.3)
        await cli.api.db.execute(
            "UPDATE jobs SET status = 'running', started_at = now() - interval '10 seconds', done = 100,"
            " estimated = 400, updated_at = now() WHERE id = $1",
            job["id"],
        )
        await asyncio.sleep(1.5)
        result = {"windows": 1, "missingInDuplex": 1, "valuesDiffer": 2, "missingInSalesforce": 0, "published": 3}
        await cli.api.db.execute(
            "UPDATE jobs SET status = 'succeeded', done = 400, result = $2::jsonb, finished_at = now(),"
            " updated_at = now() WHERE id = $1",
            job["id"],
            json.dumps(result),
        )

    running = asyncio.create_task(worker())
    waited = await cli("run", "acme", "reconcile", "partners", "--wait", token=operator["authorization"][7:])
    await running
    assert waited.exit_code == 0, waited.output
    # Requested or already running, depending on how soon the worker above claims it.
    assert waited.stdout.splitlines()[0].startswith(f"reconcile of partners for tenant/acme: job {job['id']} (")
    assert waited.stdout.splitlines()[1].startswith("reconcile of partners done: 400 records (")
    assert waited.stdout.splitlines()[1].endswith(", 3 difference(s), 3 re-read and published")

    table = await cli("jobs", "acme")
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0][:6] == ["JOB", "KIND", "PAIR", "STATUS", "BY", "DONE"]
    assert rows[2][:6] == [str(job["id"]), "reconcile", "partners", "succeeded", "operator", "400"]

    await cli.api.db.execute(
        "UPDATE jobs SET status = 'failed', error = 'SalesforceApiError: REQUEST_LIMIT_EXCEEDED', finished_at = now()"
        " WHERE id = $1",
        backfill.json()["id"],
    )
    failed = await cli("job", "acme", str(backfill.json()["id"]))
    assert failed.exit_code == 1
    assert "failed: SalesforceApiError: REQUEST_LIMIT_EXCEEDED" in failed.stderr


async def test_bad_requests_change_nothing(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    operator = bearer(await cli.token(Role.OPERATOR))

    unknown_pair = await cli.api.http.post(JOBS, json={"kind": "poll", "objectPair": "leads"}, headers=operator)
    errors = problem(unknown_pair, 422)["errors"]
    assert [e["field"] for e in errors] == ["objectPair"]
    assert "has no object pair 'leads' (its pairs: partner_contacts, partners)" in errors[0]["message"]
    unknown_kind = await cli.api.http.post(JOBS, json={"kind": "resync", "objectPair": "partners"}, headers=operator)
    assert [e["field"] for e in problem(unknown_kind, 422)["errors"]] == ["kind"]

    # Account is selected for CDC in the org: nothing to poll.
    await save_described(cli.api.db, "acme", "Account", CrmObject("Account", "Account"), cdc_selected=True)
    streamed = await cli.api.http.post(JOBS, json={"kind": "poll", "objectPair": "partners"}, headers=operator)
    assert "streamed by Change Data Capture" in problem(streamed, 409)["detail"]

    assert (
        problem(await cli.api.http.get(f"{JOBS}/999", headers=operator), 404)["detail"]
        == "tenant 'acme' has no job 999"
    )
    huge = await cli.api.http.get(f"{JOBS}/{2**63}", headers=operator)
    assert [e["field"] for e in problem(huge, 422)["errors"]] == ["path.job_id"]
    viewer = bearer(await cli.token(Role.VIEWER))
    assert problem(await cli.api.http.post(JOBS, json={"kind": "poll", "objectPair": "partners"}, headers=viewer), 403)
    other = bearer(await cli.token(Role.ADMIN, ["other"]))
    assert problem(await cli.api.http.get(JOBS, headers=other), 404)
    assert problem(await cli.api.http.get("/api/v1/tenants/nobody/jobs", headers=bearer(cli.admin)), 404)
    assert await cli.api.db.fetchval("SELECT count(*) FROM jobs") == 0
