"""How every Kafka client of Duplex proves who it is and checks whom it talks to.

One :class:`faststream.security.BaseSecurity` is built from :class:`KafkaSettings`; faststream's
broker takes it as it is, and the plain aiokafka clients (topic administration, the admin API's
dead letters) take the keyword arguments faststream itself derives from it, so the two can never
disagree.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from aiokafka.abc import AbstractTokenProvider
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLOAuthBearer, SASLPlaintext, SASLScram256, SASLScram512

from services.common.settings import KafkaSettings

_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
# A token is replaced once this share of its lifetime has passed, so a connection made just before
# it expires still signs in with one the broker accepts.
_REFRESH_AT = 0.8
_TOKEN_TIMEOUT_SECONDS = 10.0


class TokenError(RuntimeError):
    """No OAuth token for Kafka: the endpoint refused or could not be reached (never names the secret)."""


class OAuthTokens(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens for aiokafka: fetched with the client-credentials grant, or read from a
    file a platform keeps fresh, and reused until most of their lifetime has passed."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._token = ""
        self._renew_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str:
        # Created here: a lock made outside the event loop that uses it cannot be awaited there.
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if time.monotonic() >= self._renew_at:
                self._token, lifetime = await self._fetch()
                self._renew_at = time.monotonic() + lifetime * _REFRESH_AT
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        settings = self._settings
        if settings.sasl_oauth_token_file:
            token = (await asyncio.to_thread(Path(settings.sasl_oauth_token_file).read_text)).strip()
            return token, _lifetime(token, None)
        # All three are there: KafkaSettings checks it.
        assert settings.sasl_oauth_token_url is not None
        assert settings.sasl_oauth_client_id is not None
        assert settings.sasl_oauth_client_secret is not None
        form = {"grant_type": "client_credentials"}
        if settings.sasl_oauth_scope:
            form["scope"] = settings.sasl_oauth_scope
        secret = settings.sasl_oauth_client_secret.get_secret_value()
        try:
            async with httpx.AsyncClient(timeout=_TOKEN_TIMEOUT_SECONDS) as client:
                answer = await client.post(
                    settings.sasl_oauth_token_url, data=form, auth=(settings.sasl_oauth_client_id, secret)
                )
        except httpx.HTTPError as exc:
            raise TokenError(f"Kafka's OAuth token endpoint could not be reached: {type(exc).__name__}") from None
        if answer.status_code != httpx.codes.OK:
            # The endpoint's own error code (RFC 6749 §5.2) says what is wrong; its body may echo input.
            code = _error_code(answer)
            raise TokenError(f"Kafka's OAuth token endpoint answered {answer.status_code} {code}".rstrip())
        body = answer.json()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError("Kafka's OAuth token endpoint answered without an access_token")
        return token, _lifetime(token, body.get("expires_in"))


def _error_code(answer: httpx.Response) -> str:
    try:
        code = answer.json().get("error")
    except ValueError:
        return ""
    return code if isinstance(code, str) else ""


def _lifetime(token: str, expires_in: Any) -> float:
    """Seconds the token is good for: the endpoint's ``expires_in``, else the JWT's ``exp``, else a
    minute (an opaque token is then fetched again soon rather than kept past its expiry)."""
    if isinstance(expires_in, int | float) and expires_in > 0:
        return float(expires_in)
    try:
        # Only reading when it expires; the broker checks the signature.
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        exp = None
    return max(1.0, float(exp) - time.time()) if isinstance(exp, int | float) else 60.0


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """Brokers' certificates checked against ``ssl_ca_file`` (else the system's CAs), host names
    too; the client's own certificate presented when one is configured."""
    context = ssl.create_default_context(cafile=settings.ssl_ca_file)
    if settings.ssl_cert_file and settings.ssl_key_file:
        context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
    return context


def security(settings: KafkaSettings) -> BaseSecurity | None:
    """What faststream's broker takes; None for PLAINTEXT."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = tls_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context)
    if settings.sasl_mechanism == "OAUTHBEARER":
        return SASLOAuthBearer(ssl_context=context, use_ssl=context is not None)
    assert settings.sasl_username is not None  # checked by KafkaSettings
    assert settings.sasl_password is not None
    return _SASL[settings.sasl_mechanism](
        settings.sasl_username,
        settings.sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=context is not None,
    )


def token_provider(settings: KafkaSettings) -> OAuthTokens | None:
    """What signs the clients in with OAUTHBEARER (faststream's security object cannot carry it)."""
    oauth = settings.security_protocol.startswith("SASL_") and settings.sasl_mechanism == "OAUTHBEARER"
    return OAuthTokens(settings) if oauth else None


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """The same, as keyword arguments of aiokafka's clients."""
    options: dict[str, Any] = parse_security(security(settings))
    if (tokens := token_provider(settings)) is not None:
        options["sasl_oauth_token_provider"] = tokens
    return options
