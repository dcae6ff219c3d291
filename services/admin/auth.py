"""Who may do what through the admin API: pure rules, no I/O.

A request is made by a :class:`Principal` (an API token, or an OIDC user) with one :class:`Role` and a
tenant scope. :func:`decide` is the whole authorization decision, in the order that leaks least:
no principal is 401, a tenant outside the scope is 404 (it looks exactly like a missing one), and
only then a role that may not is 403.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum

TOKEN_PREFIX = "dpx_"
# 32 random bytes: 256 bits of secret, 43 URL-safe characters after the prefix.
TOKEN_SECRET_BYTES = 32


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class Action(StrEnum):
    READ = "read"
    # Run control (pause, resume, backfill now): the operator's job, coming with later issues.
    OPERATE = "operate"
    CONFIGURE = "configure"
    # Tokens can grant any role on any tenant, so only an admin of every tenant may manage them.
    MANAGE_TOKENS = "manage-tokens"


_REQUIRED_ROLE = {
    Action.READ: Role.VIEWER,
    Action.OPERATE: Role.OPERATOR,
    Action.CONFIGURE: Role.ADMIN,
    Action.MANAGE_TOKENS: Role.ADMIN,
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    kind: str  # "token" or "oidc"
    id: str
    name: str
    role: Role
    # None: every tenant, present and future.
    tenants: frozenset[str] | None

    @property
    def actor(self) -> str:
        """How the audit log and ``applied_by`` name this caller."""
        return f"{self.name} ({self.kind} {self.id})"


class Denial(Enum):
    UNAUTHENTICATED = 401
    NOT_FOUND = 404
    FORBIDDEN = 403


def sees(principal: Principal, tenant_id: str) -> bool:
    return principal.tenants is None or tenant_id in principal.tenants


def role_may(role: Role, action: Action) -> bool:
    """Whether ``role`` ranks high enough for ``action``; :func:`may` is the whole rule (tokens also
    need every tenant in scope)."""
    return _RANK[role] >= _RANK[_REQUIRED_ROLE[action]]


def may(principal: Principal, action: Action) -> bool:
    if not role_may(principal.role, action):
        return False
    return action is not Action.MANAGE_TOKENS or principal.tenants is None


def decide(principal: Principal | None, action: Action, tenant_id: str | None) -> Denial | None:
    """Why the request must be refused, or None when it may go ahead."""
    if principal is None:
        return Denial.UNAUTHENTICATED
    if tenant_id is not None and not sees(principal, tenant_id):
        return Denial.NOT_FOUND
    if not may(principal, action):
        return Denial.FORBIDDEN
    return None


# ---------------------------------------------------------------------------------------------
# API tokens


def new_token() -> str:
    """A fresh token: the recognisable prefix (secret scanners look for it) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_SECRET_BYTES)


def token_digest(token: str) -> str:
    """What is stored and looked up. A plain hash suffices: the secret has 256 bits of entropy."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_api_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


def token_usable(expires_at: datetime | None, revoked_at: datetime | None, now: datetime) -> bool:
    return revoked_at is None and (expires_at is None or now < expires_at)


_DURATION = re.compile(r"(?P<count>[1-9][0-9]{0,5})(?P<unit>[hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_duration(text: str) -> timedelta:
    """``12h``, ``30d``, ``8w``: a token's lifetime. Raises ValueError with a message for the user."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        msg = f"must be a whole number of hours, days or weeks, such as 12h, 30d or 8w (got {text!r})"
        raise ValueError(msg)
    return int(match["count"]) * _UNITS[match["unit"]]
