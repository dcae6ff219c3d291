"""OIDC bearer tokens (JWTs from the organisation's identity provider) as admin API principals.

Signatures are checked against the provider's JWKS (fetched on first use, then cached; a token
signed with an unknown key id makes pyjwt fetch it again, which covers key rotation). Only asymmetric
algorithms are accepted, and ``exp``, ``iss``, ``aud`` and ``sub`` are required.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from services.admin.auth import Principal, Role

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
# The JWKS is re-read this often (seconds), and sooner when a token names a key id not yet seen.
JWKS_LIFESPAN = 300
JWKS_TIMEOUT = 5.0
# Clock skew tolerated between the provider and this process.
LEEWAY_SECONDS = 30
_BY_RANK = (Role.ADMIN, Role.OPERATOR, Role.VIEWER)
ALL_TENANTS = "*"


class IdentityProviderUnavailableError(Exception):
    """The JWKS could not be fetched: the token can be neither accepted nor refused."""


class UnknownSigningKeyError(Exception):
    """The token names no key of the provider's key set (or is too malformed to name one)."""


async def signed_claims(
    jwks: jwt.PyJWKClient, token: str, *, audience: str, issuer: str, require: Sequence[str]
) -> dict[str, Any]:
    """``token``'s claims, its signature checked against the provider's keys and its audience,
    issuer, expiry and ``require``d claims checked too.

    Raises :class:`IdentityProviderUnavailableError` when the keys cannot be fetched,
    :class:`UnknownSigningKeyError` when the token names none of them, and
    ``jwt.InvalidTokenError`` for anything else wrong with it.
    """
    try:
        # pyjwt fetches with urllib: blocking, so off the event loop.
        key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
    except jwt.PyJWKClientConnectionError as exc:
        log.warning("cannot fetch the OIDC provider's keys: %s", exc)
        raise IdentityProviderUnavailableError from None
    except jwt.PyJWTError:  # malformed, no or unknown key id, unusable key set
        raise UnknownSigningKeyError from None
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=list(ALGORITHMS),
        audience=audience,
        issuer=issuer,
        leeway=LEEWAY_SECONDS,
        options={"require": list(require)},
    )
    return claims


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str = "roles"
    tenants_claim: str = "tenants"
    # At most one early re-read per this many seconds, however many unknown key ids arrive.
    refetch_seconds: float = 30.0


def principal_from_claims(claims: Mapping[str, Any], config: OidcConfig) -> Principal | None:
    """The principal verified claims describe, or None when they grant no Duplex role.

    The roles claim is a string or a list of strings; the highest Duplex role in it counts. The
    tenants claim is a list of tenant names or ``"*"`` for every tenant; without it, no tenant.
    """
    raw_roles = claims.get(config.roles_claim)
    roles = {raw_roles} if isinstance(raw_roles, str) else set(raw_roles) if isinstance(raw_roles, list) else set()
    role = next((r for r in _BY_RANK if r.value in roles), None)
    subject = claims.get("sub")
    if role is None or not isinstance(subject, str):
        return None
    raw_tenants = claims.get(config.tenants_claim)
    tenants: frozenset[str] | None
    if raw_tenants == ALL_TENANTS:
        tenants = None
    elif isinstance(raw_tenants, list):
        tenants = frozenset(t for t in raw_tenants if isinstance(t, str))
    else:
        tenants = frozenset()
    name = claims.get("email") or claims.get("preferred_username") or subject
    return Principal(kind="oidc", id=subject, name=str(name), role=role, tenants=tenants)


class OidcVerifier:
    def __init__(self, config: OidcConfig) -> None:
        self._config = config
        self._jwks = jwt.PyJWKClient(
            config.jwks_url,
            cache_keys=True,
            lifespan=JWKS_LIFESPAN,
            timeout=JWKS_TIMEOUT,
            cooldown_duration=config.refetch_seconds,
        )

    async def verify(self, token: str) -> Principal | None:
        """The principal of a valid token, None for any invalid one.

        Raises :class:`IdentityProviderUnavailableError` when the keys cannot be fetched.
        """
        try:
            claims = await signed_claims(
                self._jwks,
                token,
                audience=self._config.audience,
                issuer=self._config.issuer,
                require=("exp", "iss", "aud", "sub"),
            )
        except (UnknownSigningKeyError, jwt.InvalidTokenError):
            return None
        return principal_from_claims(claims, self._config)
