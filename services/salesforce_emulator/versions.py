"""API versions as Salesforce serves them.

Every release from the oldest Salesforce still serves (31.0) to the latest Duplex knows is served;
the list is the data file of :mod:`services.common.tenant_config.api_versions`, so the emulator and
Duplex's tenant validation never disagree about what exists. A retired version (below 31.0) is
answered with 410 GONE, anything else that is not a served version with 404 NOT_FOUND.

``GET /services/data/`` lists the versions (no session needed); ``GET /services/data/vXX.X`` lists
the resources of one version, including the caller's identity URL, which clients read to find out
who they are when they resume a session from stored tokens.

A few resources came after the oldest served version; below their first version they do not exist
(404 NOT_FOUND), as in Salesforce: Bulk API 2.0 ingest from 41.0 and query from 47.0, sObject
Collections from 42.0 and their upsert from 46.0 (REST API and Bulk API 2.0 developer guides).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from services.common.tenant_config.api_versions import known_api_versions, version_number
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found

_KNOWN = known_api_versions()
SUPPORTED_VERSIONS: tuple[str, ...] = _KNOWN.versions
OLDEST_VERSION = _KNOWN.oldest.version
LATEST_VERSION = _KNOWN.latest.version

# (path prefix below /services/data/vXX.X/, the first API version that has it).
_INTRODUCED: tuple[tuple[tuple[str, ...], int], ...] = (
    (("jobs", "ingest"), 41),
    (("jobs", "query"), 47),
    (("composite", "sobjects"), 42),
)
# Collections upsert: PATCH /composite/sobjects/{SObject}/{ExternalIdField}.
_COLLECTIONS_UPSERT_SINCE = 46

# The resources this emulator serves, as the version's resource map names them.
_RESOURCES = ("composite", "limits", "query", "queryAll", "sobjects", "tooling")


def gone(version: str) -> SalesforceError:
    return SalesforceError(
        410,
        "GONE",
        f"API version {version} is retired and no longer available. Use API version {OLDEST_VERSION} or later.",
    )


def check_version(version: str) -> str:
    """``version`` if Salesforce serves it; 410 GONE when it is retired, 404 NOT_FOUND otherwise."""
    if version in SUPPORTED_VERSIONS:
        return version
    if _KNOWN.is_retired(version):
        raise gone(version)
    raise not_found()


def check_resource(version: str, method: str, segments: list[str]) -> None:
    """404 NOT_FOUND when the resource at ``segments`` (below the version) came after ``version``."""
    number = version_number(version) or 0
    for prefix, since in _INTRODUCED:
        if tuple(segments[: len(prefix)]) == prefix and number < since:
            raise not_found()
    upsert = method == "PATCH" and segments[:2] == ["composite", "sobjects"] and len(segments) == 4
    if upsert and number < _COLLECTIONS_UPSERT_SINCE:
        raise not_found()


def versions_body() -> list[dict[str, str]]:
    """``GET /services/data/``: every served version, oldest first."""
    return [{"label": r.label, "url": f"/services/data/v{r.version}", "version": r.version} for r in _KNOWN.releases]


def resources_body(version: str, identity_url: str) -> dict[str, str]:
    """``GET /services/data/vXX.X``: the resources of one version and the caller's identity URL."""
    base = f"/services/data/v{version}"
    body = {name: f"{base}/{name}" for name in _RESOURCES}
    body["identity"] = identity_url
    return dict(sorted(body.items()))


def build_versions_router(
    call_context: Callable[..., CallContext], identity_url: Callable[[str, str], str]
) -> APIRouter:
    """``/services/data[/]`` and ``/services/data/vXX.X[/]`` (absolute paths; include without a prefix).

    ``identity_url(org_id, user_id)`` is the caller's ``/id/…`` URL on the login host.
    """
    router = APIRouter()
    # A default, not an Annotated alias: postponed annotations cannot see this function's locals.
    ctx_dependency = Depends(call_context)

    async def versions() -> Response:
        return _json(versions_body())

    async def resources(request: Request, ctx: CallContext = ctx_dependency) -> Response:
        version = check_version(str(request.path_params["version"]))
        return _json(resources_body(version, identity_url(ctx.org_id, ctx.user_id)))

    for path in ("/services/data", "/services/data/"):
        router.add_api_route(path, versions, methods=["GET"])
    for path in ("/services/data/v{version}", "/services/data/v{version}/"):
        router.add_api_route(path, resources, methods=["GET"])
    return router


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json;charset=UTF-8")
