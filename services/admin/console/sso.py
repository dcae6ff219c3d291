"""Single sign-on to the console: OpenID Connect's authorization code flow with PKCE (RFC 7636).

The console is the provider's client. Signing in sends the browser to the provider's
``authorization_endpoint``; the provider sends it back to ``{public URL}/console/oidc/callback`` with a
code, which the console exchanges at the ``token_endpoint`` for an ID token and an access token. The
ID token says who signed in *to this client, for this flow* (its signature, issuer, audience, expiry and
nonce are checked here); the access token is what the user's session then holds, and the admin API
verifies it exactly as it verifies a pasted one (:mod:`services.admin.oidc`), so roles, tenants and the
audience stay the API's to decide.

What one sign-in needs to remember between the two legs (state, nonce, PKCE verifier, the page to
return to) rides in a cookie of its own: HttpOnly, scoped to ``/console/oidc``, SameSite=Lax (the
provider's redirect back is a cross-site navigation, on which a Strict cookie would not be sent),
signed, ten minutes long, and accepted once. The signing key comes from the vault's keys when the
deployment has them, so every replica accepts a flow any other began; without them it is this
process's own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import jwt
from pydantic import SecretStr

from services.admin.oidc import (
    JWKS_LIFESPAN,
    JWKS_TIMEOUT,
    IdentityProviderUnavailableError,
    UnknownSigningKeyError,
    signed_claims,
)

if TYPE_CHECKING:
    from services.admin.settings import AdminSettings

log = logging.getLogger(__name__)

# Under the console's prefix: the redirect URI to register with the provider ends so.
CALLBACK = "/oidc/callback"
START = "/oidc/sign-in"
FLOW_COOKIE = "duplex_console_sso"
FLOW_PATH = "/console/oidc"
FLOW_SECONDS = 600
# The discovery document is read again after this long (endpoints and keys rarely move).
DISCOVERY_LIFESPAN = 3600
HTTP_TIMEOUT = 10.0
# What of a provider's error text is shown: enough to read, not a page of someone else's HTML.
MAX_SHOWN = 300
_FLOW_KEY_INFO = b"duplex console single sign-on flow"


class SsoError(Exception):
    """A sign-in that cannot go on: ``message`` is for the user, ``status`` for the page."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def challenge_of(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def new_verifier() -> str:
    # 48 random bytes: 64 characters of the unreserved set, within RFC 7636's 43 to 128.
    return secrets.token_urlsafe(48)


def shown(text: object) -> str:
    """A provider's text as a page may show it: printable, and not too long."""
    value = "".join(c for c in str(text) if c.isprintable())
    return value if len(value) <= MAX_SHOWN else value[: MAX_SHOWN - 1] + "…"


@dataclass(frozen=True)
class Flow:
    """One sign-in between leaving for the provider and coming back."""

    state: str
    nonce: str
    verifier: str
    next: str
    expires: float

    @classmethod
    def begin(cls, next_page: str, now: float) -> Flow:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=new_verifier(),
            next=next_page,
            expires=now + FLOW_SECONDS,
        )


class FlowSeal:
    """Flows as cookie values: signed with ``key``, refused once expired, and each accepted once by
    this process (a copied cookie cannot be replayed here; the provider refuses a used code anyway)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._spent: dict[str, float] = {}

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def seal(self, flow: Flow) -> str:
        body = _b64(json.dumps(asdict(flow), separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def open(self, value: str | None, state: str, now: float) -> Flow:
        """The flow ``value`` holds, if it is this sign-in's (``state``), unexpired and unused."""
        if not value:
            raise SsoError("this sign-in was not started in this browser, or it was already used; sign in again", 400)
        body, _, mac = value.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            raise SsoError("this sign-in's record is not one this console made; sign in again", 400)
        try:
            flow = Flow(**json.loads(_unb64(body)))
        except (ValueError, TypeError):
            raise SsoError("this sign-in's record is not one this console made; sign in again", 400) from None
        if flow.expires <= now:
            raise SsoError(f"the sign-in took longer than {FLOW_SECONDS // 60} minutes; sign in again", 400)
        if not hmac.compare_digest(flow.state.encode(), state.encode()):
            raise SsoError(
                "the identity provider's answer does not belong to this sign-in (its state differs); sign in again",
                400,
            )
        self._spent = {s: expires for s, expires in self._spent.items() if expires > now}
        if flow.state in self._spent:
            raise SsoError("this sign-in was already used; sign in again", 400)
        self._spent[flow.state] = flow.expires
        return flow


@dataclass(frozen=True)
class ProviderMetadata:
    """What the console needs of the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None


def metadata_from(document: object, issuer: str) -> ProviderMetadata:
    """The discovery ``document`` of ``issuer``, checked: it must name the same issuer (else a
    provider could speak for another) and the endpoints the flow uses."""
    if not isinstance(document, Mapping):
        raise SsoError("the identity provider's discovery document is not a JSON object", 502)
    if document.get("issuer") != issuer:
        raise SsoError(
            f"the identity provider's discovery document names the issuer {shown(document.get('issuer'))!r}, "
            f"not {issuer!r} (DUPLEX_ADMIN_OIDC_ISSUER)",
            502,
        )
    found: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise SsoError(f"the identity provider's discovery document has no usable {name}", 502)
        found[name] = value
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise SsoError("the identity provider does not support PKCE with S256, which the console requires", 502)
    end = document.get("end_session_endpoint")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=found["authorization_endpoint"],
        token_endpoint=found["token_endpoint"],
        jwks_uri=found["jwks_uri"],
        end_session_endpoint=end if isinstance(end, str) and end.startswith(("https://", "http://")) else None,
    )


@dataclass(frozen=True)
class SsoConfig:
    issuer: str
    client_id: str
    redirect_uri: str
    scopes: str = "openid"
    client_secret: SecretStr | None = None
    flow_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)


def sso_config(settings: AdminSettings, base_url: str) -> SsoConfig | None:
    """The console's client, when ``DUPLEX_ADMIN_OIDC_CLIENT_ID`` is set; ``base_url`` is where
    browsers reach this server (``AdminSettings.public_base_url``)."""
    if not settings.oidc_client_id or not settings.oidc_issuer:
        return None
    if settings.vault is not None:
        # Replicas share the vault's keys: a flow begun on one may end on another.
        key = hmac.new(settings.vault.keys.get_secret_value().encode(), _FLOW_KEY_INFO, hashlib.sha256).digest()
    else:
        key = secrets.token_bytes(32)
    return SsoConfig(
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        redirect_uri=f"{base_url}/console{CALLBACK}",
        scopes=settings.oidc_scopes,
        client_secret=settings.oidc_client_secret,
        flow_key=key,
    )


@dataclass(frozen=True)
class SignedIn:
    access_token: str
    next: str


class SingleSignOn:
    """The console as the provider's client: where to send a browser, and what came back."""

    def __init__(self, config: SsoConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http
        self._seal = FlowSeal(config.flow_key)
        self._metadata: ProviderMetadata | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()
        self._jwks: jwt.PyJWKClient | None = None

    async def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, read on first use and again once it is old."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._read_at > DISCOVERY_LIFESPAN:
                url = f"{self.config.issuer.rstrip('/')}/.well-known/openid-configuration"
                try:
                    response = await self._http.get(url)
                    response.raise_for_status()
                    document = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("cannot read the OIDC discovery document at %s: %s", url, exc)
                    raise SsoError(
                        "the identity provider cannot be reached right now; try again, or sign in with a token",
                        502,
                    ) from None
                metadata = metadata_from(document, self.config.issuer)
                if self._metadata is None or metadata.jwks_uri != self._metadata.jwks_uri:
                    self._jwks = jwt.PyJWKClient(
                        metadata.jwks_uri, cache_keys=True, lifespan=JWKS_LIFESPAN, timeout=JWKS_TIMEOUT
                    )
                self._metadata, self._read_at = metadata, time.monotonic()
            return self._metadata

    async def begin(self, next_page: str) -> tuple[str, str]:
        """Where to send the browser, and the flow cookie's value to keep until it comes back."""
        metadata = await self.metadata()
        flow = Flow.begin(next_page, time.time())
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": self.config.scopes,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": challenge_of(flow.verifier),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        return f"{metadata.authorization_endpoint}{separator}{urlencode(query)}", self._seal.seal(flow)

    async def finish(self, cookie: str | None, params: Mapping[str, str]) -> SignedIn:
        """The access token the provider's answer (``params``, the callback's query) leads to."""
        flow = self._seal.open(cookie, params.get("state", ""), time.time())
        if "error" in params:
            description = params.get("error_description")
            said = shown(params["error"]) + (f": {shown(description)}" if description else "")
            raise SsoError(f"the identity provider did not sign you in ({said})")
        code = params.get("code")
        if not code:
            raise SsoError("the identity provider sent no code back; sign in again", 400)
        metadata = await self.metadata()
        tokens = await self._exchange(metadata, code, flow)
        await self._verify_id_token(tokens["id_token"], flow)
        return SignedIn(access_token=tokens["access_token"], next=flow.next)

    async def _exchange(self, metadata: ProviderMetadata, code: str, flow: Flow) -> dict[str, str]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_uri,
            "code_verifier": flow.verifier,
        }
        auth: httpx.BasicAuth | None = None
        if self.config.client_secret is None:
            form["client_id"] = self.config.client_id
        else:
            # client_secret_basic: RFC 6749 2.3.1 form-encodes both parts before joining them.
            auth = httpx.BasicAuth(
                _form_encoded(self.config.client_id), _form_encoded(self.config.client_secret.get_secret_value())
            )
        headers = {"accept": "application/json"}
        try:
            if auth is None:
                response = await self._http.post(metadata.token_endpoint, data=form, headers=headers)
            else:
                response = await self._http.post(metadata.token_endpoint, data=form, auth=auth, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("cannot reach the OIDC token endpoint: %s", type(exc).__name__)
            raise SsoError("the identity provider cannot be reached right now; sign in again", 502) from None
        body = _json_object(response)
        if response.status_code != 200:
            said = shown(body.get("error") or f"HTTP {response.status_code}")
            if body.get("error_description"):
                said += f": {shown(body['error_description'])}"
            log.warning("the OIDC token endpoint refused the code", extra={"status": response.status_code})
            raise SsoError(f"the identity provider refused to complete the sign-in ({said}); sign in again")
        access, id_token = body.get("access_token"), body.get("id_token")
        if not isinstance(access, str) or not access or not isinstance(id_token, str):
            raise SsoError("the identity provider's answer has no access token and ID token", 502)
        if str(body.get("token_type", "")).lower() != "bearer":
            raise SsoError("the identity provider's access token is not a bearer token", 502)
        return {"access_token": access, "id_token": id_token}

    async def _verify_id_token(self, id_token: str, flow: Flow) -> None:
        assert self._jwks is not None  # set with the metadata, which finish() read first
        try:
            claims = await signed_claims(
                self._jwks,
                id_token,
                audience=self.config.client_id,
                issuer=self.config.issuer,
                require=("exp", "iat", "iss", "aud", "sub"),
            )
        except IdentityProviderUnavailableError:
            raise SsoError("the identity provider's keys cannot be fetched right now; sign in again", 502) from None
        except UnknownSigningKeyError:
            raise SsoError("the identity provider's ID token is not signed with one of its keys", 502) from None
        except jwt.InvalidTokenError as exc:
            raise SsoError(f"the identity provider's ID token is not valid ({shown(exc)})", 502) from None
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), flow.nonce.encode()):
            raise SsoError("the identity provider's ID token is not for this sign-in (its nonce differs)", 502)
        # With several audiences, the party it was issued to must be this client (OIDC Core 3.1.3.7).
        if "azp" in claims and claims["azp"] != self.config.client_id:
            raise SsoError("the identity provider's ID token was issued to another client", 502)


def _form_encoded(value: str) -> str:
    return urlencode({"": value})[1:]


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@asynccontextmanager
async def single_sign_on(settings: AdminSettings, base_url: str) -> AsyncIterator[SingleSignOn | None]:
    """The console's single sign-on while the block runs, or None when no client is configured."""
    config = sso_config(settings, base_url)
    if config is None:
        yield None
        return
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
        log.info("console single sign-on", extra={"issuer": config.issuer, "redirect_uri": config.redirect_uri})
        yield SingleSignOn(config, http)
