"""``/api/v1/tenants``: tenants and their versioned configuration, over :class:`ConfigStore`."""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from services.admin.api.access import Access, tenant_not_found
from services.admin.api.body import TENANT_DOCUMENT_SCHEMA, invalid_document, tenant_document
from services.admin.api.models import (
    Applied,
    DocumentChange,
    Issue,
    TenantList,
    TenantSummary,
    TenantVersion,
    Validated,
    Version,
    VersionDiff,
    VersionList,
)
from services.admin.api.problems import INVALID_DOCUMENT, ApiError, FieldError, invalid_request, request_id_of
from services.admin.auth import Action, Principal, sees
from services.admin.config_store import ApplyResult, ConfigStore, RefusedByPolicyError
from services.admin.connect import ConnectFlow
from services.admin.documents import diff_documents, unified_diff
from services.admin.required_fields import filter_problems, missing_required
from services.common.db import Connection
from services.common.schema_store import app_objects, latest_objects
from services.common.tenant_config import (
    ConfigInvalidError,
    ObjectPair,
    StoredConfig,
    TenantConfig,
    config_warnings,
    to_document,
)
from services.common.tenant_config.policy import SalesforcePolicy

VersionNumber = Annotated[int, Path(ge=1, description="A stored version (1, 2, ...).")]


async def check_against_schemas(db: Connection, config: TenantConfig) -> None:
    """Refuse ``config`` (422, naming each pair) where the stored schemas show it cannot work."""
    described = await latest_objects(db, config.tenant_id, [p.salesforce.object for p in config.spec.objects])
    crm = {d.name.lower(): d.object for d in described.values() if d.object is not None}
    app = {name: declared.object for name, declared in (await app_objects(db, config.tenant_id)).items()}
    errors = [FieldError(m.where, m.message) for m in missing_required(config, crm, app)]
    errors += [FieldError(where, message) for where, message in filter_problems(config, crm)]
    if errors:
        raise ApiError(
            422,
            title="Invalid tenant document",
            detail="the document does not fit the org's or the app's schema (as last described or declared)",
            type=INVALID_DOCUMENT,
            errors=errors,
        )


def _warnings(config: TenantConfig) -> list[Issue]:
    return [Issue(field=w.where, message=w.message) for w in config_warnings(config)]


def _applied(result: ApplyResult, config: TenantConfig, response: Response) -> Applied:
    if result.created:
        response.status_code = 201
    return Applied(
        name=result.tenant_id,
        version=result.version,
        changed=result.changed,
        created=result.created,
        warnings=_warnings(config),
    )


def _version(stored: StoredConfig) -> TenantVersion:
    return TenantVersion(
        name=stored.tenant_id,
        version=stored.version,
        sha256=stored.sha256,
        applied_at=stored.applied_at,
        applied_by=stored.applied_by,
        document=to_document(stored.config),
    )


def _no_version(tenant_id: str, version: int) -> ApiError:
    return ApiError(404, detail=f"tenant '{tenant_id}' has no version {version}")


async def stored_config(store: ConfigStore, tenant_id: str, version: int | None = None) -> StoredConfig:
    """The tenant's current (or numbered) configuration; 404 when there is none, 500 if it no longer validates."""
    try:
        stored = await store.get(tenant_id, version)
    except ConfigInvalidError as exc:
        # Only possible if the schema tightened after this version was stored.
        which = "current version" if version is None else f"version {version}"
        raise ApiError(500, detail=f"tenant '{tenant_id}': the stored {which} no longer validates: {exc}") from None
    if stored is None:
        raise tenant_not_found(tenant_id) if version is None else _no_version(tenant_id, version)
    return stored


def pair_named(stored: StoredConfig, name: str, loc: tuple[str, str]) -> ObjectPair:
    """The pair named (any case); a 422 at ``loc`` listing the tenant's pairs when there is none."""
    found = next((p for p in stored.config.spec.objects if p.name.lower() == name.lower()), None)
    if found is None:
        known = ", ".join(sorted(p.name for p in stored.config.spec.objects)) or "none"
        message = f"tenant '{stored.tenant_id}' has no object pair {name!r} (its pairs: {known})"
        raise invalid_request([{"loc": loc, "msg": message}])
    return found


def tenants_router(access: Access, policy: SalesforcePolicy, connect: ConnectFlow | None = None) -> APIRouter:
    """The routes; every document stored or restored must be one ``policy`` allows."""
    router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])
    read = access.require(Action.READ)
    configure = access.require(Action.CONFIGURE)
    db_dependency = Depends(access.connection)
    document = tenant_document(policy)

    @router.get("", response_model=TenantList, summary="The tenants the caller may see")
    async def list_tenants(
        principal: Annotated[Principal, Depends(read)], db: Annotated[Connection, db_dependency]
    ) -> TenantList:
        tenants = await ConfigStore(db).list_tenants(principal.tenants)
        return TenantList(
            items=[
                TenantSummary(
                    name=t.tenant_id,
                    version=t.version,
                    applied_at=t.applied_at,
                    applied_by=t.applied_by,
                    created_at=t.created_at,
                )
                for t in tenants
            ]
        )

    @router.post(
        ":validate",
        response_model=Validated,
        summary="Validate a Tenant document without storing it (as `duplex config validate`)",
        openapi_extra=TENANT_DOCUMENT_SCHEMA,
    )
    async def validate(
        principal: Annotated[Principal, Depends(read)],
        config: Annotated[TenantConfig, Depends(document)],
        db: Annotated[Connection, db_dependency],
    ) -> Validated:
        if sees(principal, config.tenant_id):
            # Only a tenant the caller sees: the check reads what its org is like.
            await check_against_schemas(db, config)
        pairs = config.spec.objects
        return Validated(
            name=config.tenant_id,
            object_pairs=len(pairs),
            fields=sum(len(p.fields) for p in pairs),
            warnings=_warnings(config),
        )

    @router.get("/{tenant}", response_model=TenantVersion, summary="The current configuration")
    async def show(
        principal: Annotated[Principal, Depends(read)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> TenantVersion:
        return _version(await stored_config(ConfigStore(db), tenant))

    @router.put(
        "/{tenant}",
        response_model=Applied,
        summary="Apply a document: a new version if it changed (201 when the tenant is new)",
        responses={201: {"model": Applied, "description": "The tenant was created, or re-created after a delete"}},
        openapi_extra=TENANT_DOCUMENT_SCHEMA,
    )
    async def apply(
        principal: Annotated[Principal, Depends(configure)],
        tenant: str,
        config: Annotated[TenantConfig, Depends(document)],
        request: Request,
        response: Response,
        db: Annotated[Connection, db_dependency],
    ) -> Applied:
        if config.tenant_id != tenant:
            raise ApiError(
                422,
                title="Invalid tenant document",
                detail="the document names another tenant than the path",
                type=INVALID_DOCUMENT,
                errors=[FieldError("metadata.name", f"must be '{tenant}' as in the path (got '{config.tenant_id}')")],
            )
        await check_against_schemas(db, config)
        (result,) = await ConfigStore(db).apply([config], principal.actor, request_id_of(request))
        return _applied(result, config, response)

    @router.delete(
        "/{tenant}",
        status_code=204,
        summary="Offboard a tenant: every service stops syncing it; its Salesforce grant is revoked and forgotten",
    )
    async def delete(
        principal: Annotated[Principal, Depends(configure)],
        tenant: str,
        request: Request,
        db: Annotated[Connection, db_dependency],
    ) -> Response:
        store = ConfigStore(db)
        try:
            stored = await store.get(tenant)
        except ConfigInvalidError:
            # Deleting must not depend on the document; only revoking at Salesforce needs it.
            stored = None
        if await store.delete(tenant, principal.actor, request_id_of(request)) is None:
            raise tenant_not_found(tenant)
        if connect is not None:
            spec = stored.config.spec.salesforce if stored is not None else None
            await connect.forget(tenant, spec, principal.actor, request_id_of(request))
        return Response(status_code=204)

    @router.get("/{tenant}/versions", response_model=VersionList, summary="Every stored version, oldest first")
    async def versions(
        principal: Annotated[Principal, Depends(read)], tenant: str, db: Annotated[Connection, db_dependency]
    ) -> VersionList:
        found = await ConfigStore(db).versions(tenant)
        if not found:
            raise tenant_not_found(tenant)
        return VersionList(
            items=[
                Version(version=v.version, sha256=v.sha256, applied_at=v.applied_at, applied_by=v.applied_by)
                for v in found
            ]
        )

    @router.get("/{tenant}/versions/{version}", response_model=TenantVersion, summary="One stored version")
    async def show_version(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        version: VersionNumber,
        db: Annotated[Connection, db_dependency],
    ) -> TenantVersion:
        return _version(await stored_config(ConfigStore(db), tenant, version))

    @router.post(
        "/{tenant}/versions/{version}:restore",
        response_model=Applied,
        summary="Make a stored version current again (stored as a new version)",
    )
    async def restore(
        principal: Annotated[Principal, Depends(configure)],
        tenant: str,
        version: VersionNumber,
        request: Request,
        response: Response,
        db: Annotated[Connection, db_dependency],
    ) -> Applied:
        store = ConfigStore(db)
        try:
            result = await store.restore(tenant, version, principal.actor, policy, request_id_of(request))
        except RefusedByPolicyError as exc:
            raise invalid_document(str(exc), exc.issues) from None
        if result is None:
            await stored_config(store, tenant)  # 404 for a missing tenant, else for the version
            raise _no_version(tenant, version)
        restored = await stored_config(store, tenant, result.version)
        return _applied(result, restored.config, response)

    @router.get("/{tenant}/diff", response_model=VersionDiff, summary="What changed between two versions")
    async def diff(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, db_dependency],
        from_version: Annotated[int, Query(alias="from", ge=1, description="The older version.")],
        to_version: Annotated[int | None, Query(alias="to", ge=1, description="Default: the current one.")] = None,
    ) -> VersionDiff:
        store = ConfigStore(db)
        before = await stored_config(store, tenant, from_version)
        after = await stored_config(store, tenant, to_version)
        before_doc, after_doc = to_document(before.config), to_document(after.config)
        return VersionDiff(
            name=tenant,
            from_version=before.version,
            to_version=after.version,
            changes=[
                DocumentChange(path=c.path, change=c.kind, before=c.before, after=c.after)
                for c in diff_documents(before_doc, after_doc)
            ],
            unified=unified_diff(before_doc, after_doc, f"{tenant} v{before.version}", f"{tenant} v{after.version}"),
        )

    return router
