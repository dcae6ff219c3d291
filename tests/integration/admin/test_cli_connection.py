"""``duplex connection`` against the emulator process (the org) and the API in-process; ``duplex backfill``.

The test plays the browser: it opens the authorize URL the CLI printed (the emulator approves at
once) and hands the callback's query to the API, while the CLI, in a process or a thread, waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import webbrowser
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.emulator import EmulatorProcess
from services.admin.auth import Role
from services.common.salesforce import env_secrets
from tests.integration.admin.conftest import ROOT, Cli
from tests.integration.admin_api.connecting import (
    PUBLIC_URL,
    Org,
    approve,
    browser,
    new_org,
    salesforce_section,
    tenant_document,
)
from tests.integration.admin_api.harness import serving

pytestmark = pytest.mark.integration


@dataclass
class Connecting:
    cli: Cli
    org: Org
    browser: httpx.AsyncClient

    async def play_browser(self, authorize_url: str) -> None:
        """Approve in the org and come back to the API's callback, as the user's browser does."""
        callback = await self.cli.api.http.get(
            "/api/v1/oauth/callback", params=await approve(self.browser, authorize_url)
        )
        assert callback.status_code == 200, callback.text


@pytest.fixture
async def connecting(migrated: str, emulator: EmulatorProcess, tmp_path: Path) -> AsyncIterator[Connecting]:
    org = new_org(emulator)
    secret_env = f"DUPLEX_SECRET_{org.client_id.upper().replace('-', '_')}"
    salesforce = salesforce_section(emulator, org)
    salesforce["auth"]["clientSecret"] = {"secretRef": {"env": secret_env}}
    document = tmp_path / "acme.yaml"
    document.write_text(yaml.safe_dump(tenant_document("acme", salesforce), sort_keys=False))
    async with (
        serving(
            migrated,
            secrets=env_secrets({secret_env: org.client_secret}),
            public_url=PUBLIC_URL,
            salesforce_ca_file=emulator.ca_cert,
        ) as api,
        browser(emulator) as http,
    ):
        cli = Cli(api, f"http://127.0.0.1:{api.running.port}", await api.token(name="cli admin"))
        applied = await cli("config", "apply", "-f", str(document))
        assert applied.exit_code == 0, applied.output
        yield Connecting(cli, org, http)


async def test_connect_status_revoke_reconnect(connecting: Connecting, monkeypatch: pytest.MonkeyPatch) -> None:
    cli, org = connecting.cli, connecting.org
    before = await cli("connection", "status", "acme")
    assert before.exit_code == 0, before.output
    assert before.stdout.splitlines()[:3] == ["tenant        acme", "status        not_connected", "org           -"]

    # As a user runs it: a process that prints the URL, then waits until the browser is done.
    env = {**os.environ, "DUPLEX_SERVER": cli.server, "DUPLEX_TOKEN": cli.admin}
    env.pop("DUPLEX_TOKEN_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.admin", "connection", "connect", "acme",
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
        await connecting.play_browser(url)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert "/services/oauth2/authorize?" in url
    assert out.decode() == f"tenant/acme: connected org {org.org_id} as {org.username}\n"
    assert err.decode().startswith("Open this URL in a browser, log in to the org of tenant/acme and allow access:")
    assert "Traceback" not in err.decode()

    status = await cli("connection", "status", "acme")
    rows = dict(line.split(None, 1) for line in status.stdout.splitlines() if " " in line)
    assert (rows["status"], rows["org"], rows["user"]) == ("connected", org.org_id, org.username)
    assert json.loads((await cli("connection", "status", "acme", "--json")).stdout)["orgId"] == org.org_id

    revoked = await cli("connection", "revoke", "acme")
    assert (revoked.exit_code, revoked.stdout) == (0, "tenant/acme: Salesforce grant revoked (status revoked)\n")

    # Reconnect with --open: the "browser" the CLI launches is the test's.
    loop = asyncio.get_running_loop()
    opened: list[Future[None]] = []

    def open_browser(url: str, *args: Any, **kwargs: Any) -> bool:
        opened.append(asyncio.run_coroutine_threadsafe(connecting.play_browser(url), loop))
        return True

    monkeypatch.setattr(webbrowser, "open", open_browser)
    reconnected = await cli("connection", "connect", "acme", "--open", "--json")
    assert reconnected.exit_code == 0, reconnected.output
    (browsed,) = opened
    browsed.result(timeout=0)
    view = json.loads(reconnected.stdout)
    assert (view["status"], view["orgId"], view["username"]) == ("connected", org.org_id, org.username)


async def test_connect_gives_up_after_its_timeout(connecting: Connecting) -> None:
    result = await connecting.cli("connection", "connect", "acme", "--timeout", "1")
    assert result.exit_code == 1
    assert "/services/oauth2/authorize?" in result.stdout
    assert result.stderr.endswith(
        "error: tenant/acme was not connected within 1s; run `duplex connection connect acme` again\n"
    )


async def test_connection_check_prints_each_check(connecting: Connecting) -> None:
    cli = connecting.cli
    # Not connected yet: the first check (API access) fails, with its fix, and the command exits 1.
    unconnected = await cli("connection", "check", "acme")
    assert unconnected.exit_code == 1, unconnected.output
    lines = unconnected.stdout.splitlines()
    assert lines[0].startswith("✗ ")
    assert "(fix: " in lines[0]
    assert lines[-1].startswith("tenant/acme: ")
    assert lines[-1].endswith("checks failed")
    report = json.loads((await cli("connection", "check", "acme", "--json")).stdout)
    assert (report["tenant"], report["ok"], report["checks"][0]["ok"]) == ("acme", False, False)

    viewer = await cli("connection", "check", "acme", token=await cli.token(Role.VIEWER))
    assert (viewer.exit_code, viewer.stdout) == (3, "")
    hidden = await cli("connection", "check", "acme", token=await cli.token(Role.OPERATOR, ["other"]))
    assert (hidden.exit_code, hidden.stderr) == (3, "error: no tenant 'acme'\n")

    authorize = await cli.api.http.post(
        "/api/v1/tenants/acme/connection:authorize", headers={"authorization": f"Bearer {cli.admin}"}
    )
    await connecting.play_browser(authorize.json()["authorizeUrl"])
    # A narrow terminal: still one line per check.
    connected = await cli("connection", "check", "acme", COLUMNS="60")
    report = json.loads((await cli("connection", "check", "acme", "--json")).stdout)
    lines = connected.stdout.splitlines()
    assert len(lines) == len(report["checks"]) + 1
    assert lines[0].startswith("✓ API access: ")
    # The org has no Duplex_Id__c on Contact: that check fails, with its fix, and so does the command.
    (external_id,) = [line for line in lines if line.startswith("✗ Contact: external id Duplex_Id__c: ")]
    assert "(fix: " in external_id
    failed = [c for c in report["checks"] if not c["ok"]]
    assert (connected.exit_code, report["ok"]) == (1, False)
    assert lines[-1] == f"tenant/acme: {len(failed)} of {len(report['checks'])} checks failed"
    assert [line.startswith("✓ ") for line in lines[:-1]] == [c["ok"] for c in report["checks"]]


async def test_backfill(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    operator = await cli.token(Role.OPERATOR, name="night shift")

    requested = await cli("backfill", "acme", "account", token=operator)
    job = await cli.api.db.fetchval("SELECT id FROM jobs WHERE tenant_id = 'acme' AND kind = 'backfill'")
    assert (requested.exit_code, requested.stdout) == (
        0,
        f"backfill of Account for tenant/acme: job {job} (requested)\n",
    )
    row = await cli.api.db.fetchrow("SELECT object, object_pair, status FROM jobs WHERE tenant_id = 'acme'")
    assert tuple(row) == ("Account", "partners", "requested")
    audit = await cli.api.db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'job.requested'")
    operator_id = await cli.api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'night shift'")
    assert audit["actor"] == f"night shift (token {operator_id})"
    assert json.loads(audit["detail"]) == {"job": job, "kind": "backfill", "object_pair": "partners", "version": 1}
    # Asked again while it waits: the same job, not a second one.
    again = await cli("backfill", "acme", "account")
    assert again.stdout == requested.stdout
    assert await cli.api.db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'job.requested'") == 1

    scripted = await cli("backfill", "acme", "Contact", "--json")
    answer = json.loads(scripted.stdout)
    assert answer == {"tenant": "acme", "object": "Contact", "status": "requested", "job": answer["job"]} != job

    unknown = await cli("backfill", "acme", "Lead")
    assert (unknown.exit_code, unknown.stdout) == (1, "")
    assert unknown.stderr == "error: object: tenant 'acme' does not sync Lead (it syncs Account, Contact)\n"
    viewer = await cli("backfill", "acme", "Account", token=await cli.token(Role.VIEWER))
    assert (viewer.exit_code, viewer.stderr) == (3, "error: the viewer role may not control sync runs\n")
    hidden = await cli("backfill", "acme", "Account", token=await cli.token(Role.OPERATOR, ["other"]))
    assert (hidden.exit_code, hidden.stderr) == (3, "error: no tenant 'acme'\n")


async def test_schema_commands(connecting: Connecting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = connecting.cli
    before = await cli("schema", "objects", "acme")
    assert before.exit_code == 3
    assert "schema:refresh first" in before.output
    unconnected = await cli("schema", "refresh", "acme")
    assert unconnected.exit_code == 1
    assert "error: Duplex cannot sign in to the org of tenant 'acme': " in unconnected.output

    loop = asyncio.get_running_loop()

    def open_browser(url: str, *args: Any, **kwargs: Any) -> bool:
        asyncio.run_coroutine_threadsafe(connecting.play_browser(url), loop)
        return True

    monkeypatch.setattr(webbrowser, "open", open_browser)
    assert (await cli("connection", "connect", "acme", "--open")).exit_code == 0

    refreshed = await cli("schema", "refresh", "acme", "--object", "Lead")
    assert refreshed.exit_code == 0, refreshed.output
    assert refreshed.stdout.splitlines()[0] == "described Account, Contact, Lead (5 API calls)"
    assert "nothing changed since the last read" in refreshed.stdout

    objects = await cli("schema", "objects", "acme", "--kind", "standard")
    assert objects.exit_code == 0, objects.output
    assert {"Account", "Contact", "Lead", "Opportunity"} <= {
        line.split()[0] for line in objects.stdout.splitlines()[1:]
    }
    lead = await cli("schema", "describe", "acme", "Lead")
    rows = {line.split()[0]: line for line in lead.stdout.splitlines()[2:] if line.strip()}
    assert " yes " in rows["Company"]
    assert json.loads((await cli("schema", "describe", "acme", "Lead", "--json")).stdout)["version"] == 1

    # The new org lacks the sample's custom fields: each such rule is reported, paused.
    drift = await cli("schema", "drift", "acme", "--json")
    paused = {w["salesforceField"] for w in json.loads(drift.stdout)["warnings"] if w["paused"]}
    assert {"Partner_Status__c", "Tier__c", "Portal_User__c"} <= paused
    assert "paused until the mapping is fixed" in (await cli("schema", "drift", "acme")).stdout

    matched = await cli("schema", "filter", "acme", "partners", "--soql", "Type = 'Prospect'")
    assert matched.exit_code == 0, matched.output
    assert matched.stdout.startswith("0 Account records match Type = 'Prospect'")
    unknown = await cli("schema", "filter", "acme", "partners", "--soql", "Tpye = 'Prospect'")
    assert unknown.exit_code == 1
    assert "soql: column 1: unknown field 'Tpye' on Account; did you mean Type?" in unknown.output

    proposed = yaml.safe_load((tmp_path / "acme.yaml").read_text())
    proposed["spec"]["objects"][0]["filter"] = {"soql": "Type = 'Prospect'"}
    proposed_file = tmp_path / "proposed.yaml"
    proposed_file.write_text(yaml.safe_dump(proposed))
    planned = await cli("plan", "-f", str(proposed_file))
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.startswith("tenant/acme: compared with version 1; ")
    assert "LEAVING" in planned.stdout
    plans = json.loads((await cli("plan", "-f", str(proposed_file), "--json")).stdout)
    assert [(c["objectPair"], c["change"]) for c in plans[0]["changes"]] == [("partners", "changed")]
    assert json.loads((await cli("config", "show", "acme", "--json")).stdout)["version"] == 1

    declared_file = tmp_path / "partners.yaml"
    declared_file.write_text(
        yaml.safe_dump({"object": "partners", "fields": [{"name": "name", "required": True}, {"name": "tier"}]})
    )
    declared = await cli("schema", "declare", "acme", "-f", str(declared_file))
    assert (declared.exit_code, declared.stdout) == (0, "app object partners: version 1 (2 fields)\n")
    suggested = await cli("schema", "suggest", "acme", "partners")
    assert suggested.exit_code == 0, suggested.output
    statuses = {line.split()[0]: line.split()[1:] for line in suggested.stdout.splitlines()[1:] if line.strip()}
    assert statuses["name"][:2] == ["mapped", "Name"]
    assert json.loads((await cli("schema", "suggest", "acme", "partners", "--json")).stdout)["objectPair"] == "partners"
    declared_file.write_text(yaml.safe_dump({"object": "partners", "fields": [{"name": "n", "type": "text"}]}))
    bad = await cli("schema", "declare", "acme", "-f", str(declared_file))
    assert bad.exit_code == 1
    assert "fields.0.type" in bad.output
    assert "Traceback" not in bad.output
