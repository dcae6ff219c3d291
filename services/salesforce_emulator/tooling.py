"""The Tooling API, narrowly: ``GET /services/data/vXX.X/tooling/query/?q=`` over one object,
PlatformEventChannelMember, which tells a client which objects the org selected for Change Data
Capture. It is answered from the org's CDC switches (``cdc_enabled`` in the seed or the admin API).

What Salesforce documents and this follows:

* one PlatformEventChannelMember per selected entity; ``SelectedEntity`` is the change event's
  name (``AccountChangeEvent``, ``Employee__ChangeEvent`` for ``Employee__c``); ``EventChannel``
  is ``ChangeEvents`` for the standard channel; ``DeveloperName`` is ``ChannelName_EventName``
  (``ChangeEvents_AccountChangeEvent``) and may not contain two consecutive underscores
  (Tooling API object reference, PlatformEventChannelMember);
* the fields the documentation queries, ``Id, DeveloperName, EventChannel, SelectedEntity``
  ("List Custom Channels and Channel Members", Platform Events Developer Guide); ids start ``0v8``
  (the ChannelMemberId in "Add Event Enrichment Fields with Tooling API");
* the Tooling QueryResult: ``size``, ``totalSize``, ``done``, ``queryLocator``,
  ``entityTypeName``, ``records``; record URLs under ``/tooling/sobjects/``;
* querying the object needs "View Setup and Configuration".

(https://developer.salesforce.com/docs/platform/api-tooling/references/tooling-objects/tooling-platformeventchannelmember.html,
https://developer.salesforce.com/docs/platform/platform-events/guide/platform-events-custom-channel-list.html,
https://developer.salesforce.com/docs/atlas.en-us.api_tooling.meta/api_tooling/tooling_api_objects_queryresult.htm,
https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_enrich_tooling_api.htm)

Chosen here, not documented: the custom object's developer name collapses ``__`` to ``_``
(``ChangeEvents_Employee_ChangeEvent``); a user without View Setup and Configuration gets
``INVALID_TYPE … is not supported`` (what third-party reports show for hidden Tooling objects);
every other Tooling object and resource is refused as unknown (``INVALID_TYPE`` for a query,
``NOT_FOUND`` for a path), because the emulator serves nothing else of the Tooling API. The
emulator has no custom channels, so every member is on ``ChangeEvents``. Results are never paged:
an org has far fewer members than one batch.

Calls pass the API gateway like every ``/services/data/`` call, so they are authenticated, subject
to injected faults and counted against the org's daily allocation.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures, whose
# Annotated aliases are local to build_tooling_router.
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from services.salesforce_emulator.changes import JsonValue
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found
from services.salesforce_emulator.orgs import OrgRegistry, derived_id
from services.salesforce_emulator.schema import FieldDef, ObjectDef
from services.salesforce_emulator.soql_engine import InMemoryRecords, RestRenderer, compile_query, execute
from services.salesforce_emulator.soql_parser import parse
from services.salesforce_emulator.versions import check_version

CHANNEL_MEMBER = "PlatformEventChannelMember"
STANDARD_CHANNEL = "ChangeEvents"
MEMBER_KEY_PREFIX = "0v8"

_MEMBER_OBJECT = ObjectDef(
    CHANNEL_MEMBER,
    MEMBER_KEY_PREFIX,
    "Platform Event Channel Member",
    "Platform Event Channel Members",
    (
        FieldDef("Id", "id", "Platform Event Channel Member ID", length=18, nillable=False, system=True),
        FieldDef("DeveloperName", "string", "Developer Name", length=80, nillable=False),
        FieldDef("EventChannel", "string", "Event Channel", length=255, nillable=False),
        FieldDef("SelectedEntity", "string", "Selected Entity", length=255, nillable=False),
    ),
    cdc_enabled=False,
)
# The Tooling API's own objects: a data object named in a Tooling query is as unknown as a typo.
_TOOLING_OBJECTS: Mapping[str, ObjectDef] = {CHANNEL_MEMBER: _MEMBER_OBJECT}


def channel_members(org_id: str, objects: Mapping[str, ObjectDef]) -> list[dict[str, JsonValue]]:
    """One member row per object selected for CDC, in REST JSON form, ids stable per org and entity."""
    rows: list[dict[str, JsonValue]] = []
    for obj in objects.values():
        if not obj.cdc_enabled:
            continue
        event = obj.change_event_name
        while "__" in event:
            event = event.replace("__", "_")
        rows.append(
            {
                "Id": derived_id(MEMBER_KEY_PREFIX, "channel-member", org_id, obj.change_event_name),
                "DeveloperName": f"{STANDARD_CHANNEL}_{event}",
                "EventChannel": STANDARD_CHANNEL,
                "SelectedEntity": obj.change_event_name,
                "IsDeleted": False,
            }
        )
    return rows


def tooling_query(
    soql: str, org_id: str, objects: Mapping[str, ObjectDef], version: str, now: datetime, *, visible: bool = True
) -> dict[str, Any]:
    """The Tooling QueryResult of ``soql`` over the org's channel members (``visible``: the caller
    may see setup objects)."""
    plan = compile_query(soql, parse(soql), _TOOLING_OBJECTS if visible else {}, now=now)
    execution = execute(plan, InMemoryRecords({CHANNEL_MEMBER: channel_members(org_id, objects)}), org_id)
    records: list[dict[str, Any]] = []
    if plan.mode != "count":
        renderer = RestRenderer(execution, version)
        data_prefix = f"/services/data/v{version}/sobjects/"
        for row in execution.rows:
            record = renderer.record(row)
            url = record["attributes"].get("url")
            if isinstance(url, str) and url.startswith(data_prefix):
                record["attributes"]["url"] = f"/services/data/v{version}/tooling/sobjects/" + url[len(data_prefix) :]
            records.append(record)
    return {
        "size": execution.count,
        "totalSize": execution.count,
        "done": True,
        "queryLocator": None,
        "entityTypeName": plan.obj.name,
        "records": records,
    }


def build_tooling_router(
    orgs: OrgRegistry, call_context: Callable[..., CallContext], *, clock: Callable[[], float] = time.time
) -> APIRouter:
    """``GET /services/data/vXX.X/tooling/query/?q=``; every other Tooling path is NOT_FOUND."""
    router = APIRouter()
    Ctx = Annotated[CallContext, Depends(call_context)]  # noqa: N806
    Soql = Annotated[str | None, Query()]  # noqa: N806

    # Both spellings are registered: redirecting ``query`` to ``query/`` would cost clients a round trip.
    @router.get("/services/data/v{version}/tooling/query")
    @router.get("/services/data/v{version}/tooling/query/")
    def query(version: str, ctx: Ctx, q: Soql = None) -> JSONResponse:
        check_version(version)
        if not q:
            raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
        org = orgs.get(ctx.org_id)
        user = org.user(ctx.user_id)
        # Without View Setup and Configuration the object does not exist for the caller.
        visible = user is not None and user.view_setup
        now = datetime.fromtimestamp(clock(), UTC)
        return JSONResponse(tooling_query(q, org.org_id, org.objects, version, now, visible=visible))

    @router.api_route("/services/data/v{version}/tooling", methods=["GET", "POST", "PATCH", "DELETE"])
    @router.api_route("/services/data/v{version}/tooling/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
    def elsewhere() -> JSONResponse:
        raise not_found()

    return router
