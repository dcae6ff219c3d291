"""Structured JSON logs, and no secret ever reaching them."""

from __future__ import annotations

import io
import json
import logging
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from services.common.logging import (
    MASK,
    SECRETS,
    JsonFormatter,
    RedactingFormatter,
    configure_logging,
    log_context,
    register_secret,
    secrets_of,
)
from services.common.settings import PostgresSettings, TelemetrySettings

pytestmark = pytest.mark.unit

TOKEN = "00D5g000004ABCD!AQ0AQH7x.vR2secretTOKENvalue_9f8e"


class Capture:
    def __init__(self, *, json_lines: bool = True) -> None:
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(
            JsonFormatter(service="test-svc") if json_lines else RedactingFormatter(service="test-svc")
        )
        self.logger = logging.getLogger(f"duplex.test.{id(self)}")
        self.logger.handlers = [handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def capture() -> Iterator[Capture]:
    SECRETS.clear()
    yield Capture()
    SECRETS.clear()


def test_one_json_object_per_line_with_context_and_extra_fields(capture: Capture) -> None:
    with log_context(tenant_id="acme", record_id="001xx"):
        capture.logger.info("mapped %s fields", 3, extra={"event_id": "evt-1"})
    capture.logger.warning("outside")
    first, second = capture.lines()
    assert first["message"] == "mapped 3 fields"
    assert first["level"] == "INFO"
    assert first["service"] == "test-svc"
    assert first["tenant_id"] == "acme"
    assert first["record_id"] == "001xx"
    assert first["event_id"] == "evt-1"
    assert first["ts"].endswith("+00:00")
    assert "tenant_id" not in second


def test_multiline_messages_stay_on_one_line(capture: Capture) -> None:
    capture.logger.info("a\nb")
    assert len(capture.text.splitlines()) == 1


@pytest.mark.parametrize(
    "key",
    ["token", "access_token", "refresh_token", "client_secret", "password", "Authorization", "dsn", "api_key"],
)
def test_fields_named_like_credentials_are_masked_at_any_depth(capture: Capture, key: str) -> None:
    capture.logger.info("call", extra={key: TOKEN, "response": {"nested": [{key: TOKEN}]}})
    line = capture.lines()[0]
    assert line[key] == MASK
    assert line["response"]["nested"][0][key] == MASK
    assert TOKEN not in capture.text


@pytest.mark.parametrize(
    "message",
    [
        f"POST /services/oauth2/token refresh_token={TOKEN}&client_id=x",
        f'got {{"access_token": "{TOKEN}", "instance_url": "https://x"}}',
        f"Authorization: Bearer {TOKEN}",
        f"headers {{'authorization': 'Bearer {TOKEN}'}}",
        f"connecting to postgresql://duplex:{TOKEN}@127.0.0.1/duplex",
        f"client_secret: {TOKEN}",
    ],
)
def test_credentials_in_free_text_are_masked_without_registration(capture: Capture, message: str) -> None:
    capture.logger.info(message)
    assert TOKEN not in capture.text
    assert MASK in capture.lines()[0]["message"]


def test_registered_secret_never_reaches_the_output(capture: Capture) -> None:
    register_secret(SecretStr(TOKEN))
    capture.logger.info("raw %s in args", TOKEN, extra={"innocent": f"x{TOKEN}y", "list": [TOKEN]})
    try:
        raise RuntimeError(f"salesforce said no to {TOKEN}")
    except RuntimeError:
        capture.logger.exception("call failed")
    capture.logger.info(TOKEN, stack_info=True)
    assert TOKEN not in capture.text
    failed = capture.lines()[1]
    assert "RuntimeError: salesforce said no to ***" in failed["exc"]


def test_settings_secrets_are_found_and_masked(capture: Capture) -> None:
    settings = PostgresSettings(dsn=SecretStr(f"postgresql://duplex:{TOKEN}@db:5432/duplex"))
    for secret in secrets_of(settings):
        register_secret(secret)
    capture.logger.info("dsn is %s", settings.dsn.get_secret_value())
    capture.logger.info("settings %s", settings)
    assert TOKEN not in capture.text


def test_short_values_are_not_registered(capture: Capture) -> None:
    register_secret("abc")
    capture.logger.info("abc abc")
    assert capture.lines()[0]["message"] == "abc abc"


def test_plain_text_lines_are_redacted_too() -> None:
    SECRETS.clear()
    register_secret(TOKEN)
    plain = Capture(json_lines=False)
    with log_context(tenant_id="acme", token=TOKEN):
        plain.logger.info("token is %s", TOKEN)
    SECRETS.clear()
    assert TOKEN not in plain.text
    assert "acme" in plain.text


def test_configure_logging_routes_the_root_logger() -> None:
    SECRETS.clear()
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(
            TelemetrySettings(log_level="warning"), service_name="mapping", secrets=[SecretStr(TOKEN)], stream=stream
        )
        logging.getLogger("some.library").info("dropped")
        logging.getLogger("some.library").warning("leaked %s", TOKEN)
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])
        SECRETS.clear()
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line == line | {"service": "mapping", "logger": "some.library", "message": f"leaked {MASK}"}


def test_request_urls_with_query_values_stay_out_of_the_log_at_info() -> None:
    stream = io.StringIO()
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = (list(root.handlers), root.level, httpx_logger.level)
    try:
        configure_logging(TelemetrySettings(log_level="info"), service_name="cdc-ingest", stream=stream)
        # What httpx logs for each request: a SOQL query's WHERE clause carries record values.
        httpx_logger.info('HTTP Request: GET https://x.my.salesforce.com/query?q=WHERE+Email%3D%27a%40b.c%27 "200 OK"')
        httpx_logger.warning("kept")
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
        httpx_logger.setLevel(saved[2])
    assert [json.loads(x)["message"] for x in stream.getvalue().splitlines()] == ["kept"]


TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_.~+/=!$%^*()[]{}\\\"'@#:;,?é€"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(secret=st.text(alphabet=TOKEN_ALPHABET, min_size=8, max_size=40), where=st.sampled_from(["msg", "extra", "exc"]))
def test_no_registered_secret_survives_any_path(capture: Capture, secret: str, where: str) -> None:
    capture.stream.truncate(0)
    capture.stream.seek(0)
    SECRETS.clear()
    register_secret(secret)
    if where == "msg":
        capture.logger.info("value=%s end", secret)
    elif where == "extra":
        capture.logger.info("x", extra={"payload": {"v": [secret]}})
    else:
        try:
            raise ValueError(secret)
        except ValueError:
            capture.logger.exception("boom")
    out = capture.text
    assert secret not in out
    assert json.dumps(secret)[1:-1] not in out
    assert json.dumps(secret, ensure_ascii=False)[1:-1] not in out
