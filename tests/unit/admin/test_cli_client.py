"""The CLI's API client without a server: settings, the token and its file, problem documents."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from services.admin.client import (
    ApiProblemError,
    ClientSettings,
    CredentialError,
    FieldProblem,
    _problem,
    credential,
    load_client_settings,
    read_token_file,
    sends_token_in_clear,
)

pytestmark = pytest.mark.unit

TOKEN = "dpx_s3cr3t-token-value"
SERVER = "http://admin.test"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DUPLEX_SERVER", "DUPLEX_TOKEN", "DUPLEX_TOKEN_FILE", "DUPLEX_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)


def token_file(tmp_path: Path, mode: int, text: str = TOKEN + "\n") -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_token_file_only_its_owner_can_read_is_used(tmp_path: Path, mode: int) -> None:
    assert read_token_file(token_file(tmp_path, mode)).get_secret_value() == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, mode)
    with pytest.raises(CredentialError) as refused:
        read_token_file(path)
    assert str(refused.value) == (
        f"token file {path}: readable or writable by others (mode {mode:04o}); run: chmod 600 {path}"
    )
    assert not refused.value.missing


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        (f"{TOKEN} {TOKEN}\n", "must hold the token alone, on one line"),
        (f"{TOKEN}\nsecond line\n", "must hold the token alone, on one line"),
    ],
)
def test_a_token_file_must_hold_one_token(tmp_path: Path, text: str, problem: str) -> None:
    path = token_file(tmp_path, 0o600, text)
    with pytest.raises(CredentialError) as refused:
        read_token_file(path)
    assert str(refused.value) == f"token file {path}: {problem}"
    # Whatever the file holds is never repeated.
    assert TOKEN not in str(refused.value)


def test_a_token_file_that_is_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"token file .*/absent: cannot read: No such file or directory"):
        read_token_file(tmp_path / "absent")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CredentialError, match="not a regular file"):
        read_token_file(directory)


def test_duplex_token_wins_over_the_file_variable_and_the_flag_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = token_file(tmp_path, 0o600, "dpx_from-file\n")
    monkeypatch.setenv("DUPLEX_TOKEN", " dpx_from-env \n")
    monkeypatch.setenv("DUPLEX_TOKEN_FILE", str(path))
    from_env = credential(load_client_settings())
    assert (from_env.secret.get_secret_value(), from_env.source) == ("dpx_from-env", "DUPLEX_TOKEN")
    flagged = credential(load_client_settings(token_file=path))
    assert (flagged.secret.get_secret_value(), flagged.source) == ("dpx_from-file", f"token file {path}")
    monkeypatch.setenv("DUPLEX_TOKEN", "")
    assert credential(load_client_settings()).secret.get_secret_value() == "dpx_from-file"


def test_no_token_at_all() -> None:
    with pytest.raises(CredentialError) as missing:
        credential(ClientSettings())
    assert missing.value.missing
    assert str(missing.value).startswith("no API token: set DUPLEX_TOKEN")


def test_the_token_never_shows_in_the_settings() -> None:
    settings = ClientSettings(token=SecretStr(TOKEN))
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)


@pytest.mark.parametrize(
    ("given", "server"),
    [
        (None, "http://127.0.0.1:8080"),
        ("https://duplex.example.com/", "https://duplex.example.com"),
        (" http://[::1]:9000 ", "http://[::1]:9000"),
        ("https://gateway.example.com/duplex/", "https://gateway.example.com/duplex"),
    ],
)
def test_server_urls(given: str | None, server: str) -> None:
    assert load_client_settings(server=given).server == server


@pytest.mark.parametrize("given", ["ftp://example.com", "localhost:8080", "https://", "https://x.example.com/?a=1"])
def test_server_urls_refused(given: str) -> None:
    with pytest.raises(ValidationError, match="must be an http\\(s\\) URL"):
        load_client_settings(server=given)


@pytest.mark.parametrize(
    ("server", "clear"),
    [
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
        ("https://duplex.example.com", False),
        ("http://duplex.example.com", True),
        ("http://10.0.0.5:8080", True),
    ],
)
def test_a_token_sent_in_clear_over_the_network(server: str, clear: bool) -> None:
    assert sends_token_in_clear(server) is clear


def answer(status: int, body: bytes, content_type: str, path: str = "/api/v1/tenants/acme") -> httpx.Response:
    request = httpx.Request("PUT", SERVER + path)
    return httpx.Response(status, content=body, headers={"content-type": content_type}, request=request)


def test_a_problem_document_with_its_fields() -> None:
    body = (
        b'{"type": "urn:duplex:problem:invalid-document", "title": "Invalid tenant document", "status": 422,'
        b' "detail": "the document has 1 problem; see errors", "requestId": "r1",'
        b' "errors": [{"field": "spec.salesforce.loginUrl", "message": "evil.example is not a Salesforce host"}]}'
    )
    problem = _problem(SERVER, answer(422, body, "application/problem+json"))
    assert isinstance(problem, ApiProblemError)
    assert (problem.status, problem.type, problem.request_id) == (422, "urn:duplex:problem:invalid-document", "r1")
    assert problem.errors == (FieldProblem("spec.salesforce.loginUrl", "evil.example is not a Salesforce host"),)
    assert str(problem) == "the document has 1 problem; see errors"


def test_an_answer_that_is_not_a_problem_document() -> None:
    proxy = _problem(SERVER, answer(502, b"<html>Bad Gateway</html>", "text/html"))
    assert (proxy.status, proxy.errors) == (502, ())
    assert str(proxy) == f"Bad Gateway (HTTP 502 without a problem document: is {SERVER} the Duplex admin API?)"
    not_found = b'{"type": "about:blank", "title": "Not Found", "status": 404}'
    bare = _problem(SERVER, answer(404, not_found, "application/problem+json", "/api/v1/x"))
    assert str(bare) == f"PUT /api/v1/x: no such route at {SERVER} (is the server older than this CLI?)"
