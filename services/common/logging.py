"""Structured logs without secrets.

One JSON object per line on stderr: ``ts``, ``level``, ``logger``, ``service``, ``message``, the
fields bound with :func:`log_context` (``tenant_id``, ``record_id``, ...), the record's
``extra`` fields, and ``exc`` for exceptions.

Secrets are removed twice over, because one missed path is one leaked token:

* by **name**: any field, at any depth, whose key looks like a credential (token, secret,
  password, authorization, access_token, refresh_token, client_secret, dsn, api key, cookie) is
  masked, and so are ``key=value`` / ``"key": "value"`` pairs, ``Bearer``/``Basic`` credentials
  and URL passwords inside free text;
* by **value**: every secret registered at start-up (:func:`register_secret`, typically each
  ``SecretStr`` of the settings via :func:`secrets_of`) is masked wherever it appears: message,
  arguments, fields, exception text and traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from opentelemetry import trace
from pydantic import BaseModel, SecretBytes, SecretStr

from services.common.settings import TelemetrySettings

MASK = "***"

# Registering a two-letter "secret" would mask every occurrence of those letters.
MIN_SECRET_LENGTH = 4

_SENSITIVE_NAME = re.compile(
    r"token|secret|passw(or)?d|pwd|authorization|dsn|api[_-]?key|cookie|credential|private[_-]?key",
    re.IGNORECASE,
)
_SENSITIVE_PAIR = re.compile(
    r"""(?P<key>[\w-]*(?:token|secret|passw(?:or)?d|pwd|authorization|dsn|api[_-]?key|cookie|credential)[\w-]*)"""
    r"""(?P<sep>["']?\s*[:=]\s*["']?)"""
    r"""(?:(?:bearer|basic)\s+)?(?P<value>[^\s"'&,;}\]]+)""",
    re.IGNORECASE,
)
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#\s@]*:)(?P<value>[^@/?#\s]+)(?P<tail>@)", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "duplex_log_context", default=MappingProxyType({})
)


class SecretRegistry:
    """The secret values this process must never write out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()

    def register(self, value: str | SecretStr | SecretBytes | None) -> None:
        """Mask ``value`` from now on (values shorter than ``MIN_SECRET_LENGTH`` are ignored)."""
        plain = _plain(value)
        if plain is None or len(plain) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            # Longest first, so a secret that contains another is masked whole.
            values = {*self._values, plain, json.dumps(plain)[1:-1], json.dumps(plain, ensure_ascii=False)[1:-1]}
            self._values = tuple(sorted(values, key=len, reverse=True))

    def clear(self) -> None:
        """Forget every registered secret (tests)."""
        with self._lock:
            self._values = ()

    def mask(self, text: str) -> str:
        """``text`` with registered values and credential-looking parts masked."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        text = _SENSITIVE_PAIR.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
        text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {MASK}", text)
        return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)

    def scrub(self, value: Any, *, key: str | None = None) -> Any:
        """A JSON-ready copy of ``value`` with secrets masked, by key name and by value."""
        if key is not None and _SENSITIVE_NAME.search(key):
            return MASK
        if isinstance(value, SecretStr | SecretBytes):
            return MASK
        if isinstance(value, Mapping):
            return {str(k): self.scrub(v, key=str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.mask(value if isinstance(value, str) else str(value))


SECRETS = SecretRegistry()


def register_secret(value: str | SecretStr | SecretBytes | None) -> None:
    """Mask ``value`` in every log line of this process from now on."""
    SECRETS.register(value)


def secrets_of(settings: BaseModel) -> Iterator[SecretStr | SecretBytes]:
    """Every ``SecretStr``/``SecretBytes`` in ``settings``, nested models included."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr | SecretBytes):
            yield value
        elif isinstance(value, BaseModel):
            yield from secrets_of(value)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (tenant_id, record_id, event_id...) to every log line inside the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One redacted JSON object per record."""

    def __init__(self, *, service: str, secrets: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self.service = service
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": self.secrets.mask(record.getMessage()),
        }
        entry.update(self.secrets.scrub(dict(_context.get())))
        # The span the line was logged in: a log search and a trace search find each other.
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and k not in entry}
        entry.update(self.secrets.scrub(extras))
        if record.exc_info:
            entry["exc"] = self.secrets.mask(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.secrets.mask(self.formatStack(record.stack_info))
        # Last line of defence: a secret inside something str() rendered in an unexpected way.
        return self.secrets.mask(json.dumps(entry, ensure_ascii=False, default=str))


class RedactingFormatter(logging.Formatter):
    """Human-readable lines (``TELEMETRY_LOG_JSON=false``), redacted the same way."""

    def __init__(self, *, service: str, secrets: SecretRegistry = SECRETS) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        fields = {**_context.get()}
        line = super().format(record)
        if fields:
            line += " " + json.dumps(self.secrets.scrub(fields), default=str)
        return self.secrets.mask(line)


def configure_logging(
    settings: TelemetrySettings,
    *,
    service_name: str,
    secrets: Iterable[str | SecretStr | SecretBytes] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr), formatted and redacted.

    Replaces the root logger's handlers, so call it once, first thing in ``__main__``.
    """
    for secret in secrets:
        register_secret(secret)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(service=service_name) if settings.log_json else RedactingFormatter(service=service_name)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # httpx logs every request's whole URL at INFO: a SOQL query's WHERE clause carries record values.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return handler


def _plain(value: str | SecretStr | SecretBytes | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, SecretBytes):
        return value.get_secret_value().decode("utf-8", errors="replace")
    return value
