"""``POST /api/v1/tenants/{tenant}/plan``: a dry run of a proposed Tenant document.

It answers what applying the document would change, and writes nothing anywhere: not the
configuration, not the schema store, not the sync log or the audit log, not Kafka, not
Salesforce. It is checked as ``PUT /tenants/{tenant}`` checks it (a 422 when it is invalid or
does not fit the stored schemas); then it reads the org (:mod:`services.admin.plan` says what):

- the rules added, removed or changed, pair by pair, and the document's warnings;
- for each pair whose Salesforce filter changes, how many records would enter and leave it, with
  five of each; for a new pair, how many records its first backfill would read, with five, and
  the API calls that backfill would cost. The org is read with the tenant's stored connection and
  credentials only, whatever the document says: a new tenant's org is not read;
- the API calls the plan itself made.

What records each side would then be written with is not told: Duplex syncs a record when it
changes or when it enters a filter, and the counts above are those records.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from services.admin.api.access import Access
from services.admin.api.body import TENANT_DOCUMENT_SCHEMA, tenant_document
from services.admin.api.models import ApiModel, Issue
from services.admin.api.preflight import salesforce_answers, tenant_client
from services.admin.api.problems import INVALID_DOCUMENT, ApiError, FieldError
from services.admin.api.schema import described_object, query
from services.admin.api.tenants import check_against_schemas
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.plan import FilterQuestion, backfill_calls, filter_questions, rule_changes
from services.common.connections import Sessions
from services.common.db import Connection
from services.common.salesforce import SalesforceClient, UnlimitedBudget
from services.common.schema_refresh import ClientSchemaReader
from services.common.tenant_config import TenantConfig, config_warnings
from services.common.tenant_config.policy import SalesforcePolicy

SAMPLES = 5


class RuleChangeItem(ApiModel):
    object_pair: str
    app_field: str | None = Field(description="Null for the pair itself (added, removed, or its settings).")
    change: str = Field(description="added, removed or changed.")
    before: Any = None
    after: Any = None


class Selection(ApiModel):
    count: int
    samples: list[dict[str, Any]] = Field(description="Up to five, last modified first: Id and mapped fields.")


class FilterPlan(ApiModel):
    object_pair: str
    salesforce_object: str
    new_pair: bool = Field(description="The pair is new: `entering` is what its first backfill reads.")
    entering: Selection
    leaving: Selection | None = Field(
        description="Records the old filter selects and the new one does not (synced ones stop being synced at"
        " their next Salesforce change); null for a new pair."
    )
    backfill_api_calls: int | None = Field(description="A new pair's first backfill, estimated; null otherwise.")


class Plan(ApiModel):
    tenant: str
    current_version: int | None = Field(description="The version the proposal is compared with; null: a new tenant.")
    changes: list[RuleChangeItem]
    warnings: list[Issue]
    filters: list[FilterPlan]
    api_calls: int = Field(description="API calls this plan made to the org (reads only).")


async def _selection(client: SalesforceClient, name: str, where: str | None, columns: str) -> Selection:
    if where == "":
        return Selection(count=0, samples=[])
    clause = f" WHERE {where}" if where else ""
    count = await query(client, f"SELECT COUNT() FROM {name}{clause}")
    latest = f"SELECT {columns} FROM {name}{clause} ORDER BY LastModifiedDate DESC LIMIT {SAMPLES}"
    rows = (await query(client, latest))["records"]
    return Selection(
        count=int(count["totalSize"]), samples=[{k: v for k, v in r.items() if k != "attributes"} for r in rows]
    )


async def _filter_plan(
    db: Connection, tenant: str, question: FilterQuestion, config: TenantConfig, client: SalesforceClient
) -> FilterPlan:
    pair = next(p for p in config.spec.objects if p.name == question.pair)
    name = question.salesforce_object
    obj = await described_object(db, tenant, name, ClientSchemaReader(client), store=False)
    mapped = {r.salesforce.lower() for r in pair.fields}
    columns = ", ".join(["Id", *(f.name for f in obj.fields if f.name.lower() in mapped and f.name != "Id")])
    entering = await _selection(client, name, question.entering, columns)
    leaving = None if question.new_pair else await _selection(client, name, question.leaving, columns)
    return FilterPlan(
        object_pair=question.pair,
        salesforce_object=name,
        new_pair=question.new_pair,
        entering=entering,
        leaving=leaving,
        backfill_api_calls=backfill_calls(entering.count) if question.new_pair else None,
    )


def plan_router(access: Access, policy: SalesforcePolicy, sessions: Sessions | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
    operate = access.require(Action.OPERATE)
    document = tenant_document(policy)

    @router.post(
        "/{tenant}/plan",
        response_model=Plan,
        summary="Dry-run a Tenant document: the rules it changes and the records entering or leaving each filter",
        description="Writes nothing anywhere. Reads the org: a COUNT() and a five-row query per selection, a"
        " describe per object not described yet.",
        openapi_extra=TENANT_DOCUMENT_SCHEMA,
    )
    async def plan(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        proposed: Annotated[TenantConfig, Depends(document)],
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Plan:
        if proposed.tenant_id != tenant:
            raise ApiError(
                422,
                title="Invalid tenant document",
                detail="the document names another tenant than the path",
                type=INVALID_DOCUMENT,
                errors=[FieldError("metadata.name", f"must be '{tenant}' as in the path (got '{proposed.tenant_id}')")],
            )
        await check_against_schemas(db, proposed)
        current = await ConfigStore(db).get(tenant)
        questions = filter_questions(current.config if current else None, proposed)
        budget = UnlimitedBudget()
        filters: list[FilterPlan] = []
        warnings = [Issue(field=w.where, message=w.message) for w in config_warnings(proposed)]
        if questions and current is None:
            # The org is read only with what is stored: a document cannot point a plan at another
            # org, or name other credentials, to read its records.
            unread = "a new tenant: its org is not read before it is applied"
            warnings.append(Issue(field="spec.objects", message=unread))
        elif questions and current is not None:
            if sessions is None:
                raise ApiError(503, detail="this admin API was started without access to Salesforce")
            client = tenant_client(sessions, tenant, current.config.spec.salesforce, budget)
            with salesforce_answers(tenant, "a query of the plan"):
                filters = [await _filter_plan(db, tenant, q, proposed, client) for q in questions]
        return Plan(
            tenant=tenant,
            current_version=current.version if current else None,
            changes=[
                RuleChangeItem(object_pair=c.pair, app_field=c.app_field, change=c.kind, before=c.before, after=c.after)
                for c in rule_changes(current.config if current else None, proposed)
            ],
            warnings=warnings,
            filters=filters,
            api_calls=budget.calls.get(tenant, 0),
        )

    return router
