"""OAuth 2.0 as Salesforce serves it: web-server flow with PKCE, refresh, client credentials,
username-password, JWT bearer, revoke, userinfo, and the sessions behind every API call.

There is no browser, so ``/authorize`` approves at once, as the org's default user or the user
named by ``login_hint``. Access and refresh tokens are random, handed out once, and kept only as
SHA-256 hashes (in the data file when there is one, so sessions survive a restart). Authorization
codes live in memory for their short life.

PKCE follows RFC 7636 with S256 only: ``plain`` is refused at ``/authorize``; at ``/token`` a
missing or mismatched verifier is ``invalid_grant`` and a verifier of the wrong shape is
``invalid_request``. Verifiers may be longer than RFC 7636's 128 characters, as Salesforce allows:
its documentation asks for 128 random bytes, base64url-encoded (171 characters), and jsforce (which
Salesforce's own CLI uses against real orgs) sends exactly that by default.

The JWT bearer flow (RFC 7523, as Salesforce's "OAuth 2.0 JWT Bearer Flow for Server-to-Server
Integration" describes it) takes an RS256 assertion signed with the key of the certificate uploaded
to the connected app: ``iss`` the app's client id, ``sub`` the username, ``aud`` the login URL,
``exp`` at most three minutes ahead. Every active user of the app's org counts as pre-authorized.
It answers with an access token and never a refresh token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import jwt
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from services.salesforce_emulator.orgs import OAuthClient, Org, OrgRegistry, User

Clock = Callable[[], float]
TokenKind = Literal["access", "refresh"]

# RFC 7636's alphabet and minimum; Salesforce publishes no maximum, so a generous bound only keeps
# absurd input out (see the module docstring for why 128 is too few).
_PKCE_SHAPE = re.compile(r"^[A-Za-z0-9\-._~]{43,1024}$")
_CHALLENGE_SHAPE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
_REFRESH_SCOPES = frozenset({"refresh_token", "offline_access"})

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Salesforce's rule: an assertion's exp lies no more than three minutes ahead.
JWT_MAX_LIFETIME_SECONDS = 180
# Salesforce documents the audience as its login URL: login.salesforce.com for production orgs,
# test.salesforce.com for sandboxes. One emulator stands in for both, and tools that know only
# Salesforce (the sf CLI among them) name one of these even when they post to another host, so
# both are accepted here, as well as the emulator's own login URL.
_SALESFORCE_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


class OAuthError(Exception):
    """An OAuth error body: ``{"error": …, "error_description": …}`` with an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _invalid_client() -> OAuthError:
    return OAuthError("invalid_client", "invalid client credentials")


def _unknown_client() -> OAuthError:
    return OAuthError("invalid_client_id", "client identifier invalid")


def _invalid_assertion() -> OAuthError:
    # Salesforce's answer to an assertion whose signature does not verify (as its users report it).
    return OAuthError("invalid_grant", "invalid assertion")


def _redirect_mismatch() -> OAuthError:
    return OAuthError("redirect_uri_mismatch", "redirect_uri must match configuration")


def s256(verifier: str) -> str:
    """The code challenge for a verifier: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(challenge: str | None, method: str | None, *, required: bool) -> None:
    """Validate ``/authorize``'s PKCE parameters; raise ``invalid_request`` when they are unusable."""
    if challenge is None:
        if method is not None:
            raise OAuthError("invalid_request", "code_challenge_method without code_challenge")
        if required:
            raise OAuthError("invalid_request", "missing required code challenge")
        return
    # Salesforce implements S256 only; a missing method means S256 there too.
    if method not in (None, "S256"):
        raise OAuthError("invalid_request", f"unsupported code_challenge_method: {method}")
    if not _CHALLENGE_SHAPE.match(challenge):
        raise OAuthError("invalid_request", "invalid code_challenge")


def check_verifier(challenge: str | None, verifier: str | None) -> None:
    """Check ``/token``'s code_verifier against the challenge sent to ``/authorize``."""
    if challenge is None:
        if verifier is not None:
            # Accepting a verifier nobody committed to would hide a downgrade.
            raise OAuthError("invalid_grant", "invalid code verifier")
        return
    if verifier is None:
        raise OAuthError("invalid_grant", "invalid code verifier")
    if not _PKCE_SHAPE.match(verifier):
        raise OAuthError("invalid_request", "invalid code_verifier")
    if not hmac.compare_digest(s256(verifier), challenge):
        # Salesforce answers a mismatch as a bad request, unlike RFC 7636's invalid_grant.
        raise OAuthError("invalid_request", "invalid code_verifier")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """Who an access token acts for."""

    org_id: str
    user_id: str
    client_id: str | None
    scope: str


@dataclass(frozen=True)
class _TokenRow:
    token_hash: str
    kind: TokenKind
    org_id: str
    user_id: str
    client_id: str | None
    scope: str
    expires_at: float | None
    revoked: bool
    parent_hash: str | None


class TokenStore:
    """Token hashes in SQLite; never the tokens themselves."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = connection
        self._lock = lock
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS emulator_oauth_tokens ("
                " token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, org_id TEXT NOT NULL, user_id TEXT NOT NULL,"
                " client_id TEXT, scope TEXT NOT NULL, issued_at REAL NOT NULL, expires_at REAL,"
                " revoked INTEGER NOT NULL DEFAULT 0, parent_hash TEXT)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS emulator_oauth_tokens_parent ON emulator_oauth_tokens (parent_hash)"
            )

    def add(self, token: str, row: _TokenRow, issued_at: float) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO emulator_oauth_tokens"
                " (token_hash, kind, org_id, user_id, client_id, scope, issued_at, expires_at, revoked, parent_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    _hash(token),
                    row.kind,
                    row.org_id,
                    row.user_id,
                    row.client_id,
                    row.scope,
                    issued_at,
                    row.expires_at,
                    row.parent_hash,
                ),
            )

    def find(self, token: str) -> _TokenRow | None:
        with self._lock:
            found = self._db.execute(
                "SELECT token_hash, kind, org_id, user_id, client_id, scope, expires_at, revoked, parent_hash"
                " FROM emulator_oauth_tokens WHERE token_hash = ?",
                (_hash(token),),
            ).fetchone()
        if found is None:
            return None
        return _TokenRow(
            token_hash=found[0],
            kind=found[1],
            org_id=found[2],
            user_id=found[3],
            client_id=found[4],
            scope=found[5],
            expires_at=found[6],
            revoked=bool(found[7]),
            parent_hash=found[8],
        )

    def revoke_tree(self, token_hash: str) -> None:
        """Revoke a token (or code) hash and everything issued from it, transitively."""
        with self._lock, self._db:
            pending = [token_hash]
            while pending:
                current = pending.pop()
                self._db.execute("UPDATE emulator_oauth_tokens SET revoked = 1 WHERE token_hash = ?", (current,))
                children = self._db.execute(
                    "SELECT token_hash FROM emulator_oauth_tokens WHERE parent_hash = ?", (current,)
                ).fetchall()
                pending.extend(child[0] for child in children)

    def revoke_single(self, token_hash: str) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE emulator_oauth_tokens SET revoked = 1 WHERE token_hash = ?", (token_hash,))

    def expire_access_tokens(self, org_id: str, now: float) -> int:
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE emulator_oauth_tokens SET expires_at = ? WHERE org_id = ? AND kind = 'access'"
                " AND revoked = 0 AND (expires_at IS NULL OR expires_at > ?)",
                (now, org_id, now),
            )
            return cursor.rowcount

    def revoke_org(self, org_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE emulator_oauth_tokens SET revoked = 1 WHERE org_id = ?", (org_id,))


@dataclass
class _AuthCode:
    org_id: str
    user_id: str
    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    challenge: str | None
    expires_at: float
    used: bool = False
    code_hash: str = field(default="")


class OAuthService:
    """The OAuth endpoints' logic, free of HTTP so flows can be tested directly."""

    def __init__(
        self,
        orgs: OrgRegistry,
        tokens: TokenStore,
        *,
        login_url: str,
        instance_url: str,
        access_token_ttl: float,
        code_ttl: float = 900.0,
        clock: Clock = time.time,
    ) -> None:
        self._orgs = orgs
        self._tokens = tokens
        self.login_url = login_url.rstrip("/")
        self.instance_url = instance_url.rstrip("/")
        self._access_ttl = access_token_ttl
        self._code_ttl = code_ttl
        self._clock = clock
        self._codes: dict[str, _AuthCode] = {}
        self._lock = threading.Lock()

    @property
    def access_token_ttl(self) -> float:
        return self._access_ttl

    # Sessions ----------------------------------------------------------------------------------

    def issue_session(self, org: Org, user: User, *, client_id: str | None = None, scope: str = "api web") -> str:
        """A new access token (SOAP login and every grant end here)."""
        return self._issue(org, user, "access", client_id, scope, parent=None)

    def authenticate(self, access_token: str) -> Session | None:
        """The session of a live access token, or None when it is unknown, expired or revoked."""
        row = self._tokens.find(access_token)
        if row is None or row.kind != "access" or row.revoked:
            return None
        if row.expires_at is not None and row.expires_at <= self._clock():
            return None
        org = self._orgs.find(row.org_id)
        user = org.user(row.user_id) if org else None
        if user is None or not user.active:
            return None
        return Session(row.org_id, row.user_id, row.client_id, row.scope)

    def expire_all(self, org_id: str) -> int:
        """Fault: every live access token of the org expires now (refresh tokens stay valid)."""
        return self._tokens.expire_access_tokens(org_id, self._clock())

    def revoke_org(self, org_id: str) -> None:
        self._tokens.revoke_org(org_id)

    def _issue(
        self, org: Org, user: User, kind: TokenKind, client_id: str | None, scope: str, parent: str | None
    ) -> str:
        now = self._clock()
        token = f"{org.org_id[:15]}!{secrets.token_urlsafe(48)}" if kind == "access" else secrets.token_urlsafe(64)
        expires = now + self._access_ttl if kind == "access" else None
        row = _TokenRow("", kind, org.org_id, user.user_id, client_id, scope, expires, False, parent)
        self._tokens.add(token, row, now)
        return token

    # /authorize --------------------------------------------------------------------------------

    def authorize(self, params: Mapping[str, str]) -> str:
        """The URL to redirect the user agent to (with a code, or with an error).

        Raises OAuthError (rendered as a 400 page) when no trustworthy redirect URI exists.
        """
        found = self._orgs.find_client(params.get("client_id", ""))
        if found is None:
            raise _unknown_client()
        org, client = found
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise _redirect_mismatch()
        state = params.get("state")
        try:
            if params.get("response_type") != "code":
                raise OAuthError("unsupported_response_type", "response type not supported")
            challenge = params.get("code_challenge")
            check_challenge(challenge, params.get("code_challenge_method"), required=client.pkce_required)
            scope = _granted_scope(client, params.get("scope"))
            user = org.default_user
            hint = params.get("login_hint")
            if hint:
                hinted = org.user_by_name(hint)
                if hinted is None:
                    raise OAuthError("access_denied", "end-user denied authorization")
                user = hinted
            if not user.active:
                raise OAuthError("inactive_user", "user is inactive")
        except OAuthError as exc:
            return _with_query(redirect_uri, {**exc.body(), **({"state": state} if state else {})})
        code = secrets.token_urlsafe(48)
        with self._lock:
            self._drop_stale_codes()
            self._codes[_hash(code)] = _AuthCode(
                org_id=org.org_id,
                user_id=user.user_id,
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                scope=scope,
                challenge=challenge,
                expires_at=self._clock() + self._code_ttl,
                code_hash=_hash(code),
            )
        return _with_query(redirect_uri, {"code": code, **({"state": state} if state else {})})

    def _drop_stale_codes(self) -> None:
        # Used codes are kept until they expire so a replay is recognised (and punished).
        now = self._clock()
        for key in [k for k, c in self._codes.items() if c.expires_at <= now]:
            del self._codes[key]

    # /token ------------------------------------------------------------------------------------

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None = None) -> dict[str, str]:
        grant = form.get("grant_type")
        if grant == JWT_BEARER_GRANT:
            # The assertion's issuer names the client; no client credentials are sent.
            return self._jwt_bearer(form.get("assertion", ""))
        client_id = form.get("client_id") or (basic[0] if basic else "")
        secret = form.get("client_secret") or (basic[1] if basic else None)
        found = self._orgs.find_client(client_id)
        if grant not in ("authorization_code", "refresh_token", "password", "client_credentials"):
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        if found is None:
            raise _unknown_client()
        org, client = found
        if secret is not None and not client.secret_matches(secret):
            raise _invalid_client()
        if grant == "authorization_code":
            return self._exchange_code(org, client, form, secret_given=secret is not None)
        if grant == "refresh_token":
            if secret is None and client.require_secret:
                raise _invalid_client()
            return self._refresh(org, client, form.get("refresh_token", ""))
        if secret is None:
            raise _invalid_client()
        if grant == "password":
            return self._password(org, client, form.get("username", ""), form.get("password", ""))
        return self._client_credentials(org, client)

    def _exchange_code(
        self, org: Org, client: OAuthClient, form: Mapping[str, str], *, secret_given: bool
    ) -> dict[str, str]:
        code_hash = _hash(form.get("code", ""))
        with self._lock:
            self._drop_stale_codes()
            code = self._codes.get(code_hash)
            if code is None or code.client_id != client.client_id:
                raise OAuthError("invalid_grant", "invalid authorization code")
            if code.used:
                # RFC 6749 §4.1.2: a replayed code revokes what it already bought.
                self._tokens.revoke_tree(code_hash)
                raise OAuthError("invalid_grant", "invalid authorization code")
            if code.expires_at <= self._clock():
                raise OAuthError("invalid_grant", "expired authorization code")
            if form.get("redirect_uri") != code.redirect_uri:
                raise _redirect_mismatch()
            if not secret_given and (client.require_secret or code.challenge is None):
                raise _invalid_client()
            check_verifier(code.challenge, form.get("code_verifier"))
            code.used = True
        user = org.user(code.user_id)
        if user is None or not user.active:
            raise OAuthError("inactive_user", "user is inactive")
        return self._grant(org, user, client, code.scope, parent=code_hash, with_refresh=True)

    def _refresh(self, org: Org, client: OAuthClient, refresh_token: str) -> dict[str, str]:
        row = self._tokens.find(refresh_token)
        if row is None or row.kind != "refresh" or row.revoked or row.client_id != client.client_id:
            raise OAuthError("invalid_grant", "expired access/refresh token")
        user = org.user(row.user_id)
        if user is None or not user.active:
            raise OAuthError("inactive_user", "user is inactive")
        scope = tuple(row.scope.split())
        access = self._issue(org, user, "access", client.client_id, row.scope, parent=row.token_hash)
        body = self._response(org, user, client, scope, access)
        if client.refresh_token_rotation:
            body["refresh_token"] = self._issue(
                org, user, "refresh", client.client_id, row.scope, parent=row.token_hash
            )
            # The old refresh token dies; access tokens it already issued live on until they expire.
            self._tokens.revoke_single(row.token_hash)
        return _ordered(body)

    def _password(self, org: Org, client: OAuthClient, username: str, password: str) -> dict[str, str]:
        user = org.user_by_name(username)
        if user is None or not user.password_matches(password):
            raise OAuthError("invalid_grant", "authentication failure")
        if not user.active:
            raise OAuthError("inactive_user", "user is inactive")
        # The username-password flow never issues refresh tokens.
        return self._grant(org, user, client, _granted_scope(client, None), parent=None, with_refresh=False)

    def _client_credentials(self, org: Org, client: OAuthClient) -> dict[str, str]:
        user = org.user(client.execution_user_id) if client.execution_user_id else None
        if user is None:
            raise OAuthError("invalid_grant", "no client credentials user enabled")
        return self._grant(org, user, client, _granted_scope(client, None), parent=None, with_refresh=False)

    def _jwt_bearer(self, assertion: str) -> dict[str, str]:
        try:
            # Unverified only to find whose certificate verifies it.
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise _invalid_assertion() from None
        found = self._orgs.find_client(str(unverified.get("iss") or ""))
        if found is None:
            raise _unknown_client()
        org, client = found
        key = client.jwt_key()
        if key is None:
            # Assumption: Salesforce documents no text for an app without a certificate; nothing
            # can verify the signature, so it is answered as a signature that does not verify.
            raise _invalid_assertion()
        try:
            # RS256 only: "none" and HMAC-with-the-public-key assertions are refused here. The time
            # claims are checked below against the emulator's clock, not the wall clock.
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.InvalidTokenError:
            raise _invalid_assertion() from None
        if not _audience_matches(claims.get("aud"), (self.login_url, *_SALESFORCE_AUDIENCES)):
            raise OAuthError("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        now = self._clock()
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            # Assumption: a missing or non-numeric exp gets the text of a bad assertion.
            raise _invalid_assertion()
        if exp <= now:
            # Salesforce's text for a lapsed assertion, odd as it reads (reported by its users).
            raise OAuthError("invalid_grant", "expired authorization code")
        if exp > now + JWT_MAX_LIFETIME_SECONDS:
            # Assumption: the documented three-minute limit is enforced with the bad-assertion text.
            raise _invalid_assertion()
        user = org.user_by_name(str(claims.get("sub") or ""))
        if user is None:
            # Salesforce's text for a user the app is not pre-authorized for; pre-authorization is
            # modelled as membership of the app's org, so an unknown user is one.
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        if not user.active:
            raise OAuthError("inactive_user", "user is inactive")
        scope_text = " ".join(client.scopes)
        access = self._issue(org, user, "access", client.client_id, scope_text, parent=None)
        # No signature: the published examples of Salesforce's JWT bearer responses show none.
        return _ordered(self._response(org, user, client, client.scopes, access, signed=False))

    def _grant(
        self,
        org: Org,
        user: User,
        client: OAuthClient,
        scope: tuple[str, ...],
        *,
        parent: str | None,
        with_refresh: bool,
    ) -> dict[str, str]:
        scope_text = " ".join(scope)
        refresh = None
        if with_refresh and _REFRESH_SCOPES & set(scope):
            refresh = self._issue(org, user, "refresh", client.client_id, scope_text, parent=parent)
        access_parent = _hash(refresh) if refresh else parent
        access = self._issue(org, user, "access", client.client_id, scope_text, parent=access_parent)
        body = self._response(org, user, client, scope, access)
        if refresh:
            body["refresh_token"] = refresh
        return _ordered(body)

    def _response(
        self, org: Org, user: User, client: OAuthClient, scope: tuple[str, ...], access: str, *, signed: bool = True
    ) -> dict[str, str]:
        issued_at = str(int(self._clock() * 1000))
        identity = self.identity_url(org.org_id, user.user_id)
        body = {
            "access_token": access,
            "scope": " ".join(scope),
            "instance_url": self.instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
        if signed:
            mac = hmac.new(client.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
            body["signature"] = base64.b64encode(mac).decode("ascii")
        return body

    def identity_url(self, org_id: str, user_id: str) -> str:
        return f"{self.login_url}/id/{org_id}/{user_id}"

    # /revoke and /userinfo -----------------------------------------------------------------------

    def revoke(self, token: str) -> None:
        row = self._tokens.find(token)
        if row is None or row.revoked:
            raise OAuthError("invalid_token", "invalid token")
        if row.kind == "refresh":
            self._tokens.revoke_tree(row.token_hash)
        else:
            self._tokens.revoke_single(row.token_hash)

    def userinfo(self, access_token: str) -> dict[str, Any]:
        session = self.authenticate(access_token)
        if session is None:
            raise OAuthError("Bad_OAuth_Token", "Bad_OAuth_Token", status=403)
        org = self._orgs.get(session.org_id)
        user = org.user(session.user_id)
        assert user is not None  # authenticate() checked it
        return _userinfo(self.identity_url(org.org_id, user.user_id), org, user, self.instance_url)


def _userinfo(identity: str, org: Org, user: User, instance_url: str) -> dict[str, Any]:
    return {
        "sub": identity,
        "user_id": user.user_id,
        "organization_id": org.org_id,
        "preferred_username": user.username,
        "nickname": user.username.split("@")[0],
        "name": user.full_name,
        "email": user.email,
        "email_verified": True,
        "given_name": user.first_name,
        "family_name": user.last_name,
        "zoneinfo": "GMT",
        "locale": "en_US",
        "language": "en_US",
        "user_type": "STANDARD",
        "active": user.active,
        "is_app_installed": True,
        "urls": {
            "rest": f"{instance_url}/services/data/v{{version}}/",
            "sobjects": f"{instance_url}/services/data/v{{version}}/sobjects/",
            "query": f"{instance_url}/services/data/v{{version}}/query/",
            "partner": f"{instance_url}/services/Soap/u/{{version}}/{org.org_id}",
            "limits": f"{instance_url}/services/data/v{{version}}/limits/",
        },
    }


def _granted_scope(client: OAuthClient, requested: str | None) -> tuple[str, ...]:
    if not requested:
        return client.scopes
    wanted = tuple(dict.fromkeys(requested.split()))
    allowed = set(client.scopes)
    if "full" in allowed:
        allowed |= {"api", "web", "refresh_token", "offline_access", "openid", "chatter_api", "visualforce"}
    if not set(wanted) <= allowed:
        raise OAuthError("invalid_scope", "the requested scope is not allowed")
    return wanted


def _audience_matches(aud: object, accepted: tuple[str, ...]) -> bool:
    # RFC 7519 lets aud be one string or a list of them; one accepted value is enough.
    values = aud if isinstance(aud, list) else [aud]
    return any(isinstance(v, str) and v.rstrip("/") in accepted for v in values)


def _ordered(body: dict[str, str]) -> dict[str, str]:
    # Salesforce's field order; clients that log responses get familiar output.
    order = ("access_token", "refresh_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at")
    return {k: body[k] for k in order if k in body}


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer …`` (or ``OAuth …``, which older clients send)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and token.strip():
        return token.strip()
    return None


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except ValueError:
        return None
    return user, password


def _error_response(exc: OAuthError) -> Response:
    if exc.status == 403:
        return PlainTextResponse(exc.description, status_code=403)
    return JSONResponse(exc.body(), status_code=exc.status)


def build_oauth_router(service: OAuthService) -> APIRouter:
    """``/services/oauth2/{authorize,token,revoke,userinfo}`` and the identity URL."""
    router = APIRouter()

    @router.get("/services/oauth2/authorize")
    async def authorize(request: Request) -> Response:
        try:
            location = service.authorize(dict(request.query_params))
        except OAuthError as exc:
            return _error_response(exc)
        return RedirectResponse(location, status_code=302)

    @router.post("/services/oauth2/token")
    async def token(request: Request) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            body = service.token(fields, _basic_credentials(request))
        except OAuthError as exc:
            return _error_response(exc)
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if fields.get("format") == "urlencoded":
            return Response(urlencode(body), media_type="application/x-www-form-urlencoded", headers=headers)
        return JSONResponse(body, headers=headers)

    @router.api_route("/services/oauth2/revoke", methods=["GET", "POST"])
    async def revoke(request: Request) -> Response:
        form = await request.form() if request.method == "POST" else None
        token = (form.get("token") if form else None) or request.query_params.get("token")
        try:
            service.revoke(token if isinstance(token, str) else "")
        except OAuthError as exc:
            return _error_response(exc)
        return Response(status_code=200)

    @router.api_route("/services/oauth2/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> Response:
        token = bearer_token(request) or request.query_params.get("access_token", "")
        try:
            return JSONResponse(service.userinfo(token))
        except OAuthError as exc:
            return _error_response(exc)

    @router.get("/id/{org_id}/{user_id}")
    async def identity(org_id: str, user_id: str, request: Request) -> Response:
        token = bearer_token(request) or request.query_params.get("oauth_token", "")
        try:
            info = service.userinfo(token)
        except OAuthError as exc:
            return _error_response(exc)
        if info["organization_id"][:15] != org_id[:15] or info["user_id"][:15] != user_id[:15]:
            return PlainTextResponse("Bad_Id", status_code=403)
        return JSONResponse(
            {
                "id": info["sub"],
                "asserted_user": True,
                "user_id": info["user_id"],
                "organization_id": info["organization_id"],
                "username": info["preferred_username"],
                "nick_name": info["nickname"],
                "display_name": info["name"],
                "email": info["email"],
                "first_name": info["given_name"],
                "last_name": info["family_name"],
                "active": info["active"],
                "user_type": info["user_type"],
                "language": info["language"],
                "locale": info["locale"],
                "urls": info["urls"],
            }
        )

    return router
