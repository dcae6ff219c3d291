"""Reading a tenant's org schema again and storing what changed: one refresh.

A refresh reads the object list (global describe: one call), the Change Data Capture selection
(one Tooling query, when the tenant streams) and a describe per mapped object plus any named
(one call each, sent together), stores each object's new version where it changed
(:mod:`services.common.schema_store`) and logs the warnings the changes raise for the tenant's
rules in the sync log (``schema.drift``). cdc-ingest runs it on the tenant's schedule
(``spec.sync.schemaRefreshHours``); the admin API on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.db import Connection
from services.common.metrics import Metrics
from services.common.salesforce import SalesforceApiError, SalesforceClient
from services.common.schema import crm_object
from services.common.schema_drift import RuleWarning, SchemaChange, rule_warnings
from services.common.schema_store import save_catalog, save_described
from services.common.sync_log import record
from services.common.tenant_config import TenantConfig

log = logging.getLogger(__name__)

SELECTED_ENTITIES_QUERY = "SELECT SelectedEntity FROM PlatformEventChannelMember WHERE EventChannel = 'ChangeEvents'"
DRIFT_EVENT = "schema.drift"


class SchemaReader(Protocol):
    async def catalog(self) -> list[Mapping[str, Any]]:
        """Global describe's ``sobjects``."""

    async def describe(self, name: str) -> Mapping[str, Any] | None:
        """The object's describe; None when the org has no such object."""

    async def cdc_selection(self) -> list[str]:
        """The change events selected on the standard channel (``AccountChangeEvent``, ``Tier__ChangeEvent``)."""


class ClientSchemaReader:
    """:class:`SchemaReader` over a tenant's Salesforce client (each call budgeted as the client's are)."""

    def __init__(self, client: SalesforceClient) -> None:
        self._client = client

    async def catalog(self) -> list[Mapping[str, Any]]:
        response = await self._client.request("GET", f"{self._client.api_base}/sobjects")
        return list(response.json()["sobjects"])

    async def describe(self, name: str) -> Mapping[str, Any] | None:
        try:
            response = await self._client.request("GET", f"{self._client.api_base}/sobjects/{name}/describe")
        except SalesforceApiError as exc:
            if exc.http_status == 404:
                return None
            raise
        describe: Mapping[str, Any] = response.json()
        return describe

    async def cdc_selection(self) -> list[str]:
        response = await self._client.request(
            "GET", f"{self._client.api_base}/tooling/query", params={"q": SELECTED_ENTITIES_QUERY}
        )
        return [str(r["SelectedEntity"]) for r in response.json()["records"]]


def change_event_name(sobject: str) -> str:
    """``Account`` -> ``AccountChangeEvent``; ``Employee__c`` -> ``Employee__ChangeEvent``."""
    if sobject.lower().endswith("__c"):
        return f"{sobject[:-3]}__ChangeEvent"
    return f"{sobject}ChangeEvent"


def object_kind(entry: Mapping[str, Any]) -> str:
    name = str(entry["name"])
    for suffix, kind in (("__mdt", "metadata"), ("__e", "platform_event"), ("__x", "external"), ("__c", "custom")):
        if name.endswith(suffix):
            return kind
    if name.endswith("ChangeEvent") or name.endswith("Share") or name.endswith("History") or name.endswith("Feed"):
        return "system"
    return "custom" if entry.get("custom") else "standard"


def catalog_entry(entry: Mapping[str, Any], selected: frozenset[str] | None) -> dict[str, Any]:
    name = str(entry["name"])
    return {
        "name": name,
        "label": str(entry.get("label") or name),
        "custom": bool(entry.get("custom")),
        "kind": object_kind(entry),
        "queryable": bool(entry.get("queryable")),
        "createable": bool(entry.get("createable")),
        "updateable": bool(entry.get("updateable")),
        "cdcSelected": None if selected is None else change_event_name(name).lower() in selected,
    }


@dataclass(frozen=True)
class Refreshed:
    objects: tuple[str, ...]
    changes: tuple[SchemaChange, ...]
    warnings: tuple[RuleWarning, ...]
    # Objects the refresh could not describe, with why; the others were stored.
    failed: Mapping[str, str]
    api_calls: int


def objects_to_describe(config: TenantConfig, extra: Iterable[str] = ()) -> list[str]:
    """The mapped objects and ``extra``, each once (Salesforce names are case-insensitive)."""
    names: dict[str, str] = {}
    for name in [*(p.salesforce.object for p in config.spec.objects), *extra]:
        names.setdefault(name.lower(), name)
    return list(names.values())


@dataclass(frozen=True)
class OrgSchema:
    """What one refresh read, before anything is stored."""

    names: tuple[str, ...]
    catalog: Sequence[Mapping[str, Any]]
    # Lowercase change-event names selected for CDC; None when not read (the tenant does not stream).
    selected: frozenset[str] | None
    # Per name: its describe, None (no such object) or why it could not be read.
    described: Sequence[Mapping[str, Any] | str | None]

    @property
    def calls(self) -> int:
        return 1 + int(self.selected is not None) + len(self.names)


async def read_schema(config: TenantConfig, reader: SchemaReader, extra: Sequence[str] = ()) -> OrgSchema:
    """The refresh's reads, together: no database connection is held while Salesforce answers."""
    names = objects_to_describe(config, extra)
    entries, selection, *described = await asyncio.gather(
        reader.catalog(),
        reader.cdc_selection() if config.spec.sync.cdc else _none(),
        *(_attempt(reader.describe(name)) for name in names),
    )
    selected = None if selection is None else frozenset(s.lower() for s in selection)
    return OrgSchema(tuple(names), entries, selected, described)


async def store_schema(
    db: Connection, config: TenantConfig, read: OrgSchema, *, service: str, metrics: Metrics | None = None
) -> Refreshed:
    """Store what :func:`read_schema` read; the changes and the warnings they raise."""
    tenant_id = config.tenant_id
    await save_catalog(db, tenant_id, [catalog_entry(e, read.selected) for e in read.catalog])
    changes: list[SchemaChange] = []
    failed: dict[str, str] = {}
    for name, outcome in zip(read.names, read.described, strict=True):
        if isinstance(outcome, str):
            failed[name] = outcome
            continue
        obj = None if outcome is None else crm_object(outcome)
        # Stored under describe's spelling, whatever case it was asked for in.
        stored = name if obj is None else obj.name
        cdc = None if read.selected is None else change_event_name(stored).lower() in read.selected
        fields = () if outcome is None else outcome.get("fields") or ()
        changes += await save_described(db, tenant_id, stored, obj, cdc_selected=cdc, describe_fields=fields)
    warnings = await record_drift(db, config, changes, service=service, metrics=metrics)
    if changes:
        log.info("schema changed", extra={"tenant": tenant_id, "changes": len(changes), "warnings": len(warnings)})
    return Refreshed(read.names, tuple(changes), tuple(warnings), failed, read.calls)


async def refresh(
    db: Connection,
    config: TenantConfig,
    reader: SchemaReader,
    *,
    extra: Sequence[str] = (),
    service: str,
    metrics: Metrics | None = None,
) -> Refreshed:
    """Read the org's schema as the module says and store it; the changes and the warnings they raise."""
    read = await read_schema(config, reader, extra)
    return await store_schema(db, config, read, service=service, metrics=metrics)


async def record_drift(
    db: Connection,
    config: TenantConfig,
    changes: Sequence[SchemaChange],
    *,
    service: str,
    metrics: Metrics | None = None,
) -> list[RuleWarning]:
    """Log a ``schema.drift`` row (and count it) for each rule ``changes`` touch; the warnings."""
    warnings = rule_warnings(config, changes)
    for warning in warnings:
        if metrics is not None:
            labels = {
                "tenant": config.tenant_id,
                "kind": str(warning.change.kind),
                "paused": str(warning.paused).lower(),
            }
            metrics.schema_drift_warnings.labels(**labels).inc()
        await record(
            db,
            tenant_id=config.tenant_id,
            service=service,
            event=DRIFT_EVENT,
            code=str(warning.change.kind).upper(),
            message=warning.message,
            detail={
                "object_pair": warning.pair,
                "app_field": warning.app_field,
                "salesforce_field": warning.salesforce_field,
                "paused": warning.paused,
                "change": warning.change.document(),
            },
        )
    return warnings


async def _none() -> None:
    return None


async def _attempt(read: Any) -> Mapping[str, Any] | str | None:
    try:
        result: Mapping[str, Any] | None = await read
    except SalesforceApiError as exc:
        return str(exc)
    return result
