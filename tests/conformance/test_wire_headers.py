"""Header names as bytes on the wire, read from a raw TLS socket to the emulator process: HTTP
clients normalise names, so only the bytes show what a client that copies headers into a plain,
case-sensitive dictionary sees. Salesforce writes them in canonical case (``Content-Type``,
``Sforce-Limit-Info``, ``Location``…), across REST, Bulk API 2.0, OAuth and SOAP."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import pytest

from devstack.emulator import API_VERSION, EmulatorProcess

pytestmark = pytest.mark.conformance

B = f"/services/data/v{API_VERSION}"
JSON = {"Content-Type": "application/json"}
# A canonical name: dash-separated words, each starting with an upper-case letter (ETag, Sforce-NumberOfRecords).
CANONICAL = re.compile(rb"^[A-Z][A-Za-z0-9]*(-[A-Z][A-Za-z0-9]*)*$")


@dataclass
class Raw:
    status: int
    names: list[bytes]
    headers: dict[bytes, bytes]
    body: bytes


def exchange(
    emulator: EmulatorProcess, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Raw:
    """One HTTP/1.1 request over a fresh TLS connection; the response exactly as its bytes arrived."""
    url = urlsplit(emulator.instance_url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    with (
        socket.create_connection((host, port), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname=host) as tls,
    ):
        tls.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        received = bytearray()
        # "Connection: close": the server closes once the response is complete.
        while chunk := tls.recv(65536):
            received += chunk
    head, _, payload = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0] for line in header_lines]
    values = {line.split(b":", 1)[0]: line.split(b":", 1)[1].strip() for line in header_lines}
    return Raw(int(status_line.split()[1]), names, values, payload)


def assert_canonical(raw: Raw, *expected: bytes) -> None:
    assert [n for n in raw.names if not CANONICAL.match(n)] == [], raw.names
    for name in expected:
        assert name in raw.names, (name, raw.names)
    # Salesforce does not announce the web server it runs on.
    assert b"Server" not in raw.names


@pytest.fixture(scope="module")
def token(emulator: EmulatorProcess) -> str:
    return str(emulator.password_token()["access_token"])


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def test_rest_create_query_and_describe(emulator: EmulatorProcess, token: str) -> None:
    body = json.dumps({"Name": "Raw Header Ltd"}).encode()
    created = exchange(emulator, "POST", f"{B}/sobjects/Account", body, headers=bearer(token, **JSON))
    assert created.status == 201
    assert_canonical(created, b"Content-Type", b"Content-Length", b"Location", b"Sforce-Limit-Info", b"Date")
    assert created.headers[b"Location"].startswith(f"{B}/sobjects/Account/001".encode())

    query = exchange(
        emulator, "GET", f"{B}/query?{urlencode({'q': 'SELECT Id FROM Account LIMIT 1'})}", headers=bearer(token)
    )
    assert query.status == 200
    assert_canonical(query, b"Content-Type", b"Sforce-Limit-Info")

    describe = exchange(emulator, "GET", f"{B}/sobjects/Account/describe", headers=bearer(token))
    assert_canonical(describe, b"Content-Type", b"Last-Modified")


def test_bulk_api_2_query_results(emulator: EmulatorProcess, token: str) -> None:
    job_body = json.dumps({"operation": "query", "query": "SELECT Id, Name FROM Account"}).encode()
    created = exchange(emulator, "POST", f"{B}/jobs/query", job_body, headers=bearer(token, **JSON))
    assert_canonical(created, b"Content-Type", b"Sforce-Limit-Info")
    job_id = json.loads(created.body)["id"]
    deadline = time.monotonic() + 30
    while json.loads(exchange(emulator, "GET", f"{B}/jobs/query/{job_id}", headers=bearer(token)).body)["state"] != (
        "JobComplete"
    ):
        assert time.monotonic() < deadline, "the query job never completed"
    results = exchange(emulator, "GET", f"{B}/jobs/query/{job_id}/results?maxRecords=1", headers=bearer(token))
    assert results.status == 200
    # The names the connector read from a plain dictionary.
    assert_canonical(results, b"Content-Type", b"Sforce-Locator", b"Sforce-NumberOfRecords", b"Sforce-Limit-Info")
    assert results.headers[b"Content-Type"].startswith(b"text/csv")


def test_oauth_token_and_soap_login(emulator: EmulatorProcess) -> None:
    form = urlencode(
        {
            "grant_type": "password",
            "client_id": emulator.info["client_id"],
            "client_secret": emulator.info["client_secret"],
            "username": emulator.info["username"],
            "password": emulator.info["password"],
        }
    ).encode()
    token = exchange(
        emulator, "POST", "/services/oauth2/token", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert token.status == 200
    assert_canonical(token, b"Content-Type", b"Cache-Control", b"Pragma")

    envelope = (
        '<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body>'
        f'<login xmlns="urn:partner.soap.sforce.com"><username>{emulator.info["username"]}</username>'
        f"<password>{emulator.info['password']}</password></login></se:Body></se:Envelope>"
    ).encode()
    login = exchange(
        emulator, "POST", f"/services/Soap/u/{API_VERSION}", envelope, {"Content-Type": "text/xml", "SOAPAction": '""'}
    )
    assert login.status == 200
    assert_canonical(login, b"Content-Type", b"Content-Length")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", f"{B}/nowhere", 404),
        ("PUT", f"{B}/limits/", 405),
        ("GET", "/services/data/v30.0/sobjects", 410),
    ],
)
def test_errors_carry_salesforces_body_and_canonical_names(
    emulator: EmulatorProcess, token: str, method: str, path: str, status: int
) -> None:
    raw = exchange(emulator, method, path, headers=bearer(token))
    assert raw.status == status
    assert_canonical(raw, b"Content-Type")
    (error,) = json.loads(raw.body)
    assert set(error) == {"message", "errorCode"}


def test_the_versions_list_needs_no_session(emulator: EmulatorProcess) -> None:
    raw = exchange(emulator, "GET", "/services/data/")
    assert raw.status == 200
    assert_canonical(raw, b"Content-Type")
    versions = [v["version"] for v in json.loads(raw.body)]
    assert versions[0] == "31.0"
    assert "68.0" in versions
