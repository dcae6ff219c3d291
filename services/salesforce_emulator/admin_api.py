"""The emulator's own control API under ``/__emulator__/``: orgs, schema, faults, usage, events.

Tests and demos use it to shape an org at runtime (a new custom field, a lowered API limit, an
outage, an expired session, a CDC gap) without restarting. Every route needs
``Authorization: Bearer <admin token>``; nothing here is Salesforce's API, so nothing counts as
API usage.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependency aliases live inside the router factory, out of reach of string annotations.
import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.salesforce_emulator.cdc import ALL_CHANGE_EVENTS_CHANNEL, change_event_schema
from services.salesforce_emulator.changes import ChangeType
from services.salesforce_emulator.corrupt import bad_union_branch
from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.event_log import replay_bytes
from services.salesforce_emulator.faults import OrgFaults
from services.salesforce_emulator.limits import DAILY_API_REQUESTS, UsageMeter
from services.salesforce_emulator.oauth import OAuthService
from services.salesforce_emulator.orgs import (
    CertificateSpec,
    ClientSpec,
    MetadataTypeSpec,
    ObjectSpec,
    Org,
    OrgError,
    OrgRegistry,
    OrgSpec,
    UnknownFieldError,
    UnknownMetadataTypeError,
    UserSpec,
)
from services.salesforce_emulator.schema import ObjectDef

PREFIX = "/__emulator__"


class EventFaults(Protocol):
    """The event log's fault helpers (see ``event_log.EventLog``)."""

    def inject_gap(
        self, org_id: str, entity: str, record_ids: Sequence[str], change_type: ChangeType, *, commit_user: str = ""
    ) -> None: ...

    def inject_overflow(self, org_id: str, entity: str, *, commit_user: str = "") -> None: ...

    def purge_before(self, org_id: str, timestamp_ms: int) -> int: ...

    def drop_streams(self, org_id: str) -> int: ...

    def register_schema(self, schema_id: str, schema_json: str) -> None: ...

    def append(self, org_id: str, channel: str, events: Sequence[tuple[str, str, bytes]]) -> list[int]: ...


class FaultsPatch(BaseModel):
    """Fields to change in an org's faults; omitted fields keep their value, ``api_limit: null`` clears."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    unavailable_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    lock_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    ambiguous_commit_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    ambiguous_commit_mode: Literal["unavailable", "disconnect"] = "unavailable"
    api_limit: int | None = Field(default=None, ge=0)


class UsageRequest(BaseModel):
    """Calls "made by other integrations" to add to the org's rolling usage."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(ge=1)
    limit: str = DAILY_API_REQUESTS


class GapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str
    record_ids: list[str] = Field(min_length=1)
    change_type: Literal["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"] = "GAP_UPDATE"


class OverflowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str


class CorruptEventRequest(BaseModel):
    """An undecodable event on /data/ChangeEvents with ``entity``'s schema id: ``payload_hex``, or by
    default a valid header followed by a union branch that does not exist."""

    model_config = ConfigDict(extra="forbid")

    entity: str
    payload_hex: str | None = None


class PurgeRequest(BaseModel):
    """Drop events logged before ``before_ms`` (epoch ms), or older than ``older_than_seconds``."""

    model_config = ConfigDict(extra="forbid")

    before_ms: int | None = None
    older_than_seconds: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> "PurgeRequest":
        if (self.before_ms is None) == (self.older_than_seconds is None):
            msg = "give exactly one of before_ms and older_than_seconds"
            raise ValueError(msg)
        return self


def faults_view(faults: OrgFaults) -> dict[str, Any]:
    return {
        "seed": faults.seed,
        "latency_ms": faults.latency_ms,
        "unavailable_ratio": faults.unavailable_ratio,
        "lock_ratio": faults.lock_ratio,
        "ambiguous_commit_ratio": faults.ambiguous_commit_ratio,
        "ambiguous_commit_mode": faults.ambiguous_commit_mode,
        "api_limit": faults.api_limit,
    }


def _object_view(obj: ObjectDef) -> dict[str, Any]:
    return {
        "name": obj.name,
        "key_prefix": obj.key_prefix,
        "custom": obj.custom,
        "cdc_enabled": obj.cdc_enabled,
        "fields": [f.name for f in obj.fields],
    }


def _metadata_type_view(org: Org, obj: ObjectDef) -> dict[str, Any]:
    return {
        **_object_view(obj),
        "records": [
            {"Id": r["Id"], "DeveloperName": r["DeveloperName"]} for r in org.metadata_records.get(obj.name, ())
        ],
    }


def _org_view(org: Org, usage: UsageMeter) -> dict[str, Any]:
    return {
        "org_id": org.org_id,
        "alias": org.alias,
        "name": org.state.name,
        "edition": org.state.edition,
        "licenses": org.state.licenses,
        "users": [{"user_id": u.user_id, "username": u.username} for u in org.state.users],
        "clients": [
            {"name": c.name, "client_id": c.client_id, "jwt_bearer": c.certificate is not None}
            for c in org.state.clients
        ],
        "objects": sorted(org.objects),
        "faults": faults_view(org.faults),
        "api_usage": {"used": usage.used(org.org_id), "max": usage.allocation(org)},
    }


def build_admin_router(
    *,
    admin_token: str,
    orgs: OrgRegistry,
    usage: UsageMeter,
    oauth: OAuthService,
    events: EventFaults,
    reset_records: Callable[[str], None],
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """All ``/__emulator__`` routes."""

    def require_admin(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            raise SalesforceError(401, "INVALID_SESSION_ID", "The emulator admin token is missing or wrong")

    router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_admin)])

    def org_or_404(org_ref: str) -> Org:
        org = orgs.find(org_ref)
        if org is None:
            raise SalesforceError(404, "NOT_FOUND", f"No org {org_ref!r}")
        return org

    def bad_request(exc: Exception) -> SalesforceError:
        return SalesforceError(400, "INVALID_INPUT", str(exc))

    OrgRef = Annotated[Org, Depends(org_or_404)]  # noqa: N806 (a type alias, named as one)

    @router.get("/orgs")
    async def list_orgs() -> list[dict[str, Any]]:
        return [_org_view(org, usage) for org in orgs]

    @router.post("/orgs", status_code=201)
    async def create_org(spec: OrgSpec) -> dict[str, Any]:
        try:
            org = orgs.create(spec)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return _org_view(org, usage)

    @router.get("/orgs/{org_ref}")
    async def get_org(org: OrgRef) -> dict[str, Any]:
        return _org_view(org, usage)

    @router.post("/orgs/{org_ref}/users", status_code=201)
    async def add_user(org: OrgRef, spec: UserSpec) -> dict[str, str]:
        try:
            user = orgs.add_user(org.org_id, spec)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return {"user_id": user.user_id, "username": user.username}

    @router.post("/orgs/{org_ref}/clients", status_code=201)
    async def add_client(org: OrgRef, spec: ClientSpec) -> dict[str, str]:
        try:
            client = orgs.add_client(org.org_id, spec)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return {"client_id": client.client_id, "name": client.name}

    @router.put("/orgs/{org_ref}/clients/{client_id}/certificate")
    async def set_certificate(org: OrgRef, client_id: str, spec: CertificateSpec) -> dict[str, Any]:
        """Upload the app's certificate for the JWT bearer flow (``null`` removes it and the flow)."""
        if org.client(client_id) is None:
            raise SalesforceError(404, "NOT_FOUND", f"No client {client_id!r} in {org.alias}")
        try:
            client = orgs.set_certificate(org.org_id, client_id, spec.certificate)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return {"client_id": client.client_id, "name": client.name, "jwt_bearer": client.certificate is not None}

    @router.put("/orgs/{org_ref}/objects/{object_name}")
    async def define_object(org: OrgRef, object_name: str, spec: ObjectSpec) -> dict[str, Any]:
        """Create a custom object, or add/replace custom fields and the CDC switch of any object.

        The schema changes an admin makes in Setup all go through here; each bumps the org's schema
        generation and tells the schema listeners:

        * a field listed here replaces the field of that name whole (give every attribute you want
          to keep): a new ``length`` (records keep longer values already stored), other
          ``picklist_values`` (records keep removed values), ``required: true`` or ``readonly: true``.
          The object's describe gets a new Last-Modified (If-Modified-Since answers 200 again), and
          the CDC Avro schema changes when the event shape does (a field added, removed or retyped;
          not a length, picklist or required change, which Avro does not carry);
        * ``{"cdc_enabled": false}`` deselects the object from Change Data Capture (its
          PlatformEventChannelMember row goes and its changes publish no events); ``true`` selects it.
          Describe does not show the selection, so its Last-Modified stays.

        Fields not listed are kept; remove one with ``DELETE …/fields/{field}``. Custom metadata
        types are defined through ``/metadata-types/{name}`` instead.
        """
        try:
            obj = orgs.define_object(org.org_id, object_name, spec)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return _object_view(obj)

    @router.delete("/orgs/{org_ref}/objects/{object_name}/fields/{field_name}")
    async def delete_field(org: OrgRef, object_name: str, field_name: str) -> dict[str, Any]:
        """Delete a custom field (standard fields cannot be deleted, as in Setup)."""
        try:
            obj = orgs.delete_field(org.org_id, object_name, field_name)
        except UnknownFieldError as exc:
            raise SalesforceError(404, "NOT_FOUND", str(exc)) from exc
        except OrgError as exc:
            raise bad_request(exc) from exc
        return _object_view(obj)

    @router.put("/orgs/{org_ref}/metadata-types/{type_name}")
    async def define_metadata_type(org: OrgRef, type_name: str, spec: MetadataTypeSpec) -> dict[str, Any]:
        """Create or replace a custom metadata type (``Region_Mapping__mdt``) with its fields and records.

        The type becomes exactly the body, as a deploy of the type and its records leaves it: fields
        and records not listed are gone. Records are flat: ``DeveloperName``, optional ``MasterLabel``
        and custom field values. Their ids are stable for an org, type and DeveloperName.
        """
        try:
            obj = orgs.define_metadata_type(org.org_id, type_name, spec)
        except OrgError as exc:
            raise bad_request(exc) from exc
        return _metadata_type_view(org, obj)

    @router.delete("/orgs/{org_ref}/metadata-types/{type_name}", status_code=204)
    async def delete_metadata_type(org: OrgRef, type_name: str) -> None:
        """Delete a custom metadata type and its records."""
        try:
            orgs.delete_metadata_type(org.org_id, type_name)
        except UnknownMetadataTypeError as exc:
            raise SalesforceError(404, "NOT_FOUND", str(exc)) from exc

    @router.get("/orgs/{org_ref}/faults")
    async def get_faults(org: OrgRef) -> dict[str, Any]:
        return faults_view(org.faults)

    @router.patch("/orgs/{org_ref}/faults")
    async def set_faults(org: OrgRef, patch: FaultsPatch) -> dict[str, Any]:
        for name in patch.model_fields_set - {"seed"}:
            setattr(org.faults, name, getattr(patch, name))
        if "seed" in patch.model_fields_set:
            # Re-sending the same seed replays the same faults from the start (see faults.py).
            org.faults.reseed(org.faults.seed if patch.seed is None else patch.seed)
        return faults_view(org.faults)

    @router.post("/orgs/{org_ref}/tokens/expire")
    async def expire_tokens(org: OrgRef) -> dict[str, int]:
        return {"expired": oauth.expire_all(org.org_id)}

    @router.get("/orgs/{org_ref}/usage")
    async def get_usage(org: OrgRef) -> dict[str, Any]:
        return {
            "used": usage.used(org.org_id),
            "max": usage.allocation(org),
            "by_client": usage.used_by_client(org.org_id),
        }

    @router.post("/orgs/{org_ref}/usage")
    async def add_usage(org: OrgRef, body: UsageRequest) -> dict[str, int]:
        usage.record(org.org_id, body.requests, body.limit)
        return {"used": usage.used(org.org_id, body.limit), "max": usage.allocation(org)}

    @router.post("/orgs/{org_ref}/events/gap", status_code=204)
    async def gap(org: OrgRef, body: GapRequest) -> None:
        events.inject_gap(org.org_id, body.entity, body.record_ids, body.change_type)

    @router.post("/orgs/{org_ref}/events/overflow", status_code=204)
    async def overflow(org: OrgRef, body: OverflowRequest) -> None:
        events.inject_overflow(org.org_id, body.entity)

    @router.post("/orgs/{org_ref}/events/corrupt")
    async def corrupt(org: OrgRef, body: CorruptEventRequest) -> dict[str, str]:
        obj = orgs.schema_for(org.org_id).get(body.entity)
        if obj is None:
            raise SalesforceError(404, "NOT_FOUND", f"No object {body.entity!r}")
        schema = change_event_schema(obj)
        if body.payload_hex is None:
            payload = bad_union_branch(schema, org.org_id, int(clock() * 1000))
        else:
            try:
                payload = bytes.fromhex(body.payload_hex)
            except ValueError as exc:
                raise bad_request(exc) from exc
        events.register_schema(schema.schema_id, schema.schema_json)
        [replay] = events.append(
            org.org_id, ALL_CHANGE_EVENTS_CHANNEL, [(f"corrupt-{uuid.uuid4()}", schema.schema_id, payload)]
        )
        return {"replay_id": replay_bytes(replay).hex(), "schema_id": schema.schema_id}

    @router.post("/orgs/{org_ref}/events/purge")
    async def purge(org: OrgRef, body: PurgeRequest) -> dict[str, int]:
        before = body.before_ms
        if before is None:
            assert body.older_than_seconds is not None
            before = int((clock() - body.older_than_seconds) * 1000)
        return {"purged": events.purge_before(org.org_id, before)}

    @router.post("/orgs/{org_ref}/streams/drop")
    async def drop_streams(org: OrgRef) -> dict[str, int]:
        return {"dropped": events.drop_streams(org.org_id)}

    @router.post("/orgs/{org_ref}/reset")
    async def reset(org: OrgRef, records: bool = False) -> dict[str, Any]:
        """Clear faults and API usage; with ``?records=true`` also the org's records."""
        if records:
            reset_records(org.org_id)
        org.faults = OrgFaults()
        usage.reset(org.org_id)
        return _org_view(org, usage)

    return router
