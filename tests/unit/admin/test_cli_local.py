"""The `duplex` CLI with neither a server nor a database: offline validation, usage errors, and every
refusal that must come before anything is contacted."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services.admin.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
# The sample tenant, its secret variable under the prefix the default policy allows.
SAMPLE = re.sub(
    r"(secretRef: \{env: )(?!DUPLEX_SECRET_)(\w+)",
    r"\1DUPLEX_SECRET_\2",
    (ROOT / "deploy" / "examples" / "tenant-acme.yaml").read_text(),
)
BROKEN = SAMPLE.replace("conflictPolicy: app_wins", "conflictPolicy: app-wins", 1)
# No variable of the machine running the tests may leak in; COLUMNS keeps rich from wrapping.
CLEAN_ENV: dict[str, str | None] = {
    "DUPLEX_SERVER": None,
    "DUPLEX_TOKEN": None,
    "DUPLEX_TOKEN_FILE": None,
    "DUPLEX_ACTOR": None,
    "DUPLEX_SECRET_ENV_PREFIX": None,
    "DUPLEX_SALESFORCE_HOSTS": None,
    "DUPLEX_DEVELOPMENT": None,
    "POSTGRES_DSN": None,
    "COLUMNS": "200",
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# Where nothing listens: a command that got as far as the network would exit 4.
NOWHERE = f"http://127.0.0.1:{closed_port()}"


def duplex(*args: str, stdin: str | None = None, **env: str | None) -> Result:
    return CliRunner().invoke(app, list(args), env={**CLEAN_ENV, **env}, input=stdin)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "tenant-acme.yaml"
    path.write_text(SAMPLE)
    return path


def test_validate_sample(sample: Path) -> None:
    result = duplex("config", "validate", "-f", str(sample))
    assert result.exit_code == 0, result.output
    assert result.stdout == "tenant/acme valid (2 object pairs, 22 fields)\n"


def test_validate_reads_stdin() -> None:
    result = duplex("config", "validate", "-f", "-", stdin=SAMPLE)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tenant/acme valid")


def test_validate_warns_of_an_api_version_newer_than_duplex_knows(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(SAMPLE.replace('apiVersion: "62.0"', 'apiVersion: "99.0"', 1))
    result = duplex("config", "validate", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("tenant/acme valid")
    warning = f"warning: {path}: spec.salesforce.apiVersion: 99.0 is newer than the latest Salesforce API version"
    assert result.stderr.startswith(warning)


def test_validate_broken_file_exits_1_naming_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(BROKEN)
    result = duplex("config", "validate", "-f", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {path}: spec.objects[0].fields[3].conflictPolicy: must be one of app_wins, crm_wins, "
        "newest_wins, app_unless_blank, crm_unless_blank (got 'app-wins')\n"
    )


def test_validate_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("apiVersion: duplex.dev/v1\nkind: [Tenant\n")
    result = duplex("config", "validate", "-f", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: line 3, column 1: invalid YAML: ")
    assert "Traceback" not in result.output


def test_validate_applies_the_deployments_policy_as_the_api_does(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(
        SAMPLE.replace("DUPLEX_SECRET_ACME_SF_CLIENT_SECRET", "POSTGRES_DSN", 1).replace(
            "https://login.salesforce.com", "http://localhost:8443", 1
        )
    )
    refused = duplex("config", "validate", "-f", str(path))
    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: {path}: spec.salesforce.loginUrl: localhost is only allowed when the deployment is for development"
        " (DUPLEX_DEVELOPMENT=true)",
        f"error: {path}: spec.salesforce.auth.clientSecret.secretRef.env: names a variable outside DUPLEX_SECRET_*,"
        " the prefix this deployment allows for tenant secrets; rename the variable to DUPLEX_SECRET_POSTGRES_DSN",
    ]
    # The same document, judged by a development deployment that allows every variable.
    allowed = duplex("config", "validate", "-f", str(path), DUPLEX_SECRET_ENV_PREFIX="", DUPLEX_DEVELOPMENT="true")
    assert allowed.exit_code == 0, allowed.output
    unreadable = duplex("config", "validate", "-f", str(path), DUPLEX_DEVELOPMENT="sometimes")
    assert unreadable.exit_code == 2
    assert unreadable.stderr.startswith("error: DUPLEX_DEVELOPMENT: ")


def test_an_unreadable_file_exits_1() -> None:
    result = duplex("config", "validate", "-f", "/nonexistent/tenant.yaml")
    assert result.exit_code == 1
    assert result.stderr == "error: /nonexistent/tenant.yaml: cannot read: No such file or directory\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "validate"], "Missing option '--filename' / '-f'"),
        (["config", "apply", "-f", "x.yaml", "--dsn", "x"], "No such option: --dsn"),
        (["config", "show", "acme", "--version", "0"], "Invalid value for '--version'"),
        (["config", "diff", "acme"], "Missing argument 'A'"),
        (["tenant", "list"], "No such command 'tenant'"),
        (["connection", "connect", "acme", "--timeout", "0"], "Invalid value for '--timeout'"),
        (["tokens", "create", "--name", "x", "--role", "root"], "'root' is not one of"),
        (["tokens", "create", "--name", "x", "--role", "admin", "--dsn", "postgresql:///x"], "only with --bootstrap"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = duplex(*args, DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_x")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "errors"),
    [
        (
            ["--name", "x", "--role", "admin", "--tenant", "acme", "--tenant", "Bad_Name"],
            ["--tenant 'Bad_Name': must be a lowercase DNS label"],
        ),
        (["--name", "x", "--role", "viewer", "--expires-in", "1y"], ["--expires-in: must be a whole number of hours"]),
        (["--name", "", "--role", "viewer"], ["--name: String should have at least 1 character"]),
    ],
)
@pytest.mark.parametrize("mode", [[], ["--bootstrap"]])
def test_tokens_create_refuses_bad_flags_before_anything_is_contacted(
    args: list[str], errors: list[str], mode: list[str]
) -> None:
    result = duplex("tokens", "create", *mode, *args, DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_x")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(errors)
    for line, error in zip(lines, errors, strict=True):
        assert line.startswith(f"error: {error}")


@pytest.mark.parametrize(
    "args",
    [
        ["tokens", "create", "--bootstrap", "--name", "x", "--role", "admin"],
        ["serve"],
        ["migrate"],
    ],
)
def test_local_bootstrap_needs_a_database(args: list[str]) -> None:
    result = duplex(*args)
    assert result.exit_code == 2
    assert result.stderr == "error: no database configured: set POSTGRES_DSN or pass --dsn\n"


def test_apply_rejects_an_invalid_file_before_calling_the_api(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(BROKEN)
    result = duplex("config", "apply", "-f", str(path), DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_x")
    assert result.exit_code == 1
    assert "spec.objects[0].fields[3].conflictPolicy" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["tenants", "list"],
        ["config", "show", "acme"],
        ["connection", "check", "acme"],
        ["backfill", "acme", "Account"],
        ["tokens", "create", "--name", "x", "--role", "viewer"],
    ],
)
def test_api_commands_without_a_token_exit_3_before_calling(args: list[str]) -> None:
    result = duplex(*args, DUPLEX_SERVER=NOWHERE)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == (
        "error: no API token: set DUPLEX_TOKEN, or DUPLEX_TOKEN_FILE / --token-file to a file only you can read\n"
    )


def test_an_unsafe_token_file_is_refused_before_calling(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("dpx_never-shown\n")
    path.chmod(0o644)
    result = duplex("--token-file", str(path), "tenants", "list", DUPLEX_SERVER=NOWHERE)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: token file {path}: readable or writable by others (mode 0644); run: chmod 600 {path}\n"
    )
    assert "never-shown" not in result.output


def test_an_unreachable_server_is_exit_4() -> None:
    result = duplex("tenants", "list", DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_never-shown")
    assert result.exit_code == 4
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach the admin API at {NOWHERE}: ")
    assert len(result.stderr.splitlines()) == 1
    assert "never-shown" not in result.output


def test_a_bad_server_url_is_a_usage_error() -> None:
    result = duplex("--server", "localhost:8080", "tenants", "list", DUPLEX_TOKEN="dpx_x")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --server / DUPLEX_SERVER: must be an http(s) URL such as ")


def test_tenants_delete_asks_first() -> None:
    # Declined (or no answer): nothing is sent, not even to a server that is not there.
    declined = duplex("tenants", "delete", "acme", stdin="n\n", DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_x")
    assert declined.exit_code == 1
    assert declined.stderr.startswith("Delete tenant acme? ")
    assert declined.stderr.endswith("error: tenant/acme not deleted\n")
    confirmed = duplex("tenants", "delete", "acme", stdin="y\n", DUPLEX_SERVER=NOWHERE, DUPLEX_TOKEN="dpx_x")
    assert confirmed.exit_code == 4
