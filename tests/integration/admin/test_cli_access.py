"""Who the CLI is to the API: tokens over the API and by local bootstrap, token files, and the exit
code of every way a call can be refused or fail."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.admin.auth import Role
from tests.integration.admin.conftest import ROOT, Cli

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_tokens_create_list_revoke_through_the_api(cli: Cli) -> None:
    created = await cli("tokens", "create", "--name", "ci deploy", "--role", "operator", "--tenant", "acme")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert created.stdout == f"{token}\n"
    assert token.startswith("dpx_")
    assert created.stderr.startswith("token/ci deploy created (id ")
    assert "operator, tenants acme, never expires); shown once" in created.stderr
    cli_admin = await cli.api.db.fetchval("SELECT id::text FROM api_tokens WHERE name = 'cli admin'")
    audit = await cli.api.db.fetchrow("SELECT actor, request_id FROM audit_log ORDER BY id DESC LIMIT 1")
    assert audit["actor"] == f"cli admin (token {cli_admin})"
    assert audit["request_id"]

    scripted = json.loads((await cli("tokens", "create", "--name", "bot", "--role", "viewer", "--json")).stdout)
    assert (scripted["name"], scripted["role"], scripted["tenants"]) == ("bot", "viewer", None)
    assert scripted["token"].startswith("dpx_")

    listed = await cli("tokens", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "TENANTS", "EXPIRES", "LAST", "USED", "STATE"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert "operator" in listed.stdout
    assert rows["bot"].split()[2:4] == ["viewer", "all"]
    # No secret is ever listed, not even part of one.
    for secret in (token, scripted["token"], cli.admin):
        assert secret[4:12] not in listed.stdout
    items = json.loads((await cli("tokens", "list", "--json")).stdout)["items"]
    (ci,) = [t for t in items if t["name"] == "ci deploy"]
    assert "token" not in ci

    # The new operator token works (it sees acme only), until it is revoked.
    assert (await cli("tenants", "list", token=token)).exit_code == 0
    revoked = await cli("tokens", "revoke", ci["id"])
    assert (revoked.exit_code, revoked.stdout) == (0, f"token/{ci['id']} revoked\n")
    refused = await cli("tenants", "list", token=token)
    assert refused.exit_code == 3
    assert refused.stderr == "error: the bearer token is invalid, expired or revoked (the token from DUPLEX_TOKEN)\n"
    assert token not in refused.output
    state = json.loads((await cli("tokens", "list", "--json")).stdout)["items"]
    assert [t["revokedAt"] is not None for t in state if t["id"] == ci["id"]] == [True]
    unknown = await cli("tokens", "revoke", "00000000-0000-0000-0000-000000000000")
    assert (unknown.exit_code, unknown.stderr) == (3, "error: no token '00000000-0000-0000-0000-000000000000'\n")


async def test_bootstrap_writes_the_first_token_to_the_database(cli: Cli) -> None:
    args = ["tokens", "create", "--bootstrap", "--name", "first", "--role", "admin", "--expires-in", "12h"]
    result = await cli(*args, "--dsn", cli.api.dsn, token="", DUPLEX_SERVER=f"http://127.0.0.1:{closed_port()}")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("dpx_")
    assert result.stderr.startswith("token/first created (id ")
    assert "admin, every tenant, expires " in result.stderr
    assert (await cli("tenants", "list", token=token)).exit_code == 0

    # No principal exists yet: the audit log names who ran it, as they say (DUPLEX_ACTOR, else user@host).

    as_ops = await cli(
        "tokens", "create", "--bootstrap", "--name", "ops", "--role", "viewer", "--json",
        token="", DUPLEX_ACTOR="ops@host", POSTGRES_DSN=cli.api.dsn,
    )  # fmt: skip
    assert as_ops.exit_code == 0, as_ops.output
    assert json.loads(as_ops.stdout)["createdBy"] == "ops@host"
    actor = await cli.api.db.fetchval("SELECT actor FROM audit_log WHERE detail->>'name' = 'ops'")
    assert actor == "ops@host"

    no_bootstrap = await cli("tokens", "create", "--name", "x", "--role", "admin", "--dsn", cli.api.dsn)
    assert no_bootstrap.exit_code == 2
    assert "--dsn" in no_bootstrap.stderr
    assert "only with --bootstrap" in no_bootstrap.stderr


async def test_refusals_map_to_exit_codes(cli: Cli, sample: Path) -> None:
    assert (await cli("config", "apply", "-f", str(sample))).exit_code == 0

    forged = await cli("config", "show", "acme", token="dpx_" + "x" * 43)
    assert (forged.exit_code, forged.stdout) == (3, "")
    assert forged.stderr == "error: the bearer token is invalid, expired or revoked (the token from DUPLEX_TOKEN)\n"

    elsewhere = await cli.token(Role.ADMIN, ["elsewhere"])
    hidden = await cli("config", "show", "acme", token=elsewhere)
    # Out of scope reads exactly as missing: the name does not leak.
    assert (hidden.exit_code, hidden.stderr) == (3, "error: no tenant 'acme'\n")
    assert (await cli("config", "show", "nobody", token=elsewhere)).stderr == "error: no tenant 'nobody'\n"

    viewer = await cli.token(Role.VIEWER)
    forbidden = await cli("config", "restore", "acme", "1", token=viewer)
    assert (forbidden.exit_code, forbidden.stderr) == (3, "error: the viewer role may not change configuration\n")

    no_token = await cli("tenants", "list", token="")
    assert no_token.exit_code == 3
    assert no_token.stderr.startswith("error: no API token: set DUPLEX_TOKEN, or DUPLEX_TOKEN_FILE")


async def test_a_token_file_only_its_owner_can_read(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(cli.admin + "\n")
    path.chmod(0o644)

    loose = await cli("tenants", "list", token="", DUPLEX_TOKEN_FILE=str(path))
    assert loose.exit_code == 1
    assert loose.stderr == (
        f"error: token file {path}: readable or writable by others (mode 0644); run: chmod 600 {path}\n"
    )
    assert cli.admin not in loose.output

    path.chmod(0o600)
    from_env = await cli("tenants", "list", "--json", token="", DUPLEX_TOKEN_FILE=str(path))
    assert (from_env.exit_code, json.loads(from_env.stdout)) == (0, {"items": []})
    # The flag wins over DUPLEX_TOKEN, which wins over DUPLEX_TOKEN_FILE.
    flag = await cli("--token-file", str(path), "tenants", "list", token="dpx_forged")
    assert flag.exit_code == 0, flag.output
    env = await cli("tenants", "list", token="dpx_forged", DUPLEX_TOKEN_FILE=str(path))
    assert env.exit_code == 3
    path.write_text("dpx_forged\n")
    wrong = await cli("--token-file", str(path), "tenants", "list")
    assert wrong.stderr == (
        f"error: the bearer token is invalid, expired or revoked (the token from token file {path})\n"
    )
    assert "dpx_forged" not in wrong.output


def test_an_unreachable_server_is_exit_4_in_one_line() -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "services.admin", "--server", server, "tenants", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DUPLEX_TOKEN": "dpx_secret-never-shown"},
    )
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach the admin API at {server}: ")
    assert len(result.stderr.splitlines()) == 1
    assert "secret-never-shown" not in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_server_that_is_not_the_api_is_said_so(cli: Cli) -> None:
    # The API answers, but it has no paths under another base URL: a bare 404 problem.
    wrong_base = await cli("tenants", "list", DUPLEX_SERVER=cli.server + "/nested")
    assert wrong_base.exit_code == 3
    assert wrong_base.stderr == (
        f"error: GET /nested/api/v1/tenants: no such route at {cli.server}/nested"
        " (is the server older than this CLI?)\n"
    )
    bad_url = await cli("tenants", "list", DUPLEX_SERVER="ftp://example.com")
    assert bad_url.exit_code == 2
    assert bad_url.stderr.startswith("error: --server / DUPLEX_SERVER: must be an http(s) URL such as ")
