"""``/api/v1/me``: who the credential is (the console shows it, and scripts can check a token)."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.models import ApiModel
from services.admin.auth import Action, Principal


class Me(ApiModel):
    name: str
    kind: str = Field(description="`token` or `oidc`.")
    role: str = Field(description="`viewer`, `operator` or `admin`.")
    tenants: list[str] | None = Field(description="The tenants in scope; null for every tenant.")


def me_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["tokens"])

    @router.get("/me", response_model=Me, summary="Who the credential is: name, role and tenants in scope")
    async def me(principal: Annotated[Principal, Depends(access.require(Action.READ))]) -> Me:
        tenants = None if principal.tenants is None else sorted(principal.tenants)
        return Me(name=principal.name, kind=principal.kind, role=principal.role.value, tenants=tenants)

    return router
