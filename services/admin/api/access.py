"""The one dependency that decides who is calling and whether they may: every route takes it.

``Depends(access.require(Action.X))`` authenticates the bearer credential (an API token, or an OIDC
JWT when configured), applies :func:`services.admin.auth.decide` to the route's action and its
``{tenant}`` path parameter, and hands the handler the :class:`Principal`. It runs before the
request body is read, so a caller without a valid token learns nothing about the body's parsing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.admin.api.problems import ApiError
from services.admin.auth import Action, Denial, Principal, Role, decide, is_api_token
from services.admin.oidc import IdentityProviderUnavailableError, OidcVerifier
from services.admin.token_store import TokenStore
from services.common.db import Connection, Pool

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (`dpx_...`) or, when the server is configured for it, an OIDC access token.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def tenant_not_found(tenant_id: str) -> ApiError:
    """The answer for a tenant that does not exist, and for one outside the caller's scope alike."""
    return ApiError(404, detail=f"no tenant '{tenant_id}'")


def _unauthenticated(credential_given: bool) -> ApiError:
    # RFC 6750 §3: invalid_token when one was sent, bare challenge when none was.
    challenge = 'Bearer realm="duplex", error="invalid_token"' if credential_given else 'Bearer realm="duplex"'
    detail = (
        "the bearer token is invalid, expired or revoked"
        if credential_given
        else "send an API token: Authorization: Bearer dpx_..."
    )
    return ApiError(401, detail=detail, headers={"WWW-Authenticate": challenge})


_VERBS = {
    Action.READ: "read",
    Action.OPERATE: "control sync runs",
    Action.CONFIGURE: "change configuration",
    Action.MANAGE_TOKENS: "manage API tokens",
}


def _forbidden(principal: Principal, action: Action) -> ApiError:
    if principal.role is Role.ADMIN:
        # The only way an admin is refused: token management needs every tenant in scope.
        return ApiError(403, detail=f"only an admin of every tenant may {_VERBS[action]}")
    return ApiError(403, detail=f"the {principal.role.value} role may not {_VERBS[action]}")


class Access:
    """Authentication and authorization over one pool (and an optional OIDC verifier)."""

    def __init__(self, pool: Pool, oidc: OidcVerifier | None = None) -> None:
        self._pool = pool
        self._oidc = oidc

    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for one request (a dependency)."""
        async with self._pool.acquire() as conn:
            yield conn

    async def authenticate(self, credential: str) -> Principal | None:
        if is_api_token(credential):
            async with self._pool.acquire() as conn:
                return await TokenStore(conn).authenticate(credential)
        if self._oidc is None:
            return None
        try:
            return await self._oidc.verify(credential)
        except IdentityProviderUnavailableError:
            raise ApiError(503, detail="the identity provider cannot be reached; try again later") from None

    def require(self, action: Action) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[Principal]]:
        """The dependency of a route that performs ``action``."""

        async def principal(request: Request, credentials: Credentials) -> Principal:
            found = await self.authenticate(credentials.credentials) if credentials else None
            tenant_id: str | None = request.path_params.get("tenant")
            denial = decide(found, action, tenant_id)
            if denial is Denial.UNAUTHENTICATED or found is None:
                raise _unauthenticated(credentials is not None)
            if denial is Denial.NOT_FOUND and tenant_id is not None:
                raise tenant_not_found(tenant_id)
            if denial is not None:
                raise _forbidden(found, action)
            return found

        return principal
