"""``POST /api/v1/tenants/{tenant}/retries``: retry the records whose latest write Salesforce rejected,
once the mapping is fixed, by asking the app to publish each again (:mod:`services.admin.retries`).

Run control, so an operator's job, and audited. Which records must be said: one (any of its ids), an
object pair's, those rejected since a time, or a combination; "every rejected record" is spelt with
``since``. A record named that has nothing to retry is a 404; a pair or a time with nothing to retry
is not an error (202, none requested), so that a script may ask again and again.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, ConfigDict, Field

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, invalid_request, request_id_of
from services.admin.api.tenants import pair_named, stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.dead_letters import DeadLetterTopics, KafkaUnavailableError
from services.admin.retries import (
    Rejection,
    ResendRequest,
    log_requests,
    messages,
    nothing_to_retry,
    rejections_of,
    resend_requests,
    select,
)
from services.common.db import Connection
from services.common.topics import Topic

SELECTORS = ("record", "objectPair", "since")


class RetryRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    record: str | None = Field(
        default=None, min_length=1, max_length=255, description="One record: its app id, Salesforce id or link id."
    )
    object_pair: str | None = Field(
        default=None, min_length=1, max_length=255, description="The rejected records of this object pair."
    )
    since: AwareDatetime | None = Field(
        default=None,
        description="The records whose latest rejection was at or after this time; alone: every one of the tenant's.",
    )


# One request asks the app for at most this many records: one transaction, one audit row, one burst.
MAX_RECORDS = 1_000


class RejectedRecord(ApiModel):
    object_pair: str
    app_record_id: str | None
    salesforce_id: str | None = Field(description="Null for a record Salesforce never created.")
    link_id: str
    rejected_at: datetime = Field(description="When Salesforce rejected its latest write.")
    code: str | None = Field(description="Salesforce's code for it, such as REQUIRED_FIELD_MISSING.")


class SkippedRecord(RejectedRecord):
    reason: str = Field(description="Why the app was not asked for it.")


class Retries(ApiModel):
    tenant: str
    requested: int = Field(description="How many records the app was asked to publish again.")
    records: list[RejectedRecord] = Field(description="Those records, oldest rejection first.")
    skipped: list[SkippedRecord] = Field(description="Rejected records the app cannot be asked for.")
    remaining: int = Field(
        description=f"Records beyond the {MAX_RECORDS:,} one request asks for; ask again with `nextSince`."
    )
    next_since: datetime | None = Field(description="`since` for the next request while records remain.")


def _fields(rejection: Rejection) -> dict[str, Any]:
    return {
        "object_pair": rejection.pair,
        "app_record_id": rejection.app_record_id,
        "salesforce_id": rejection.crm_record_id,
        "link_id": rejection.link_id,
        "rejected_at": rejection.at,
        "code": rejection.code,
    }


def retries_router(access: Access, topics: DeadLetterTopics | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["retries"])
    operate = access.require(Action.OPERATE)

    def kafka() -> DeadLetterTopics:
        if topics is None:
            raise ApiError(503, detail="retries need Kafka: set KAFKA_BOOTSTRAP_SERVERS for the admin API")
        return topics

    async def publish(sender: DeadLetterTopics, tenant: str, requests: list[ResendRequest]) -> None:
        try:
            await sender.publish(Topic.APP_UPDATES, messages(tenant, requests, datetime.now(UTC)))
        except KafkaUnavailableError as exc:
            raise ApiError(503, detail=f"{exc}; no record was retried") from None

    @router.post(
        "/{tenant}/retries",
        status_code=202,
        response_model=Retries,
        summary="Ask the app to publish again the records whose latest write Salesforce rejected",
        openapi_extra=json_body_schema(RetryRequest),
    )
    async def retry(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[RetryRequest, Depends(json_body(RetryRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Retries:
        if (body.record, body.object_pair, body.since) == (None, None, None):
            message = "say which records: give record, objectPair or since (since alone: every record rejected since)"
            raise invalid_request([{"loc": ("body", name), "msg": message} for name in SELECTORS])
        stored = await stored_config(ConfigStore(db), tenant)
        sender = kafka()
        pair = None if body.object_pair is None else pair_named(stored, body.object_pair, ("body", "objectPair")).name
        found = await rejections_of(db, tenant, record=body.record, pair=pair, since=body.since)
        pairs = {p.name: p for p in stored.config.spec.objects}
        chosen = select(found, pairs)
        if body.record is not None and not chosen.resend and not chosen.skipped:
            raise ApiError(404, detail=nothing_to_retry(tenant, body.record, found, body.since))
        requests = resend_requests(chosen.resend[:MAX_RECORDS], pairs)
        remaining = len(chosen.resend) - len(requests)
        async with db.transaction():
            # Logged before sending: a send that fails rolls the rows back, and a request whose
            # answer is lost after Kafka took it is still in the record's timeline.
            await log_requests(db, tenant, requests, principal.actor)
            if requests:
                await publish(sender, tenant, requests)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action="retries.requested",
                detail={
                    "record": body.record,
                    "object_pair": pair,
                    "since": body.since.isoformat() if body.since else None,
                    "requested": len(requests),
                    "remaining": remaining,
                    "links": [r.rejection.link_id for r in requests[:100]],
                    "skipped": [s.rejection.link_id for s in chosen.skipped[:100]],
                },
                request_id=request_id_of(request),
            )
        return Retries(
            tenant=tenant,
            requested=len(requests),
            records=[RejectedRecord(**_fields(r.rejection)) for r in requests],
            skipped=[SkippedRecord(**_fields(s.rejection), reason=s.reason) for s in chosen.skipped],
            remaining=remaining,
            next_since=requests[-1].rejection.at if remaining else None,
        )

    return router
