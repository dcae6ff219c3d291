"""Pause and resume through the CLI and the API: what is paused shows in ``duplex pauses`` and the
health report, every change is audited, and bad input is a clear 4xx that changes nothing.
(The engine's side, holding and releasing in order, is tests/integration/conflict_resolver/test_holding.py
and, end to end, tests/e2e/pipeline/test_pause_resume.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.admin.auth import Role
from tests.integration.admin.conftest import Cli
from tests.integration.admin_api.harness import bearer, problem

pytestmark = pytest.mark.integration


async def test_pause_resume_and_look(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0

    paused = await cli("pause", "acme", "--direction", "to_app", "--reason", "app maintenance")
    assert paused.exit_code == 0, paused.output
    assert "*" in paused.output
    assert "to_app" in paused.output
    assert "app maintenance" in paused.output
    assert (await cli("pause", "acme", "--pair", "PARTNERS", "--direction", "to_crm")).exit_code == 0

    state = json.loads((await cli("pauses", "acme", "--json")).output)
    assert [(p["objectPair"], p["direction"]) for p in state["pauses"]] == [("*", "to_app"), ("partners", "to_crm")]
    assert (state["held"], state["heldInputs"]) == ([], [])
    # What the conflict-resolver keeps of a pair paused both ways (services/conflict_resolver/holding.py).
    await cli.api.db.execute(
        "INSERT INTO held_inputs (tenant_id, object_pair, event_id, message) VALUES ('acme', 'partners', 'e1', '')"
    )
    held = json.loads((await cli("pauses", "acme", "--json")).output)["heldInputs"]
    assert [(h["objectPair"], h["changes"]) for h in held] == [("partners", 1)]
    assert "CHANGES UNDECIDED" in (await cli("pauses", "acme")).output
    await cli.api.db.execute("DELETE FROM held_inputs")
    health = json.loads((await cli("health", "acme", "--json")).output)
    assert len(health["pauses"]) == 2
    assert "PAUSED PAIR" in (await cli("health", "acme")).output

    # The pair cannot be resumed from under the tenant-wide pause: a 409, nothing resumed.
    refused = await cli("resume", "acme", "--pair", "partners", "--direction", "to_app")
    assert refused.exit_code != 0
    assert "for every pair" in refused.output
    assert len(json.loads((await cli("pauses", "acme", "--json")).output)["pauses"]) == 2

    # Resuming the tenant ends every pause of that direction; a viewer may look but not act.
    viewer = await cli.token(Role.VIEWER)
    assert (await cli("resume", "acme", "--direction", "to_crm", token=viewer)).exit_code != 0
    assert (await cli("pauses", "acme", token=viewer)).exit_code == 0
    resumed = await cli("resume", "acme", "--direction", "to_crm")
    assert resumed.exit_code == 0, resumed.output
    assert [p["direction"] for p in json.loads((await cli("pauses", "acme", "--json")).output)["pauses"]] == ["to_app"]
    assert (await cli("resume", "acme")).exit_code == 0
    assert "nothing paused" in (await cli("pauses", "acme")).output

    audit = await cli.api.db.fetch(
        "SELECT action, detail FROM audit_log WHERE action LIKE 'sync.%' ORDER BY at, action"
    )
    assert [a["action"] for a in audit] == ["sync.paused", "sync.paused", "sync.resumed", "sync.resumed"]
    assert json.loads(audit[0]["detail"])["reason"] == "app maintenance"


@pytest.mark.parametrize(
    ("path", "body", "status", "errors"),
    [
        (
            "pause",
            {"objectPair": "invoices"},
            422,
            [
                {
                    "field": "objectPair",
                    "message": "tenant 'acme' has no object pair 'invoices' (its pairs: partner_contacts, partners)",
                }
            ],
        ),
        (
            "pause",
            {"direction": "sideways"},
            422,
            [{"field": "direction", "message": "Input should be 'to_crm', 'to_app' or 'both'"}],
        ),
        ("pause", {"until": "monday"}, 422, None),
        ("resume", {"objectPair": ""}, 422, None),
        ("resume", {"objectPair": "invoices"}, 422, None),
    ],
)
async def test_bad_input_changes_nothing(
    cli: Cli, sample: Path, path: str, body: dict[str, Any], status: int, errors: list[dict[str, str]] | None
) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    before = await cli.api.snapshot()
    answer = await cli.api.http.post(f"/api/v1/tenants/acme/{path}", json=body, headers=bearer(cli.admin))
    found = problem(answer, status)
    if errors is not None:
        assert found["errors"] == errors
    assert await cli.api.snapshot() == before


async def test_an_unknown_tenant_is_a_404(cli: Cli) -> None:
    for method, path in (("GET", "pauses"), ("POST", "pause"), ("POST", "resume")):
        answer = await cli.api.http.request(
            method, f"/api/v1/tenants/nobody/{path}", json={}, headers=bearer(cli.admin)
        )
        problem(answer, 404)
