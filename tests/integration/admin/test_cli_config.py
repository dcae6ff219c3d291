"""``duplex config`` and ``duplex tenants`` through the admin API (real HTTP, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
import yaml

from services.admin.auth import Role
from services.admin.config_store import ConfigStore
from services.common.tenant_config import (
    TenantNotFoundError,
    config_sha256,
    fetch_config,
    load_current,
    parse_config_file,
    to_document,
)
from tests.integration.admin.conftest import SAMPLE_TEXT, Cli, sample_with

pytestmark = pytest.mark.integration


async def test_apply_show_versions_diff_restore(cli: Cli, tmp_path: Path, sample: Path) -> None:
    (config,) = parse_config_file("tenant-acme.yaml", SAMPLE_TEXT)
    db = cli.api.db

    first = await cli("config", "apply", "-f", str(sample), DUPLEX_ACTOR="mallory")
    assert first.exit_code == 0, first.output
    assert first.stdout == "tenant/acme configured (version 1)\n"
    row = await db.fetchrow("SELECT version, sha256, applied_by FROM config_versions")
    # The token's principal, never the self-asserted DUPLEX_ACTOR.
    token_id = await db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'cli admin'")
    principal = f"cli admin (token {token_id})"
    assert tuple(row) == (1, config_sha256(config), principal)
    assert {r["actor"] for r in await db.fetch("SELECT actor FROM audit_log WHERE tenant_id = 'acme'")} == {principal}

    again = await cli("config", "apply", "-f", str(sample))
    assert (again.exit_code, again.stdout) == (0, "tenant/acme unchanged (version 1)\n")

    shown = await cli("config", "show", "acme")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("# tenant/acme version 1, applied ")
    assert f"by {principal}\n# sha256 {config_sha256(config)}\n" in shown.stdout
    # What `show` prints applies again as it is, unchanged.
    (reparsed,) = parse_config_file("shown.yaml", shown.stdout)
    assert reparsed == config
    shown_file = tmp_path / "shown.yaml"
    shown_file.write_text(shown.stdout)
    assert (await cli("config", "apply", "-f", str(shown_file))).stdout == "tenant/acme unchanged (version 1)\n"

    changed = tmp_path / "acme.yaml"
    changed.write_text(sample_with("dailyApiCap: 5000", "dailyApiCap: 7000"))
    second = await cli("config", "apply", "-f", str(changed), "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout) == [
        {"name": "acme", "version": 2, "changed": True, "created": False, "warnings": []}
    ]

    as_json = json.loads((await cli("config", "show", "acme", "--json")).stdout)
    assert (as_json["version"], as_json["document"]["spec"]["salesforce"]["dailyApiCap"]) == (2, 7000)
    old = await cli("config", "show", "acme", "--version", "1")
    assert yaml.safe_load(old.stdout)["spec"]["salesforce"]["dailyApiCap"] == 5000

    listed = await cli("config", "versions", "acme")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "APPLIED", "APPLIED", "BY", "SHA256"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert principal in lines[1]
    versions = json.loads((await cli("config", "versions", "acme", "--json")).stdout)
    assert [v["version"] for v in versions["items"]] == [1, 2]

    diff = await cli("config", "diff", "acme", "1", "2")
    assert diff.exit_code == 0, diff.output
    assert diff.stdout.splitlines()[0].split() == ["PATH", "CHANGE", "VERSION", "1", "VERSION", "2"]
    assert diff.stdout.splitlines()[1].split() == ["spec.salesforce.dailyApiCap", "changed", "5000", "7000"]
    unified = await cli("config", "diff", "acme", "1", "--unified")
    assert unified.stdout.startswith("--- acme v1\n+++ acme v2\n")
    assert "\n-    dailyApiCap: 5000\n+    dailyApiCap: 7000\n" in unified.stdout
    changes = json.loads((await cli("config", "diff", "acme", "1", "--json")).stdout)["changes"]
    assert changes == [{"path": "spec.salesforce.dailyApiCap", "change": "changed", "before": 5000, "after": 7000}]
    same = await cli("config", "diff", "acme", "2", "2")
    assert same.stdout == "tenant/acme: versions 2 and 2 are the same\n"

    restored = await cli("config", "restore", "acme", "1")
    assert (restored.exit_code, restored.stdout) == (0, "tenant/acme version 1 restored as version 3\n")
    assert await load_current(db, "acme") == config
    repeat = await cli("config", "restore", "acme", "3")
    assert repeat.stdout == "tenant/acme unchanged: the current version (3) equals version 3\n"


async def test_several_documents_are_validated_before_any_is_stored(cli: Cli, tmp_path: Path, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    before = await cli.api.snapshot()

    beta = sample_with("\n  name: acme\n", "\n  name: beta\n")
    broken = sample_with("dailyApiCap: 5000", "dailyApiCap: 6000").replace(
        "conflictPolicy: app_wins", "conflictPolicy: app-wins", 1
    )
    path = tmp_path / "tenants.yaml"
    # Document 1 is valid (a new tenant, beta) and document 2 (a change to acme) is not.
    path.write_text(f"{beta}\n---\n{broken}")
    result = await cli("config", "apply", "-f", str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: document 2: spec.objects[0].fields[3].conflictPolicy: must be one of app_wins, "
        "crm_wins, newest_wins, app_unless_blank, crm_unless_blank (got 'app-wins')\n"
    )
    assert await cli.api.snapshot() == before

    # Valid as a document, refused by the server's policy: its problem document, field by field.
    evil = sample_with("https://login.salesforce.com", "https://login.evil.example").replace(
        "https://acme.my.salesforce.com", "https://acme.evil.example", 1
    )
    path.write_text(f"{beta}\n---\n{evil}")
    refused = await cli("config", "apply", "-f", str(path))
    assert refused.exit_code == 1
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert [line.split(": ")[:3] for line in lines] == [
        ["error", str(path), "document 2"],
        ["error", str(path), "document 2"],
    ]
    assert lines[0].startswith(
        f"error: {path}: document 2: spec.salesforce.instanceUrl: acme.evil.example is not a Salesforce host"
    )
    assert lines[1].startswith(
        f"error: {path}: document 2: spec.salesforce.loginUrl: login.evil.example is not a Salesforce host"
    )
    assert await cli.api.snapshot() == before

    both = tmp_path / "both.yaml"
    both.write_text(f"{beta}\n---\n{sample_with('dailyApiCap: 5000', 'dailyApiCap: 6000')}")
    applied = await cli("config", "apply", "-f", str(both))
    assert applied.exit_code == 0, applied.output
    assert applied.stdout == "tenant/beta configured (version 1)\ntenant/acme configured (version 2)\n"


async def test_a_refusal_midway_says_what_was_stored(cli: Cli, tmp_path: Path) -> None:
    scoped = await cli.token(Role.ADMIN, ["beta"], name="beta admin")
    path = tmp_path / "tenants.yaml"
    path.write_text(f"{sample_with('  name: acme', '  name: beta')}\n---\n{SAMPLE_TEXT}")

    result = await cli("config", "apply", "-f", str(path), token=scoped)

    # acme is outside the token's scope: it looks like a tenant that does not exist.
    assert result.exit_code == 3
    assert result.stdout == "tenant/beta configured (version 1)\n"
    assert result.stderr == f"error: {path}: document 2: no tenant 'acme'\n"
    assert [r["id"] for r in await cli.api.db.fetch("SELECT id FROM tenants")] == ["beta"]


async def test_show_unknown_tenant_or_version_exits_3(cli: Cli, sample: Path) -> None:
    missing = await cli("config", "show", "nobody")
    assert (missing.exit_code, missing.stdout, missing.stderr) == (3, "", "error: no tenant 'nobody'\n")
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    no_version = await cli("config", "show", "acme", "--version", "9")
    assert (no_version.exit_code, no_version.stderr) == (3, "error: tenant 'acme' has no version 9\n")
    bad_restore = await cli("config", "restore", "acme", "9")
    assert (bad_restore.exit_code, bad_restore.stderr) == (3, "error: tenant 'acme' has no version 9\n")


async def test_tenants_list_and_delete(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0
    assert (await cli("config", "apply", "-f", "-", stdin=sample_with("  name: acme", "  name: zeta"))).exit_code == 0

    table = await cli("tenants", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "APPLIED", "APPLIED", "BY"]
    assert [line.split()[:2] for line in lines[1:]] == [["acme", "1"], ["zeta", "1"]]
    scoped = await cli("tenants", "list", "--json", token=await cli.token(Role.VIEWER, ["zeta"]))
    assert [t["name"] for t in json.loads(scoped.stdout)["items"]] == ["zeta"]

    declined = await cli("tenants", "delete", "zeta", stdin="n\n")
    assert declined.exit_code == 1
    assert declined.stderr.startswith("Delete tenant zeta? Every service stops syncing it")
    assert declined.stderr.endswith("error: tenant/zeta not deleted\n")
    assert await cli.api.db.fetchval("SELECT deleted_at FROM tenants WHERE id = 'zeta'") is None

    confirmed = await cli("tenants", "delete", "zeta", stdin="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    # The runner echoes the typed answer to stdout, as a terminal would show it.
    assert confirmed.stdout.endswith("tenant/zeta deleted\n")
    assert await cli.api.db.fetchval("SELECT deleted_at FROM tenants WHERE id = 'zeta'") is not None
    gone = await cli("tenants", "delete", "zeta", "--yes")
    assert (gone.exit_code, gone.stderr) == (3, "error: no tenant 'zeta'\n")
    scripted = await cli("tenants", "delete", "acme", "--yes", "--json")
    assert json.loads(scripted.stdout) == {"name": "acme", "deleted": True}
    assert json.loads((await cli("tenants", "list", "--json")).stdout) == {"items": []}


async def test_services_load_what_the_cli_applied(cli: Cli, tmp_path: Path, sample: Path) -> None:
    db = cli.api.db
    with pytest.raises(TenantNotFoundError):
        await load_current(db, "acme")
    await cli("config", "apply", "-f", str(sample))
    changed = tmp_path / "acme.yaml"
    changed.write_text(sample_with("pollIntervalSeconds: 30", "pollIntervalSeconds: 60"))
    await cli("config", "apply", "-f", str(changed))

    current = await load_current(db, "acme")
    assert current.spec.sync.poll_interval_seconds == 60
    first = await fetch_config(db, "acme", 1)
    assert first is not None
    assert (first.version, first.config.spec.sync.poll_interval_seconds) == (1, 30)
    assert to_document(first.config)["spec"]["sync"]["pollIntervalSeconds"] == 30
    assert await fetch_config(db, "acme", 3) is None


async def test_concurrent_applies_to_one_tenant_take_distinct_versions(migrated: str) -> None:
    (sample,) = parse_config_file("tenant-acme.yaml", SAMPLE_TEXT)
    count = 8
    variants = [
        sample.model_copy(
            update={
                "spec": sample.spec.model_copy(
                    update={"salesforce": sample.spec.salesforce.model_copy(update={"daily_api_cap": 1000 + i})}
                )
            }
        )
        for i in range(count)
    ]
    connections = [await asyncpg.connect(migrated) for _ in range(count)]
    try:
        results = await asyncio.gather(
            *(
                ConfigStore(conn).apply([variant], f"worker-{i}")
                for i, (conn, variant) in enumerate(zip(connections, variants, strict=True))
            )
        )
        # The same document from every connection at once: exactly one of them stores it.
        repeats = await asyncio.gather(*(ConfigStore(conn).apply([sample], "again") for conn in connections))
        stored = await connections[0].fetch("SELECT version FROM config_versions ORDER BY version")
        applied = await connections[0].fetchval("SELECT count(*) FROM audit_log WHERE action = 'config.applied'")
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))

    assert sorted(r.version for (r,) in results) == list(range(1, count + 1))
    assert all(r.changed for (r,) in results)
    assert [r.changed for (r,) in repeats].count(True) == 1
    assert {r.version for (r,) in repeats} == {count + 1}
    assert [r["version"] for r in stored] == list(range(1, count + 2))
    assert applied == count + 1
