"""Duplex as an OAuth 2.0 client of Salesforce: connecting a tenant's org and keeping its tokens.

- **Web-server flow with PKCE** (connecting an org through a browser): :meth:`SalesforceOAuth.authorize`
  builds the authorize URL with a fresh ``state`` and PKCE S256 verifier (both 256 bits from
  :mod:`secrets`); :func:`callback_code` checks the callback; :meth:`SalesforceOAuth.exchange_code`
  trades the code (and the verifier) for tokens; :meth:`SalesforceOAuth.identity` reads the org id,
  user id and username from the identity URL the token response names.
- **Refresh** and **revoke**.
- **JWT bearer** (server to server, no browser, no refresh token): an RS256 assertion signed with the
  connected app's certificate key, ``iss`` client id, ``sub`` username, ``aud`` the authorization
  server (:func:`jwt_audience`), valid for three minutes; sign a new one whenever a token is needed.
- **Username-password** and **client credentials**, the other server-side sign-ins.

``invalid_grant`` (refresh token revoked or expired, code spent, assertion refused) raises
:class:`ReconnectNeeded`: the tenant must be connected again, retrying will not help. Every other
OAuth error raises :class:`OAuthError` with Salesforce's ``error`` and ``error_description``.
Transport failures stay ``httpx`` errors. The ``instance_url`` of a token always comes from
Salesforce's response. Nothing is stored here: tokens go to ``services.common.vault``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from opentelemetry import trace

from services.common.logging import register_secret
from services.common.telemetry import client_span

PRODUCTION_LOGIN_URL = "https://login.salesforce.com"
SANDBOX_LOGIN_URL = "https://test.salesforce.com"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Salesforce refuses assertions whose exp is further ahead than this.
JWT_LIFETIME = timedelta(minutes=3)
DEFAULT_SCOPES = ("api", "refresh_token")
# 32 random bytes each: 256 bits, well over the 128 the OAuth security BCP asks of state and verifier.
_RANDOM_BYTES = 32
_IDENTITY_PATH = re.compile(r"/id/([A-Za-z0-9]{15,18})/([A-Za-z0-9]{15,18})/?$")

Clock = Callable[[], datetime]

_tracer = trace.get_tracer(__name__)
# The grant types a token span may name; any other (a typo, a future one) is traced as "other".
_GRANTS = frozenset({"authorization_code", "refresh_token", JWT_BEARER_GRANT, "password", "client_credentials"})


def _now() -> datetime:
    return datetime.now(UTC)


class OAuthError(Exception):
    """Salesforce refused an OAuth request: its ``error`` code and ``error_description``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class ReconnectNeeded(OAuthError):  # noqa: N818 (names what the tenant needs)
    """``invalid_grant``: the tenant's grant is gone (revoked, expired, never valid); connect it again."""


@dataclass(frozen=True)
class ConnectedApp:
    """Duplex's connected app in one org: its consumer key and secret, callback and login host."""

    client_id: str
    redirect_uri: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    login_url: str = PRODUCTION_LOGIN_URL

    def __post_init__(self) -> None:
        object.__setattr__(self, "login_url", self.login_url.rstrip("/"))
        register_secret(self.client_secret)

    def endpoint(self, name: str) -> str:
        return f"{self.login_url}/services/oauth2/{name}"


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the user's browser, and what to keep server-side until the callback."""

    url: str
    state: str
    code_verifier: str = field(repr=False)


@dataclass(frozen=True)
class Token:
    """A token response. ``refresh_token`` is None when none was issued (refresh without rotation,
    JWT bearer, client credentials): keep the one you have."""

    access_token: str = field(repr=False)
    instance_url: str
    identity_url: str
    issued_at: datetime
    scopes: tuple[str, ...] = ()
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    signature: str | None = field(default=None, repr=False)

    @property
    def ids(self) -> tuple[str, str] | None:
        """(org id, user id) from the identity URL, ``https://<login host>/id/<org id>/<user id>``."""
        match = _IDENTITY_PATH.search(urlsplit(self.identity_url).path)
        return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class Identity:
    """Who a token acts for, from the identity URL."""

    org_id: str
    user_id: str
    username: str
    display_name: str | None = None
    email: str | None = None


def code_challenge(verifier: str) -> str:
    """PKCE S256 (RFC 7636 §4.2): base64url(SHA-256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def callback_code(params: Mapping[str, str], expected_state: str) -> str:
    """The authorization code of a callback, after checking its ``state`` in constant time.

    Raises OAuthError for a callback carrying an error (``access_denied``...) or the wrong state.
    """
    state = params.get("state", "")
    if not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise OAuthError("invalid_state", "the callback's state is not the one this authorization was started with")
    if "error" in params:
        raise OAuthError(params["error"], params.get("error_description", ""))
    code = params.get("code")
    if not code:
        raise OAuthError("invalid_request", "the callback carries neither a code nor an error")
    return code


def jwt_assertion(
    client_id: str,
    username: str,
    audience: str,
    private_key: RSAPrivateKey | str,
    *,
    now: datetime,
    lifetime: timedelta = JWT_LIFETIME,
) -> str:
    """The RS256 JWT of the JWT bearer flow; ``private_key`` is the key object or its PEM."""
    if lifetime > JWT_LIFETIME:
        msg = f"Salesforce accepts assertions valid for at most {JWT_LIFETIME}"
        raise ValueError(msg)
    key = load_private_key(private_key) if isinstance(private_key, str) else private_key
    claims = {"iss": client_id, "sub": username, "aud": audience, "exp": int((now + lifetime).timestamp())}
    return jwt.encode(claims, key, algorithm="RS256")


def jwt_audience(login_url: str) -> str:
    """The ``aud`` of a JWT bearer assertion posted to ``login_url``'s token endpoint.

    Salesforce's "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration" names the
    authorization server: https://login.salesforce.com, or https://test.salesforce.com for a
    sandbox, even when the assertion is posted to a My Domain; an Experience Cloud site names its
    own URL. So a My Domain maps to the login host of its kind, and any other host (a site, a host
    the deployment lists, the local emulator) is its own audience.
    """
    host = (urlsplit(login_url).hostname or "").lower()
    if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
        return SANDBOX_LOGIN_URL
    if host == "login.salesforce.com" or host.endswith(".my.salesforce.com"):
        return PRODUCTION_LOGIN_URL
    return login_url.rstrip("/")


def load_private_key(pem: str) -> RSAPrivateKey:
    """An unencrypted PEM RSA private key (what the vault keeps as ``private_key``)."""
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, RSAPrivateKey):
        msg = "the JWT bearer flow needs an RSA private key"
        raise TypeError(msg)
    return key


def parse_token(body: Mapping[str, Any]) -> Token:
    """A token response body; every secret in it is registered with the log redactor."""
    try:
        access_token = str(body["access_token"])
        instance_url = str(body["instance_url"]).rstrip("/")
        identity_url = str(body["id"])
    except KeyError as exc:
        raise OAuthError("invalid_response", f"the token response has no {exc.args[0]}", 502) from None
    for url in (instance_url, identity_url):
        parts = urlsplit(url)
        # Tokens are sent to these URLs; never over plain HTTP.
        if parts.scheme != "https" or not parts.hostname:
            raise OAuthError("invalid_response", f"the token response names a non-HTTPS URL: {url}", 502)
    refresh_token = body.get("refresh_token")
    id_token = body.get("id_token")
    for secret in (access_token, refresh_token, id_token):
        register_secret(secret)
    issued_at = body.get("issued_at")
    return Token(
        access_token=access_token,
        instance_url=instance_url,
        identity_url=identity_url,
        # Salesforce sends epoch milliseconds as a string.
        issued_at=datetime.fromtimestamp(int(issued_at) / 1000, UTC) if issued_at else _now(),
        scopes=tuple(str(body.get("scope") or "").split()),
        token_type=str(body.get("token_type") or "Bearer"),
        refresh_token=str(refresh_token) if refresh_token else None,
        id_token=str(id_token) if id_token else None,
        signature=str(body["signature"]) if body.get("signature") else None,
    )


def oauth_error(response: httpx.Response) -> OAuthError:
    """The error a failed OAuth response stands for (ReconnectNeeded for ``invalid_grant``)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, description = body["error"], str(body.get("error_description") or "")
    else:
        # The identity URL answers a bad token with plain text (403 Bad_OAuth_Token).
        error, description = f"http_{response.status_code}", response.text.strip()[:200]
    kind = ReconnectNeeded if error == "invalid_grant" else OAuthError
    return kind(error, description, response.status_code)


class SalesforceOAuth:
    """The OAuth endpoints of one connected app, over the caller's ``httpx.AsyncClient``."""

    def __init__(self, app: ConnectedApp, http: httpx.AsyncClient, *, clock: Clock = _now) -> None:
        self.app = app
        self._http = http
        self._clock = clock

    def authorize(
        self, *, scopes: Iterable[str] = DEFAULT_SCOPES, login_hint: str | None = None, prompt: str | None = None
    ) -> AuthorizationRequest:
        """The authorize URL of the web-server flow, with a new state and PKCE verifier."""
        if self.app.redirect_uri is None:
            msg = "the web-server flow needs the connected app's redirect_uri"
            raise ValueError(msg)
        state = secrets.token_urlsafe(_RANDOM_BYTES)
        verifier = secrets.token_urlsafe(_RANDOM_BYTES)
        params = {
            "response_type": "code",
            "client_id": self.app.client_id,
            "redirect_uri": self.app.redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        if prompt:
            params["prompt"] = prompt
        return AuthorizationRequest(f"{self.app.endpoint('authorize')}?{urlencode(params)}", state, verifier)

    async def exchange_code(self, code: str, code_verifier: str) -> Token:
        """Trade the callback's code for tokens (``authorization_code`` with ``code_verifier``)."""
        if self.app.redirect_uri is None:
            msg = "the web-server flow needs the connected app's redirect_uri"
            raise ValueError(msg)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.app.redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token(form)

    async def refresh(self, refresh_token: str) -> Token:
        """A new access token (and a new refresh token when the app rotates them)."""
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def jwt_bearer(
        self, username: str, private_key: RSAPrivateKey | str, *, audience: str | None = None
    ) -> Token:
        """An access token for ``username`` by the JWT bearer flow (no refresh token is issued).

        ``audience`` defaults to :func:`jwt_audience` of the login URL.
        """
        aud = audience or jwt_audience(self.app.login_url)
        assertion = jwt_assertion(self.app.client_id, username, aud, private_key, now=self._clock())
        # The assertion's client id is its iss claim; the form carries no client credentials.
        return await self._token({"grant_type": JWT_BEARER_GRANT, "assertion": assertion}, client=False)

    async def password(self, username: str, password: str) -> Token:
        """An access token by the username-password flow; ``password`` includes any security token."""
        return await self._token({"grant_type": "password", "username": username, "password": password})

    async def client_credentials(self) -> Token:
        """An access token for the connected app's execution user (client credentials flow)."""
        return await self._token({"grant_type": "client_credentials"})

    async def identity(self, token: Token) -> Identity:
        """The org id, user id and username behind ``token``, from its identity URL."""
        with self._span("GET", "/id/{org}/{user}") as span:
            response = await self._http.get(
                token.identity_url,
                headers={"Authorization": f"Bearer {token.access_token}", "Accept": "application/json"},
            )
            _traced(span, response)
        if response.status_code != 200:
            raise oauth_error(response)
        body = response.json()
        try:
            return Identity(
                org_id=str(body["organization_id"]),
                user_id=str(body["user_id"]),
                username=str(body["username"]),
                display_name=body.get("display_name"),
                email=body.get("email"),
            )
        except (KeyError, TypeError):
            msg = "the identity response lacks organization_id, user_id or username"
            raise OAuthError("invalid_response", msg, 502) from None

    async def revoke(self, token: str) -> None:
        """Revoke an access or refresh token (revoking a refresh token ends its access tokens too)."""
        with self._span("POST", "/services/oauth2/revoke") as span:
            response = await self._http.post(self.app.endpoint("revoke"), data={"token": token})
            _traced(span, response)
        if response.status_code != 200:
            raise oauth_error(response)

    async def _token(self, form: dict[str, str], *, client: bool = True) -> Token:
        if client:
            form["client_id"] = self.app.client_id
            if self.app.client_secret is not None:
                form["client_secret"] = self.app.client_secret
        grant = form.get("grant_type", "")
        with self._span(
            "POST", "/services/oauth2/token", {"oauth.grant_type": grant if grant in _GRANTS else "other"}
        ) as span:
            response = await self._http.post(
                self.app.endpoint("token"), data=form, headers={"Accept": "application/json"}
            )
            _traced(span, response)
        if response.status_code != 200:
            raise oauth_error(response)
        return parse_token(response.json())

    def _span(
        self, method: str, template: str, extra: dict[str, Any] | None = None
    ) -> AbstractContextManager[trace.Span]:
        # The template, not the URL: an identity URL names the org and the user.
        attributes = {"http.request.method": method, "url.template": template, **(extra or {})}
        return client_span(_tracer, f"{method} {template}", attributes)


def _traced(span: trace.Span, response: httpx.Response) -> None:
    """A response's status, and OAuth's error code on failure (never its description, which can
    quote what was sent), on its span."""
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code != 200:
        span.set_attribute("oauth.error", oauth_error(response).error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(response.status_code)))
