"""Both sides' schemas: the org's objects and fields, drift warnings, and the app objects' declared fields.

- ``POST /tenants/{tenant}/schema:refresh`` reads the org again (global describe, the CDC selection,
  a describe per mapped object and any named) and stores what changed
  (:mod:`services.common.schema_refresh`); cdc-ingest does the same on the tenant's schedule.
- ``GET …/schema/objects`` lists the org's objects (standard, custom ``__c``, custom metadata
  ``__mdt`` …) as last read; ``GET …/schema/objects/{object}`` one object's fields.
- ``GET …/schema/drift`` what is wrong now between the mapping and the org, and what changed lately.
- ``PUT …/app-schema/{object}`` declares an app object's fields (a new version when they changed);
  suggestions and the required-field check read them.
- ``GET …/pairs/{pair}/suggestions`` each app field of a pair: mapped (and whether the best
  candidate agrees), ignored (``ignoredFields``), or open with its best Salesforce candidates and a
  tier (:mod:`services.admin.suggestions`). Confirming, overriding or ignoring one is an edit of the
  tenant document, so it is recorded, versioned and audited with the mapping.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.preflight import salesforce_answers, tenant_client
from services.admin.api.problems import ApiError, FieldError, request_id_of
from services.admin.api.tenants import stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.suggestions import Suggestion, suggest
from services.common.connections import Sessions
from services.common.db import Connection
from services.common.salesforce import SalesforceClient, UnlimitedBudget
from services.common.schema import AppField, AppObject, CrmField, CrmObject, crm_object
from services.common.schema_drift import RuleWarning, SchemaChange, standing_warnings
from services.common.schema_refresh import ClientSchemaReader, refresh
from services.common.schema_store import (
    DeclaredAppObject,
    app_object,
    app_objects,
    catalog,
    declare_app_object,
    latest_objects,
    object_history,
    save_described,
)
from services.common.soql_filter import FilterError, FilterProblem, check_where, fields_of, parse_where, render
from services.common.tenant_config import FieldType, ObjectPair, TenantConfig

_APP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ObjectKind = Literal["standard", "custom", "metadata", "platform_event", "external", "system"]


class ChangeItem(ApiModel):
    object: str
    kind: str = Field(description="field_added, field_removed, type_changed, length_changed, became_read_only, …")
    field: str | None
    message: str
    before: Any = None
    after: Any = None


class WarningItem(ApiModel):
    object_pair: str
    app_field: str | None
    salesforce_field: str | None
    paused: bool = Field(description="Duplex skips this rule until the mapping is fixed; the pair's others sync on.")
    message: str
    change: ChangeItem


def _change(change: SchemaChange) -> ChangeItem:
    return ChangeItem(
        object=change.object,
        kind=str(change.kind),
        field=change.field,
        message=change.message,
        before=change.before,
        after=change.after,
    )


def warning_item(warning: RuleWarning) -> WarningItem:
    return WarningItem(
        object_pair=warning.pair,
        app_field=warning.app_field,
        salesforce_field=warning.salesforce_field,
        paused=warning.paused,
        message=warning.message,
        change=_change(warning.change),
    )


class RefreshRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    objects: list[Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]] = Field(
        default=[], max_length=50, description="Objects to describe besides the mapped ones (one API call each)."
    )


class Refreshed(ApiModel):
    tenant: str
    objects: list[str] = Field(description="The objects described.")
    changes: list[ChangeItem] = Field(description="What changed since the last refresh ([] the first time).")
    warnings: list[WarningItem] = Field(description="The rules those changes touch.")
    failed: dict[str, str] = Field(description="Objects that could not be described, with Salesforce's answer.")
    api_calls: int


class CatalogItem(ApiModel):
    name: str
    label: str
    custom: bool
    kind: ObjectKind
    queryable: bool
    createable: bool
    updateable: bool
    cdc_selected: bool | None = Field(description="Selected for Change Data Capture; null when not read.")


class Catalog(ApiModel):
    tenant: str
    listed_at: datetime
    items: list[CatalogItem]


class PicklistItem(ApiModel):
    value: str
    label: str
    active: bool


class CrmFieldItem(ApiModel):
    name: str
    label: str
    type: str
    length: int
    required: bool = Field(description="A create must give it: createable, not nillable, no default.")
    nillable: bool
    createable: bool
    updateable: bool
    calculated: bool
    external_id: bool
    unique: bool
    defaulted_on_create: bool
    picklist: list[PicklistItem]
    reference_to: list[str]


def _crm_field(f: CrmField) -> CrmFieldItem:
    return CrmFieldItem(
        name=f.name,
        label=f.label,
        type=f.type,
        length=f.length,
        required=f.required,
        nillable=f.nillable,
        createable=f.createable,
        updateable=f.updateable,
        calculated=f.calculated,
        external_id=f.external_id,
        unique=f.unique,
        defaulted_on_create=f.defaulted_on_create,
        picklist=[PicklistItem(value=p.value, label=p.label, active=p.active) for p in f.picklist],
        reference_to=list(f.reference_to),
    )


class DescribedItem(ApiModel):
    tenant: str
    name: str
    label: str | None = Field(description="Null once the object is gone from the org.")
    custom: bool | None
    version: int = Field(description="Goes up each time a refresh finds the object changed.")
    described_at: datetime
    cdc_selected: bool | None
    fields: list[CrmFieldItem]
    changes: list[ChangeItem] = Field(description="What this version changed against the one before.")


class Drift(ApiModel):
    tenant: str
    warnings: list[WarningItem] = Field(description="What is wrong now between the mapping and the newest describes.")
    recent: list[ChangeItem] = Field(description="Each described object's latest changes, newest object first.")
    described_at: dict[str, datetime] = Field(description="When each mapped object was last described.")


class AppFieldItem(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    label: str = Field(default="", max_length=255)
    type: FieldType = FieldType.STRING
    required: bool = False
    picklist: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(default=[], max_length=1000)


class AppSchemaRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    fields: list[AppFieldItem] = Field(min_length=1, max_length=1000)


class AppSchemaItem(ApiModel):
    tenant: str
    object: str
    version: int
    declared_by: str
    declared_at: datetime
    fields: list[AppFieldItem]


class AppSchemaList(ApiModel):
    tenant: str
    items: list[AppSchemaItem]


def _app_item(tenant: str, declared: DeclaredAppObject) -> AppSchemaItem:
    return AppSchemaItem(
        tenant=tenant,
        object=declared.object.name,
        version=declared.version,
        declared_by=declared.declared_by,
        declared_at=declared.declared_at,
        fields=[
            AppFieldItem(name=f.name, label=f.label, type=f.type, required=f.required, picklist=list(f.picklist))
            for f in declared.object.fields
        ],
    )


class CandidateItem(ApiModel):
    salesforce: str
    confidence: float = Field(ge=0, le=1)
    reasons: list[str]


FieldStatus = Literal["mapped", "ignored", "auto", "suggested", "unmapped"]


class FieldSuggestion(ApiModel):
    app: str
    status: FieldStatus = Field(
        description="`mapped` by a rule, `ignored` by the pair, or the tier of its best candidate: `auto` (map it"
        " unless you disagree), `suggested` (confirm or pick another) or `unmapped` (nothing fits)."
    )
    mapped_to: str | None = Field(description="The Salesforce field a rule maps it to.")
    agrees: bool | None = Field(description="For a mapped field: whether the best candidate is the mapped one.")
    candidates: list[CandidateItem] = Field(description="Best first, at most three.")


class PairSuggestions(ApiModel):
    tenant: str
    object_pair: str
    app_object: str
    salesforce_object: str
    app_schema_version: int
    describe_version: int
    fields: list[FieldSuggestion]


def _candidates(suggestion: Suggestion | None) -> list[CandidateItem]:
    if suggestion is None:
        return []
    return [
        CandidateItem(salesforce=c.salesforce, confidence=c.confidence, reasons=list(c.reasons))
        for c in suggestion.candidates
    ]


def pair_suggestions(pair: ObjectPair, app: AppObject, crm: CrmObject) -> list[FieldSuggestion]:
    """Every declared app field of ``pair``: mapped, ignored, or open with its suggestions."""
    mapped = {rule.app: rule.salesforce for rule in pair.fields}
    # Open fields compete for what no rule maps; a mapped field is scored against everything.
    open_fields = AppObject(
        app.name, tuple(f for f in app.fields if f.name not in mapped and f.name not in pair.ignored_fields)
    )
    open_suggestions = {s.app: s for s in suggest(open_fields, crm, taken=mapped.values())}
    everything = {s.app: s for s in suggest(app, crm)}
    found: list[FieldSuggestion] = []
    for field in app.fields:
        if field.name in mapped:
            best = everything.get(field.name)
            top = best.candidates[0].salesforce.lower() if best and best.candidates else None
            found.append(
                FieldSuggestion(
                    app=field.name,
                    status="mapped",
                    mapped_to=mapped[field.name],
                    agrees=top == mapped[field.name].lower(),
                    candidates=_candidates(best),
                )
            )
        elif field.name in pair.ignored_fields:
            found.append(FieldSuggestion(app=field.name, status="ignored", mapped_to=None, agrees=None, candidates=[]))
        else:
            suggestion = open_suggestions[field.name]
            found.append(
                FieldSuggestion(
                    app=field.name,
                    status=str(suggestion.tier),
                    mapped_to=None,
                    agrees=None,
                    candidates=_candidates(suggestion),
                )
            )
    return found


class FilterRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    soql: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="A WHERE clause on the pair's Salesforce object; the pair's own `filter.soql` when left out.",
    )


class FilterPreview(ApiModel):
    tenant: str
    object_pair: str
    salesforce_object: str
    soql: str = Field(description="The clause as Duplex will send it.")
    count: int = Field(description="Records the clause selects now.")
    samples: list[dict[str, Any]] = Field(description="Up to five of them, last modified first: Id and mapped fields.")
    api_calls: int


def _filter_error(problems: Sequence[FilterProblem]) -> ApiError:
    return ApiError(
        422,
        title="Invalid filter",
        detail="the SOQL filter cannot be used: " + "; ".join(str(p) for p in problems),
        errors=[FieldError("soql", str(p)) for p in problems],
    )


async def described_object(
    db: Connection, tenant: str, name: str, reader: ClientSchemaReader, *, store: bool = True
) -> CrmObject:
    """The object's newest stored describe, read (one call) when there is none, and then stored if ``store``."""
    stored = next(iter((await latest_objects(db, tenant, [name])).values()), None)
    if stored is not None and stored.object is not None:
        return stored.object
    describe = await reader.describe(name)
    if describe is None:
        raise ApiError(422, detail=f"the org has no object {name!r}")
    obj = crm_object(describe)
    if store:
        await save_described(db, tenant, name, obj, cdc_selected=None, describe_fields=describe.get("fields") or ())
    return obj


async def query(client: SalesforceClient, soql: str) -> dict[str, Any]:
    response = await client.request("GET", f"{client.api_base}/query", params={"q": soql})
    answer: dict[str, Any] = response.json()
    return answer


def _pair_of(config: TenantConfig, tenant: str, name: str) -> ObjectPair:
    found = next((p for p in config.spec.objects if p.name == name.lower()), None)
    if found is None:
        raise ApiError(404, detail=f"tenant '{tenant}' has no object pair {name!r}")
    return found


def _not_described(tenant: str, name: str) -> ApiError:
    return ApiError(
        404,
        detail=f"tenant '{tenant}' has no describe of {name!r} yet: POST /api/v1/tenants/{tenant}/schema:refresh"
        f' with {{"objects": ["{name}"]}} (or `duplex schema refresh {tenant} --object {name}`)',
    )


def schema_router(access: Access, sessions: Sessions | None) -> APIRouter:
    """The routes, over the admin API's ``sessions`` for the refresh (None: it answers 503)."""
    router = APIRouter(prefix="/api/v1/tenants", tags=["schema"])
    read = access.require(Action.READ)
    operate = access.require(Action.OPERATE)
    configure = access.require(Action.CONFIGURE)
    db_dependency = Depends(access.connection)

    @router.post(
        "/{tenant}/schema:refresh",
        response_model=Refreshed,
        summary="Describe the org again and store what changed; answers the changes and the rules they touch",
        description="API calls: one global describe, one Tooling query when the tenant streams, one describe per"
        " mapped object and per object named.",
        openapi_extra=json_body_schema(RefreshRequest),
    )
    async def refresh_schema(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[RefreshRequest, Depends(json_body(RefreshRequest))],
        request: Request,
        db: Annotated[Connection, db_dependency],
    ) -> Refreshed:
        config = (await stored_config(ConfigStore(db), tenant)).config
        if sessions is None:
            raise ApiError(503, detail="this admin API was started without access to Salesforce")
        client = tenant_client(sessions, tenant, config.spec.salesforce, UnlimitedBudget())
        with salesforce_answers(tenant, "the refresh"):
            done = await refresh(db, config, ClientSchemaReader(client), extra=body.objects, service="admin-api")
        await write_audit(
            db,
            actor=principal.actor,
            tenant_id=tenant,
            action="schema.refreshed",
            detail={"objects": list(done.objects), "changes": len(done.changes), "warnings": len(done.warnings)},
            request_id=request_id_of(request),
        )
        return Refreshed(
            tenant=tenant,
            objects=list(done.objects),
            changes=[_change(c) for c in done.changes],
            warnings=[warning_item(w) for w in done.warnings],
            failed=dict(done.failed),
            api_calls=done.api_calls,
        )

    @router.get("/{tenant}/schema/objects", response_model=Catalog, summary="The org's objects, as last read")
    async def list_objects(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, db_dependency],
        kind: Annotated[ObjectKind | None, Query(description="Only objects of this kind.")] = None,
        q: Annotated[str | None, Query(max_length=80, description="Name or label contains (any case).")] = None,
    ) -> Catalog:
        await stored_config(ConfigStore(db), tenant)
        found = await catalog(db, tenant)
        if found is None:
            raise ApiError(404, detail=f"tenant '{tenant}' has not been read yet: POST .../schema:refresh first")
        entries, listed_at = found
        needle = (q or "").lower()
        items = [
            CatalogItem.model_validate(e)
            for e in entries
            if (kind is None or e["kind"] == kind) and (needle in e["name"].lower() or needle in e["label"].lower())
        ]
        return Catalog(tenant=tenant, listed_at=listed_at, items=items)

    @router.get(
        "/{tenant}/schema/objects/{object}",
        response_model=DescribedItem,
        summary="One object's fields as last described (label, type, length, required, picklist values …)",
    )
    async def show_object(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        object: str,
        db: Annotated[Connection, db_dependency],
        version: Annotated[int | None, Query(ge=1, description="An older version; the newest when left out.")] = None,
    ) -> DescribedItem:
        await stored_config(ConfigStore(db), tenant)
        history = await object_history(db, tenant, object)
        found = next((d for d in history if version is None or d.version == version), None)
        if found is None:
            raise _not_described(tenant, object)
        obj: CrmObject | None = found.object
        return DescribedItem(
            tenant=tenant,
            name=found.name,
            label=None if obj is None else obj.label,
            custom=None if obj is None else obj.custom,
            version=found.version,
            described_at=found.described_at,
            cdc_selected=found.cdc_selected,
            fields=[] if obj is None else [_crm_field(f) for f in obj.fields],
            changes=[_change(c) for c in found.changes],
        )

    @router.get(
        "/{tenant}/schema/drift",
        response_model=Drift,
        summary="Rules the org's schema breaks now (paused ones included), and the latest changes",
    )
    async def drift(
        principal: Annotated[Principal, Depends(read)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> Drift:
        config = (await stored_config(ConfigStore(db), tenant)).config
        latest = await latest_objects(db, tenant)
        objects = {d.name.lower(): d.object for d in latest.values()}
        cdc = {d.name.lower(): d.cdc_selected for d in latest.values()}
        mapped = {p.salesforce.object.lower() for p in config.spec.objects}
        newest_first = sorted(latest.values(), key=lambda d: d.described_at, reverse=True)
        return Drift(
            tenant=tenant,
            warnings=[warning_item(w) for w in standing_warnings(config, objects, cdc)],
            recent=[_change(c) for d in newest_first for c in d.changes],
            described_at={d.name: d.described_at for d in latest.values() if d.name.lower() in mapped},
        )

    @router.put(
        "/{tenant}/app-schema/{object}",
        response_model=AppSchemaItem,
        summary="Declare an app object's fields (a new version when they changed)",
        openapi_extra=json_body_schema(AppSchemaRequest),
    )
    async def declare(
        principal: Annotated[Principal, Depends(configure)],
        tenant: str,
        object: str,
        body: Annotated[AppSchemaRequest, Depends(json_body(AppSchemaRequest))],
        request: Request,
        db: Annotated[Connection, db_dependency],
    ) -> AppSchemaItem:
        await stored_config(ConfigStore(db), tenant)
        if not _APP_NAME.fullmatch(object):
            raise ApiError(
                422, detail=f"{object!r} is not an app object name (letters, digits and '_', not starting with a digit)"
            )
        names = [f.name for f in body.fields]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ApiError(422, detail=f"fields declared twice: {', '.join(twice)}")
        obj = AppObject(
            object,
            tuple(
                AppField(name=f.name, label=f.label, type=f.type, required=f.required, picklist=tuple(f.picklist))
                for f in body.fields
            ),
        )
        async with db.transaction():
            declared = await declare_app_object(db, tenant, obj, principal.actor)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action="app_schema.declared",
                detail={"object": object, "version": declared.version, "fields": len(obj.fields)},
                request_id=request_id_of(request),
            )
        return _app_item(tenant, declared)

    @router.get("/{tenant}/app-schema", response_model=AppSchemaList, summary="Every declared app object")
    async def list_app_schema(
        principal: Annotated[Principal, Depends(read)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> AppSchemaList:
        await stored_config(ConfigStore(db), tenant)
        declared = await app_objects(db, tenant)
        return AppSchemaList(tenant=tenant, items=[_app_item(tenant, d) for _, d in sorted(declared.items())])

    @router.get("/{tenant}/app-schema/{object}", response_model=AppSchemaItem, summary="One declared app object")
    async def show_app_schema(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        object: str,
        db: Annotated[Connection, db_dependency],
    ) -> AppSchemaItem:
        await stored_config(ConfigStore(db), tenant)
        declared = await app_object(db, tenant, object)
        if declared is None:
            raise ApiError(404, detail=f"tenant '{tenant}' has declared no app object {object!r}")
        return _app_item(tenant, declared)

    @router.get(
        "/{tenant}/pairs/{pair}/suggestions",
        response_model=PairSuggestions,
        summary="Mapping suggestions for a pair: each app field's best Salesforce fields, with a confidence and a tier",
        description="Reads the app object's declared schema and the Salesforce object's newest describe; no API call.",
    )
    async def suggestions(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        pair: str,
        db: Annotated[Connection, db_dependency],
    ) -> PairSuggestions:
        config = (await stored_config(ConfigStore(db), tenant)).config
        found = _pair_of(config, tenant, pair)
        declared = await app_object(db, tenant, found.app.object)
        if declared is None:
            raise ApiError(
                404,
                detail=f"tenant '{tenant}' has declared no app object {found.app.object!r}: PUT"
                f" /api/v1/tenants/{tenant}/app-schema/{found.app.object} (or `duplex schema declare`) first",
            )
        described = (await latest_objects(db, tenant, [found.salesforce.object])).values()
        latest = next(iter(described), None)
        if latest is None or latest.object is None:
            raise _not_described(tenant, found.salesforce.object)
        return PairSuggestions(
            tenant=tenant,
            object_pair=found.name,
            app_object=declared.object.name,
            salesforce_object=latest.name,
            app_schema_version=declared.version,
            describe_version=latest.version,
            fields=pair_suggestions(found, declared.object, latest.object),
        )

    @router.post(
        "/{tenant}/pairs/{pair}/filter:validate",
        response_model=FilterPreview,
        summary="Validate a pair's SOQL filter against the org: how many records it selects, and five of them",
        description="Each problem (syntax, unknown field, operator or literal wrong for the field's type) is a 422"
        " naming its column. API calls: a COUNT() query and a five-row query (and a describe if none is stored),"
        " which is why it is an operator's.",
        openapi_extra=json_body_schema(FilterRequest),
    )
    async def validate_filter(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        pair: str,
        body: Annotated[FilterRequest, Depends(json_body(FilterRequest))],
        db: Annotated[Connection, db_dependency],
    ) -> FilterPreview:
        config = (await stored_config(ConfigStore(db), tenant)).config
        found = _pair_of(config, tenant, pair)
        soql = body.soql or (found.filter.soql if found.filter is not None else None)
        if soql is None:
            raise ApiError(
                422,
                detail=f"pair {found.name} has no filter.soql: give one as soql",
                errors=[FieldError("soql", "required")],
            )
        try:
            where = parse_where(soql)
        except FilterError as error:
            raise _filter_error(error.problems) from None
        if sessions is None:
            raise ApiError(503, detail="this admin API was started without access to Salesforce")
        budget = UnlimitedBudget()
        client = tenant_client(sessions, tenant, config.spec.salesforce, budget)
        name = found.salesforce.object
        with salesforce_answers(tenant, "the query"):
            obj = await described_object(db, tenant, name, ClientSchemaReader(client))
            problems = check_where(where, {f.name: f.type for f in obj.fields}, object_name=obj.name)
            if problems:
                raise _filter_error(problems)
            clause = render(where)
            count = await query(client, f"SELECT COUNT() FROM {name} WHERE {clause}")
            shown = {r.salesforce.lower() for r in found.fields} | {f.lower() for f in fields_of(where)}
            columns = ", ".join(["Id", *(f.name for f in obj.fields if f.name.lower() in shown and f.name != "Id")])
            latest = f"SELECT {columns} FROM {name} WHERE {clause} ORDER BY LastModifiedDate DESC LIMIT 5"
            samples = await query(client, latest)
        return FilterPreview(
            tenant=tenant,
            object_pair=found.name,
            salesforce_object=name,
            soql=clause,
            count=int(count["totalSize"]),
            samples=[{k: v for k, v in row.items() if k != "attributes"} for row in samples["records"]],
            api_calls=budget.calls.get(tenant, 0),
        )

    return router
