"""``/api/v1/tenants/{tenant}/dead-letters``: a tenant's dead letters with their reasons, replayed to
the topic they came from once the cause is fixed, or discarded (:mod:`services.admin.dead_letters`).

Looking is any role's; replaying and discarding are run control, an operator's job. Both are
audited, and all-or-nothing: an id that is not the tenant's dead letter, or one that cannot take the
action (a discarded entry is not replayed), fails the request before anything is sent.
"""

# No `from __future__ import annotations` here: FastAPI resolves route annotations at runtime, and
# the dependencies they name are local to the router factory, out of reach of string annotations.

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, get_args

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, ConfigDict, Field, model_validator

from services.admin.api.access import Access
from services.admin.api.body import json_body, json_body_schema
from services.admin.api.models import ApiModel
from services.admin.api.problems import ApiError, invalid_request, request_id_of
from services.admin.api.tenants import stored_config
from services.admin.audit import write_audit
from services.admin.auth import Action, Principal
from services.admin.config_store import ConfigStore
from services.admin.contract import MESSAGES
from services.admin.dead_letters import (
    DLQ_SOURCES,
    DeadLetter,
    DeadLetterTopics,
    KafkaUnavailableError,
    Place,
    Selection,
    actions_of,
    record_actions,
    record_selection,
)
from services.admin.dead_letters import Action as Done
from services.common.db import Connection
from services.common.topics import Topic

SourceTopic = Literal["app_changes", "crm_changes", "mapped_changes", "crm_writes", "write_outcomes"]
State = Literal["pending", "replayed", "discarded"]
assert {str(t) for t in MESSAGES} == set(get_args(SourceTopic))
MAX_IDS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DeadLetterEntry(ApiModel):
    id: str = Field(description="`<dead-letter topic>:<partition>:<offset>`: what replay and discard take.")
    topic: SourceTopic = Field(description="The topic the record came from, and goes back to on replay.")
    state: State
    record_key: str = Field(description="`tenant/object/record` or `tenant/link`.")
    reason: str = Field(description="Why it was refused, as the refusing service said it.")
    error_class: str
    service: str
    failed_at: datetime | None
    payload: dict[str, Any] | None = Field(description="The record, decoded; null when it could not be.")
    actor: str | None = Field(description="Who replayed or discarded it.")
    acted_at: datetime | None
    discard_reason: str | None


class DeadLetterList(ApiModel):
    entries: list[DeadLetterEntry] = Field(description="Newest first.")
    total: int = Field(description="Entries matching, before `limit`.")


class ReplayRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_IDS)
    all: bool = Field(
        default=False,
        description="Every pending entry (of `topic`, `record` and failed `since`, when given), oldest first.",
    )
    topic: SourceTopic | None = None
    record: str | None = Field(
        default=None, min_length=1, max_length=255, description="With all: a record's (any of its ids)."
    )
    since: AwareDatetime | None = Field(default=None, description="With all: those that failed at or after this time.")

    @model_validator(mode="after")
    def _one_selection(self) -> Self:
        if (self.ids is None) == (not self.all):
            raise ValueError("give either ids or all: true")
        if self.ids is not None and (self.topic, self.record, self.since) != (None, None, None):
            raise ValueError("topic, record and since select with all: true; ids name their entries already")
        return self


class DiscardRequest(ApiModel):
    model_config = ConfigDict(populate_by_name=False)

    ids: list[str] = Field(min_length=1, max_length=MAX_IDS)
    reason: str = Field(min_length=1, max_length=500, description="Why (kept with the entry and audited).")


class Acted(ApiModel):
    done: list[str] = Field(description="Replayed (or discarded) now, in that order.")
    already: list[str] = Field(description="Replayed (or discarded) before: left as they were.")


def _state(done: Done | None) -> str:
    return "pending" if done is None else done.action


def _entry(letter: DeadLetter, done: Done | None) -> DeadLetterEntry:
    return DeadLetterEntry(
        id=str(letter.place),
        topic=str(letter.source),
        state=_state(done),
        record_key=letter.record_key,
        reason=letter.reason,
        error_class=letter.error_class,
        service=letter.service,
        failed_at=letter.failed_at,
        payload=letter.payload(),
        actor=done.actor if done else None,
        acted_at=done.at if done else None,
        discard_reason=done.reason if done and done.action == "discarded" else None,
    )


def _places(ids: list[str]) -> list[Place]:
    """The ids parsed, without repeats, in the order given; a 422 naming each bad one."""
    places: list[Place] = []
    errors = []
    for index, text in enumerate(ids):
        try:
            place = Place.parse(text)
        except ValueError as exc:
            errors.append({"loc": ("body", "ids", index), "msg": str(exc)})
            continue
        if place not in places:
            places.append(place)
    if errors:
        raise invalid_request(errors)
    return places


def dead_letters_router(access: Access, topics: DeadLetterTopics | None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/tenants", tags=["dead letters"])
    read = access.require(Action.READ)
    operate = access.require(Action.OPERATE)

    def kafka() -> DeadLetterTopics:
        if topics is None:
            raise ApiError(503, detail="dead letters need Kafka: set KAFKA_BOOTSTRAP_SERVERS for the admin API")
        return topics

    async def entries(tenant: str, sources: list[Topic]) -> dict[Place, DeadLetter]:
        """The tenant's dead letters of ``sources``' dead-letter topics, by place."""
        try:
            return {letter.place: letter for letter in await kafka().read(tenant, sources)}
        except KafkaUnavailableError as exc:
            raise ApiError(503, detail=str(exc)) from None

    async def select(db: Connection, tenant: str, record: str | None, since: datetime | None) -> Selection:
        ids = None if record is None else await record_selection(db, tenant, record)
        return Selection(ids, since)

    def unknown(tenant: str, places: list[Place], found: dict[Place, DeadLetter]) -> None:
        missing = [str(p) for p in places if p not in found]
        if missing:
            raise ApiError(404, detail=f"tenant '{tenant}' has no dead letter {', '.join(missing)}")

    async def act(
        db: Connection,
        tenant: str,
        principal: Principal,
        request: Request,
        chosen: list[Place],
        done: dict[Place, Done],
        action: str,
        reason: str | None,
        send: Callable[[list[Place]], Awaitable[None]] | None,
    ) -> Acted:
        """Record ``action`` on the chosen entries not acted on yet, ``send`` them, audit it."""
        async with db.transaction():
            # Recorded before sending: a send that fails rolls it back, and one whose answer is
            # lost after Kafka took it is applied at most once by the consumers (same event id).
            todo = await record_actions(
                db, tenant, sorted(p for p in chosen if p not in done), action, principal.actor, reason
            )
            if send is not None:
                await send(todo)
            await write_audit(
                db,
                actor=principal.actor,
                tenant_id=tenant,
                action=f"dead_letters.{action}",
                detail={"ids": [str(p) for p in todo]} | ({"reason": reason} if reason else {}),
                request_id=request_id_of(request),
            )
        return Acted(done=[str(p) for p in todo], already=[str(p) for p in chosen if p not in todo])

    @router.get("/{tenant}/dead-letters", response_model=DeadLetterList, summary="A tenant's dead letters")
    async def dead_letters(
        principal: Annotated[Principal, Depends(read)],
        tenant: str,
        db: Annotated[Connection, Depends(access.connection)],
        topic: Annotated[list[SourceTopic] | None, Query(description="Of these source topics only.")] = None,
        state: Annotated[list[State] | None, Query(description="In these states only.")] = None,
        record: Annotated[
            str | None, Query(min_length=1, max_length=255, description="A record's (app, Salesforce or link id).")
        ] = None,
        since: Annotated[AwareDatetime | None, Query(description="Failed at or after this time.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_IDS)] = 100,
    ) -> DeadLetterList:
        await stored_config(ConfigStore(db), tenant)
        found = await entries(tenant, [Topic(t) for t in topic or MESSAGES])
        done = await actions_of(db, tenant)
        selection = await select(db, tenant, record, since)
        listed = [
            letter
            for place, letter in found.items()
            if (state is None or _state(done.get(place)) in state) and selection.holds(letter)
        ]
        listed.sort(key=lambda letter: (letter.failed_at or _EPOCH, letter.place), reverse=True)
        # Decoded only for the page: a quarantine can leave tens of thousands of entries.
        return DeadLetterList(
            entries=[_entry(letter, done.get(letter.place)) for letter in listed[:limit]], total=len(listed)
        )

    @router.post(
        "/{tenant}/dead-letters:replay",
        response_model=Acted,
        summary="Send dead letters back to the topic they came from (same key, same event id)",
        openapi_extra=json_body_schema(ReplayRequest),
    )
    async def replay(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[ReplayRequest, Depends(json_body(ReplayRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Acted:
        await stored_config(ConfigStore(db), tenant)
        chosen = _places(body.ids) if body.ids is not None else []
        if chosen:
            sources = sorted({DLQ_SOURCES[p.topic] for p in chosen})
        else:
            sources = [Topic(body.topic)] if body.topic else list(MESSAGES)
        found = await entries(tenant, sources)
        done = await actions_of(db, tenant)
        if body.ids is not None:
            unknown(tenant, chosen, found)
            discarded = [str(p) for p in chosen if p in done and done[p].action == "discarded"]
            if discarded:
                raise ApiError(409, detail=f"discarded, so not replayed: {', '.join(discarded)}; nothing was replayed")
        else:
            selection = await select(db, tenant, body.record, body.since)
            chosen = [p for p in sorted(found) if p not in done and selection.holds(found[p])]

        async def send(todo: list[Place]) -> None:
            try:
                await kafka().replay([found[p] for p in todo])
            except KafkaUnavailableError as exc:
                raise ApiError(503, detail=f"{exc}; nothing was replayed") from None

        return await act(db, tenant, principal, request, chosen, done, "replayed", None, send)

    @router.post(
        "/{tenant}/dead-letters:discard",
        response_model=Acted,
        summary="Mark dead letters as not to be replayed, with a reason",
        openapi_extra=json_body_schema(DiscardRequest),
    )
    async def discard(
        principal: Annotated[Principal, Depends(operate)],
        tenant: str,
        body: Annotated[DiscardRequest, Depends(json_body(DiscardRequest))],
        request: Request,
        db: Annotated[Connection, Depends(access.connection)],
    ) -> Acted:
        await stored_config(ConfigStore(db), tenant)
        chosen = _places(body.ids)
        found = await entries(tenant, sorted({DLQ_SOURCES[p.topic] for p in chosen}))
        unknown(tenant, chosen, found)
        done = await actions_of(db, tenant)
        replayed = [str(p) for p in chosen if p in done and done[p].action == "replayed"]
        if replayed:
            raise ApiError(409, detail=f"replayed already, so not discarded: {', '.join(replayed)}")
        return await act(db, tenant, principal, request, chosen, done, "discarded", body.reason, None)

    return router
