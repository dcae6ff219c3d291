"""``/api/v1/tokens``: API tokens, managed by an admin of every tenant."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import CreatedToken, Token, TokenList, TokenRequest
from services.admin.api.problems import ApiError, request_id_of
from services.admin.auth import Action, Principal, Role, parse_duration
from services.admin.token_store import TokenRecord, TokenStore
from services.common.db import Connection


def token_view(record: TokenRecord) -> Token:
    """A stored token as the API shows it (never its secret); the CLI's local bootstrap shows it so too."""
    return Token(
        id=str(record.id),
        name=record.name,
        role=record.role.value,
        tenants=None if record.tenants is None else list(record.tenants),
        created_at=record.created_at,
        created_by=record.created_by,
        expires_at=record.expires_at,
        last_used_at=record.last_used_at,
        revoked_at=record.revoked_at,
    )


def _token_not_found(token_id: str) -> ApiError:
    return ApiError(404, detail=f"no token '{token_id}'")


def tokens_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
    manage = access.require(Action.MANAGE_TOKENS)

    @router.post(
        "",
        status_code=201,
        response_model=CreatedToken,
        summary="Create a token (its secret is in this response only)",
        openapi_extra=json_body_schema(TokenRequest),
    )
    async def create_token(
        principal: Annotated[Principal, Depends(manage)],
        body: Annotated[TokenRequest, Depends(json_body(TokenRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> CreatedToken:
        record, secret = await TokenStore(db).create(
            name=body.name,
            role=Role(body.role),
            tenants=body.tenants,
            lifetime=None if body.expires_in is None else parse_duration(body.expires_in),
            actor=principal.actor,
            request_id=request_id_of(request),
        )
        return CreatedToken(**token_view(record).model_dump(), token=secret)

    @router.get("", response_model=TokenList, summary="List tokens (never their secrets)")
    async def list_tokens(
        principal: Annotated[Principal, Depends(manage)], db: Annotated[Connection, Depends(access.connection)]
    ) -> TokenList:
        return TokenList(items=[token_view(r) for r in await TokenStore(db).list_tokens()])

    @router.delete("/{token_id}", status_code=204, summary="Revoke a token")
    async def revoke_token(
        principal: Annotated[Principal, Depends(manage)],
        token_id: str,
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Response:
        try:
            parsed = uuid.UUID(token_id)
        except ValueError:
            raise _token_not_found(token_id) from None
        if not await TokenStore(db).revoke(parsed, principal.actor, request_id_of(request)):
            raise _token_not_found(token_id)
        return Response(status_code=204)

    return router
