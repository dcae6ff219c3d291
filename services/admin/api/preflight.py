"""``POST /api/v1/tenants/{tenant}/connection:check``: the preflight check of a tenant's org.

The checks themselves are :mod:`services.admin.preflight`; this route reads the tenant's current
configuration, gives the checks the tenant's Salesforce client (built as the services build theirs,
on the admin API's :class:`~services.common.connections.Sessions`: an ``oauth_pkce`` tenant's
session from the vault, the others signed in with their own credentials), answers with every check
and records the outcome in the audit log. A tenant that cannot sign in at all is an answer
(``ok: false``, the first check failing), not an error: that is what the check is for.

The admin API has no rate-limit-governor client: the calls (a handful, see the module above) are
counted in an :class:`~services.common.salesforce.UnlimitedBudget` and the ``API limits`` check
reports how many there were.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, request_id_of
from services.admin.api.tenants import stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.preflight import ClientReader, failed_names, preflight_checks, read_org
from services.common.connections import ConnectionUnavailableError, Sessions
from services.common.db import Connection
from services.common.salesforce import CallBudget, SalesforceApiError, SalesforceClient, UnlimitedBudget
from services.common.tenant_config import SalesforceSpec, SecretValue
from services.common.vault import VaultError


def tenant_client(sessions: Sessions, tenant_id: str, spec: SalesforceSpec, budget: CallBudget) -> SalesforceClient:
    """The tenant's client as cdc-ingest and the writer build theirs, on the admin API's sessions."""
    lookup = sessions.secrets

    def resolve(secret: SecretValue) -> str:
        return lookup(secret)

    return SalesforceClient(
        tenant_id, spec, secrets=resolve, budget=budget, http=sessions.http, sessions=sessions, policy=sessions.policy
    )


@contextmanager
def salesforce_answers(tenant_id: str, what: str) -> Iterator[None]:
    """Salesforce's failures during ``what`` as the problems a route answers with."""
    try:
        yield
    except (ConnectionUnavailableError, LookupError, VaultError) as exc:
        raise ApiError(409, detail=f"Duplex cannot sign in to the org of tenant '{tenant_id}': {exc}") from None
    except SalesforceApiError as exc:
        raise ApiError(502, detail=f"Salesforce refused {what}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ApiError(502, detail=f"Salesforce could not be reached: {exc or type(exc).__name__}") from None


class CheckItem(ApiModel):
    name: str = Field(description="What was checked, e.g. `Account: external id Duplex_Id__c`.")
    ok: bool
    detail: str = Field(description="What was found, in one line.")
    fix: str | None = Field(description="What to do about a failing check, in one line; null when it passed.")


class ConnectionCheck(ApiModel):
    tenant: str
    ok: bool = Field(description="Every check passed.")
    checks: list[CheckItem] = Field(
        description="In order: API access, API limits, each object pair's checks, then Change Data Capture."
        " A check that could not run because an earlier one failed is failing too, and says which to fix first."
    )


def preflight_router(access: Access, sessions: Sessions | None) -> APIRouter:
    """The route, over the admin API's ``sessions`` (None: it answers 503)."""
    router = APIRouter(prefix="/api/v1", tags=["connections"])
    operate = access.require(Action.OPERATE)
    db_dependency = Depends(access.connection)

    @router.post(
        "/tenants/{tenant}/connection:check",
        response_model=ConnectionCheck,
        summary="Check that Duplex can sync the tenant with its org: access, limits, objects, fields, CDC",
        description="Each check passes or fails with a one-line fix. It makes a few API calls to the org: one"
        " /limits, one describe per mapped object and one Tooling API query.",
    )
    async def check_connection(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        request: Request,
        db: Annotated[Connection, db_dependency],
    ) -> ConnectionCheck:
        config = (await stored_config(ConfigStore(db), tenant)).config
        if sessions is None:
            raise ApiError(503, detail="this admin API was started without access to Salesforce")
        budget = UnlimitedBudget()
        client = tenant_client(sessions, tenant, config.spec.salesforce, budget)
        facts = await read_org(config, ClientReader(client, budget))
        checks = preflight_checks(config, facts)
        failed = failed_names(checks)
        await write_audit(
            db,
            actor=principal.actor,
            tenant_id=tenant,
            action="connection.checked",
            detail={"ok": not failed, "failed": failed, "apiCalls": facts.calls},
            request_id=request_id_of(request),
        )
        return ConnectionCheck(
            tenant=tenant,
            ok=not failed,
            checks=[CheckItem(name=c.name, ok=c.ok, detail=c.detail, fix=c.fix) for c in checks],
        )

    return router
