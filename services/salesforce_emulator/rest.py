"""The REST data API: describe, sObject CRUD and upsert, sObject Collections, Composite, getUpdated/getDeleted.

Every ``/sobjects/…`` and ``/composite/…`` request is routed by :class:`DataApi.dispatch` on its path,
so Composite subrequests run through exactly the code that serves direct calls. Handlers are
plain functions returning a :class:`Reply`; the FastAPI layer only reads bodies and renders replies.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from services.salesforce_emulator import ids
from services.salesforce_emulator.context import CallContext
from services.salesforce_emulator.errors import SalesforceError, not_found
from services.salesforce_emulator.schema import TEXT_TYPES, FieldDef, ObjectDef
from services.salesforce_emulator.store import (
    MultipleMatchesError,
    RecordStore,
    Transaction,
    compound_address,
)
from services.salesforce_emulator.validation import (
    SOAP_TYPES,
    ObjectPlan,
    deserialize,
    format_datetime,
    parse_datetime,
    plan_for,
)
from services.salesforce_emulator.versions import check_resource, check_version

MAX_COLLECTION = 200
MAX_COMPOSITE = 25
_DAY_MS = 86_400_000

# Serves a query/queryAll URL (``/services/data/vXX.X/query/?q=…``) for a Composite subrequest.
QueryHandler = Callable[[CallContext, str, Mapping[str, str]], Any]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
    "fields": [],
}
PROCESSING_HALTED = [
    {
        "errorCode": "PROCESSING_HALTED",
        "message": "The transaction was rolled back since another operation in the same transaction failed.",
    }
]


@dataclass
class Reply:
    """An API answer before rendering: status, JSON body (None: no body) and headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def json_body(raw: bytes) -> Any:
    """Parse a request body; JSON_PARSER_ERROR as Salesforce reports it.

    Refused besides malformed JSON, as no Salesforce field can hold them: NaN and Infinity (not
    JSON), nesting deeper than the parser goes, and text with a lone surrogate (``"\\ud800"``),
    which is no Unicode text at all.
    """
    if not raw.strip():
        raise SalesforceError(400, "JSON_PARSER_ERROR", "No content to map due to end-of-input at [line:1, column:0]")
    try:
        body = json.loads(raw, parse_constant=_non_numeric_token)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line, col = (exc.lineno, exc.colno) if isinstance(exc, json.JSONDecodeError) else (1, 1)
        raise SalesforceError(
            400, "JSON_PARSER_ERROR", f"Unexpected character ({exc}) at [line:{line}, column:{col}]"
        ) from None
    except RecursionError:
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Document nesting depth exceeds the maximum allowed") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise SalesforceError(400, "JSON_PARSER_ERROR", f"Malformed numeric value ({exc})") from None
    surrogate = _lone_surrogate(body)
    if surrogate is not None:
        raise SalesforceError(
            400, "JSON_PARSER_ERROR", f"Invalid Unicode: unpaired surrogate escape {surrogate} in a JSON string"
        )
    return body


def _non_numeric_token(token: str) -> Any:
    raise SalesforceError(
        400,
        "JSON_PARSER_ERROR",
        f"Non-standard token '{token}': enable JsonParser.Feature.ALLOW_NON_NUMERIC_NUMBERS to allow",
    )


def _lone_surrogate(body: Any) -> str | None:
    """The escape of the first lone surrogate in any string or key of ``body``, else None."""
    # A stack, not recursion: the body may nest nearly as deep as the parser allowed.
    pending = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return item[exc.start].encode("ascii", "backslashreplace").decode("ascii")
    return None


def _object_body(obj: ObjectDef, body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        token = "START_ARRAY" if isinstance(body, list) else "VALUE_STRING"
        raise SalesforceError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {obj.name} from {token} value")
    return body


# --- time windows (getUpdated / getDeleted) -----------------------------------------------------


def _param_ms(params: Mapping[str, str], name: str) -> int:
    raw = params.get(name)
    if raw is None:
        raise SalesforceError(400, "MISSING_ARGUMENT", f"{name} parameter is required")
    # A '+' sent unencoded in a query string arrives as a space.
    ms = parse_datetime(raw.replace(" ", "+"))
    if ms is None:
        raise SalesforceError(400, "INVALID_REPLICATION_DATE", f"Invalid {name} date: {raw}")
    return ms - ms % 60_000


# --- describe -----------------------------------------------------------------------------------


def _urls(version: str, name: str) -> dict[str, str]:
    base = f"/services/data/v{version}/sobjects/{name}"
    return {
        "compactLayouts": f"{base}/describe/compactLayouts",
        "rowTemplate": f"{base}/{{ID}}",
        "approvalLayouts": f"{base}/describe/approvalLayouts",
        "defaultValues": f"{base}/defaultValues?recordTypeId&fields",
        "listviews": f"{base}/listviews",
        "describe": f"{base}/describe",
        "quickActions": f"{base}/quickActions",
        "layouts": f"{base}/describe/layouts",
        "sobject": base,
    }


def global_entry(obj: ObjectDef, version: str) -> dict[str, Any]:
    """One ``sobjects[]`` item of describeGlobal (also ``objectDescribe`` of basic info).

    A custom metadata type supports describe, describeLayout, query and retrieve only (object
    reference, Custom Metadata Type__mdt): not createable, updateable, deletable, replicateable
    (getUpdated/getDeleted), searchable or triggerable.
    """
    readonly = obj.name == "User"
    metadata = obj.custom_metadata
    return {
        "activateable": False,
        "associateEntityType": None,
        "associateParentEntity": None,
        "createable": not metadata,
        "custom": obj.custom,
        "customSetting": False,
        "deepCloneable": False,
        "deletable": not readonly and not metadata,
        "deprecatedAndHidden": False,
        "feedEnabled": not obj.custom,
        "hasSubtypes": False,
        "isInterface": False,
        "isSubtype": False,
        "keyPrefix": obj.key_prefix,
        "label": obj.label,
        "labelPlural": obj.label_plural,
        "layoutable": True,
        "mergeable": obj.field("MasterRecordId") is not None,
        "mruEnabled": not metadata,
        "name": obj.name,
        "queryable": True,
        "replicateable": not metadata,
        "retrieveable": True,
        "searchable": not metadata,
        "triggerable": not metadata,
        "undeletable": not readonly and not metadata,
        "updateable": not metadata,
        "urls": _urls(version, obj.name),
    }


def _byte_length(f: FieldDef) -> int:
    if f.type in ("id", "reference"):
        return 18
    if f.type in TEXT_TYPES:
        return f.length * 3
    return 0


def _extra_type_info(f: FieldDef) -> str | None:
    if f.type == "textarea":
        return "plaintextarea"
    if f.name == "Name" and f.name_field and not f.createable:
        return "personname"
    return None


def field_describe(f: FieldDef) -> dict[str, Any]:
    """A ``fields[]`` item of objectDescribe, derived from the field definition."""
    t = f.type
    long_text = t == "textarea" and f.length > 255
    numeric = t in ("int", "double", "currency", "percent")
    picklist = [
        {"active": True, "defaultValue": value == f.default_value, "label": label, "validFor": None, "value": value}
        for value, label in f.picklist_entries
    ]
    default = None if t in ("picklist", "multipicklist") else f.default_value
    return {
        "aggregatable": t not in ("textarea", "multipicklist", "address"),
        "aiPredictionField": False,
        "autoNumber": f.auto_number,
        "byteLength": _byte_length(f),
        "calculated": f.calculated,
        "calculatedFormula": f.formula,
        "cascadeDelete": False,
        "caseSensitive": False,
        "compoundFieldName": f.compound_field_name,
        "controllerName": None,
        "createable": f.createable and not f.calculated and not f.system,
        "custom": f.custom,
        "defaultValue": default,
        "defaultValueFormula": None,
        "defaultedOnCreate": f.defaulted_on_create,
        "dependentPicklist": False,
        "deprecatedAndHidden": False,
        "digits": f.precision if t == "int" else 0,
        "displayLocationInDecimal": False,
        "encrypted": False,
        "externalId": f.external_id,
        "extraTypeInfo": _extra_type_info(f),
        "filterable": not long_text and t != "address",
        "filteredLookupInfo": None,
        "formulaTreatNullNumberAsZero": False,
        "groupable": t not in ("textarea", "multipicklist", "address", "double", "currency", "percent", "datetime"),
        "highScaleNumber": False,
        "htmlFormatted": False,
        "idLookup": f.name == "Id" or f.external_id or f.unique or (f.name_field and t == "string"),
        "inlineHelpText": None,
        "label": f.label or f.name,
        "length": f.length if t in TEXT_TYPES else 0,
        "mask": None,
        "maskType": None,
        "name": f.name,
        "nameField": f.name_field,
        "namePointing": len(f.reference_to) > 1,
        "nillable": f.nillable,
        "permissionable": f.nillable and not f.system and not f.calculated and f.writable,
        "picklistValues": picklist,
        "polymorphicForeignKey": len(f.reference_to) > 1,
        "precision": f.precision if numeric and t != "int" else 0,
        "queryByDistance": False,
        "referenceTargetField": None,
        "referenceTo": list(f.reference_to),
        "relationshipName": f.relationship_name,
        "relationshipOrder": None,
        "restrictedDelete": False,
        "restrictedPicklist": False,
        "scale": f.scale if numeric else 0,
        "searchPrefilterable": t == "reference",
        "soapType": SOAP_TYPES[t],
        "sortable": not long_text and t not in ("multipicklist", "address"),
        "type": t,
        "unique": f.unique,
        "updateable": f.updateable and not f.calculated and not f.system,
        "writeRequiresMasterRead": False,
    }


def _child_lookups(obj: ObjectDef, objects: Mapping[str, ObjectDef]) -> list[tuple[ObjectDef, FieldDef]]:
    """The lookups of other objects to ``obj``: its describe's childRelationships."""
    return [
        (child, f)
        for child in objects.values()
        for f in child.fields
        if f.type == "reference" and obj.name in f.reference_to and not f.system
    ]


def object_describe(obj: ObjectDef, objects: Mapping[str, ObjectDef], version: str) -> dict[str, Any]:
    """The full objectDescribe (``GET /sobjects/{Obj}/describe``)."""
    children: list[dict[str, Any]] = [
        {
            "cascadeDelete": False,
            "childSObject": child.name,
            "deprecatedAndHidden": False,
            "field": f.name,
            "junctionIdListNames": [],
            "junctionReferenceTo": [],
            "relationshipName": child.label_plural.replace(" ", "") if f.name != "MasterRecordId" else None,
            "restrictedDelete": False,
        }
        for child, f in _child_lookups(obj, objects)
    ]
    urls = _urls(version, obj.name)
    urls.update(
        {
            "uiEditTemplate": "https://emulator/{ID}/e",
            "uiDetailTemplate": "https://emulator/{ID}",
            "uiNewRecord": f"https://emulator/{obj.key_prefix}/e",
        }
    )
    return {
        **global_entry(obj, version),
        "actionOverrides": [],
        "childRelationships": children,
        "compactLayoutable": True,
        "defaultImplementation": None,
        "extendedBy": None,
        "extendsInterfaces": None,
        "fields": [field_describe(f) for f in obj.fields],
        "implementedBy": None,
        "implementsInterfaces": None,
        "listviewable": None,
        "lookupLayoutable": None,
        "namedLayoutInfos": [],
        "networkScopeFieldName": None,
        "recordTypeInfos": [
            {
                "active": True,
                "available": True,
                "defaultRecordTypeMapping": True,
                "developerName": "Master",
                "master": True,
                "name": "Master",
                "recordTypeId": "012000000000000AAA",
                "urls": {
                    "layout": f"/services/data/v{version}/sobjects/{obj.name}/describe/layouts/012000000000000AAA"
                },
            }
        ],
        "searchLayoutable": True,
        "sobjectDescribeOption": "FULL",
        "supportedScopes": [{"label": "All " + obj.label_plural.lower(), "name": "everything"}],
        "urls": urls,
    }


# --- the data API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    method: str
    segments: list[str]
    params: dict[str, str]
    version: str
    url: str


class DataApi:
    """The data API over a store, independent of the web framework."""

    def __init__(
        self,
        store: RecordStore,
        query_handler: QueryHandler,
    ) -> None:
        self.store = store
        self._query_handler = query_handler
        # (org, object) -> the describe's inputs when last seen, and their Last-Modified (epoch ms).
        self._meta_seen: dict[tuple[str, str], tuple[object, int]] = {}

    # --- helpers ----------------------------------------------------------------------------------

    def _plan(self, ctx: CallContext, name: str) -> ObjectPlan:
        obj = self.store.object_def(ctx.org_id, name)
        if obj is None:
            raise not_found()
        return plan_for(obj)

    @contextmanager
    def _txn(self, ctx: CallContext, txn: Transaction | None) -> Iterator[Transaction]:
        # Inside a Composite allOrNone request every subrequest shares the caller's transaction.
        if txn is not None:
            with txn.savepoint():
                yield txn
        else:
            with self.store.transaction(ctx) as own:
                yield own

    def record_url(self, version: str, obj: str, record_id: str) -> str:
        return f"/services/data/v{version}/sobjects/{obj}/{record_id}"

    def render_record(
        self, plan: ObjectPlan, row: Mapping[str, Any], version: str, fields: list[str] | None = None
    ) -> dict[str, Any]:
        """A record as REST returns it: ``attributes`` first, then fields in describe order."""
        out: dict[str, Any] = {
            "attributes": {"type": plan.obj.name, "url": self.record_url(version, plan.obj.name, str(row["Id"]))}
        }
        wanted = plan.obj.fields if fields is None else [self._field(plan, n) for n in fields]
        for f in wanted:
            out[f.name] = compound_address(plan, row, f.name) if f.type == "address" else row.get(f.name)
        return out

    def _field(self, plan: ObjectPlan, name: str) -> FieldDef:
        f = plan.field(name.strip())
        if f is None:
            raise SalesforceError(
                400, "INVALID_FIELD", f"No such column '{name.strip()}' on entity '{plan.obj.name}'.", [name.strip()]
            )
        return f

    def _metadata_ms(self, org_id: str, obj: ObjectDef) -> int:
        """The describe's Last-Modified: the start of the store, moved on whenever the definition changes.

        What describe shows is the object's definition plus the lookups pointing at it (its
        childRelationships); the CDC selection is not part of it. A change moves the time to now,
        and at least one second past the previous value: If-Modified-Since has one-second
        resolution and a test clock may stand still.
        """
        key = (org_id, obj.name)
        children = tuple((child.name, f.name) for child, f in _child_lookups(obj, self.store.objects(org_id)))
        shape = (obj.key_prefix, obj.label, obj.label_plural, obj.custom, obj.fields, children)
        seen = self._meta_seen.get(key)
        if seen is not None and seen[0] == shape:
            return seen[1]
        if seen is None:
            modified = self.store.started_ms - self.store.started_ms % 1000
        else:
            now = self.store.now_ms()
            modified = max(now - now % 1000, seen[1] + 1000)
        self._meta_seen[key] = (shape, modified)
        return modified

    # --- routing ------------------------------------------------------------------------------------

    def dispatch(
        self,
        ctx: CallContext,
        method: str,
        url: str,
        body: Any,
        headers: Mapping[str, str],
        txn: Transaction | None = None,
    ) -> Reply:
        """Serve one data-API request; ``url`` is a full ``/services/data/vXX.X/…`` path with query."""
        parts = urlsplit(url)
        path = parts.path
        m = re.match(r"^/services/data/v([^/]+)/(.*)$", path)
        if not m:
            raise not_found()
        version = check_version(m.group(1))
        segments = [unquote(s) for s in m.group(2).split("/") if s]
        check_resource(version, method.upper(), segments)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = _Route(method.upper(), segments, params, version, url)
        return self._route(ctx, route, body, headers, txn)

    def _route(
        self, ctx: CallContext, r: _Route, body: Any, headers: Mapping[str, str], txn: Transaction | None
    ) -> Reply:
        s, method = r.segments, r.method
        if not s:
            raise not_found()
        head = s[0]
        if head == "sobjects":
            if len(s) == 1 and method == "GET":
                return self.describe_global(ctx, r.version)
            if len(s) == 1:
                raise _method_not_allowed(method)
            plan = self._plan(ctx, s[1])
            if len(s) == 2:
                if method == "GET":
                    return self.basic_info(ctx, plan, r.version)
                if method == "POST":
                    return self.create(ctx, plan, body, txn)
                raise _method_not_allowed(method)
            if len(s) == 3:
                sub = s[2]
                if sub == "describe" and method == "GET":
                    return self.describe(ctx, plan, r.version, headers)
                if sub == "updated" and method == "GET":
                    return self.get_updated(ctx, plan, r.params)
                if sub == "deleted" and method == "GET":
                    return self.get_deleted(ctx, plan, r.params)
                if sub.lower() == "id" and method == "POST":
                    return self.upsert(ctx, plan, "Id", None, body, r.version, txn)
                if method == "GET":
                    return self.read(ctx, plan, sub, r.params, r.version)
                if method == "PATCH":
                    return self.update(ctx, plan, sub, body, txn)
                if method == "DELETE":
                    return self.delete(ctx, plan, sub, txn)
                raise _method_not_allowed(method)
            if len(s) == 4:
                ext_field, value = s[2], s[3]
                if method == "GET":
                    return self.read_by_external_id(ctx, plan, ext_field, value, r.params, r.version)
                if method in ("PATCH", "POST"):
                    return self.upsert(ctx, plan, ext_field, value, body, r.version, txn)
                if method == "DELETE":
                    return self.delete_by_external_id(ctx, plan, ext_field, value, r.version, txn)
                raise _method_not_allowed(method)
            raise not_found()
        if head == "composite":
            if len(s) == 1 and method == "POST":
                if txn is not None:
                    raise SalesforceError(400, "INVALID_INPUT", "Composite requests cannot be nested")
                return self.composite(ctx, body, headers, r.version)
            if len(s) >= 2 and s[1] == "sobjects":
                if len(s) == 2:
                    if method == "POST":
                        return self.collection_create(ctx, body, txn)
                    if method == "PATCH":
                        return self.collection_update(ctx, body, txn)
                    if method == "DELETE":
                        return self.collection_delete(ctx, r.params, txn)
                    if method == "GET":
                        return self.collection_retrieve(ctx, r.params, r.version)
                    raise _method_not_allowed(method)
                if len(s) == 4 and method == "PATCH":
                    return self.collection_upsert(ctx, self._plan(ctx, s[2]), s[3], body, txn)
                if len(s) == 3 and method in ("GET", "POST"):
                    return self.collection_retrieve(ctx, {"sobject": s[2], **r.params}, r.version, body)
            raise not_found()
        if head in ("query", "queryAll"):
            return self.query(ctx, r.url, headers)
        raise not_found()

    # --- describe -------------------------------------------------------------------------------

    def describe_global(self, ctx: CallContext, version: str) -> Reply:
        objects = self.store.objects(ctx.org_id)
        return Reply(
            200,
            {
                "encoding": "UTF-8",
                "maxBatchSize": MAX_COLLECTION,
                "sobjects": [global_entry(o, version) for o in sorted(objects.values(), key=lambda o: o.name)],
            },
        )

    def basic_info(self, ctx: CallContext, plan: ObjectPlan, version: str) -> Reply:
        recent = []
        for rid in self.store.recent_ids(ctx.org_id, plan.obj.name):
            row = self.store.get(ctx.org_id, plan.obj.name, rid)
            if row is None:
                continue
            item: dict[str, Any] = {
                "attributes": {"type": plan.obj.name, "url": self.record_url(version, plan.obj.name, rid)},
                "Id": rid,
            }
            if plan.field("Name") is not None:
                item["Name"] = row.get("Name")
            recent.append(item)
        return Reply(200, {"objectDescribe": global_entry(plan.obj, version), "recentItems": recent})

    def describe(self, ctx: CallContext, plan: ObjectPlan, version: str, headers: Mapping[str, str]) -> Reply:
        modified_ms = self._metadata_ms(ctx.org_id, plan.obj)
        last_modified = email.utils.formatdate(modified_ms / 1000, usegmt=True)
        since = headers.get("if-modified-since")
        if since:
            try:
                since_dt = email.utils.parsedate_to_datetime(since)
            except (TypeError, ValueError):
                since_dt = None
            if since_dt is not None:
                if since_dt.tzinfo is None:
                    since_dt = since_dt.replace(tzinfo=UTC)
                if modified_ms // 1000 <= int(since_dt.timestamp()):
                    return Reply(304, None, {"Last-Modified": last_modified})
        body = object_describe(plan.obj, self.store.objects(ctx.org_id), version)
        return Reply(200, body, {"Last-Modified": last_modified})

    # --- single records -------------------------------------------------------------------------

    def create(self, ctx: CallContext, plan: ObjectPlan, body: Any, txn: Transaction | None) -> Reply:
        data = _object_body(plan.obj, body)
        with self._txn(ctx, txn) as t:
            record_id = t.create(plan.obj.name, data)
        return Reply(
            201,
            {"id": record_id, "success": True, "errors": []},
            {"Location": self.record_url(ctx.api_version, plan.obj.name, record_id)},
        )

    def _path_id(self, plan: ObjectPlan, record_id: str) -> str:
        if not ids.is_valid(record_id):
            raise SalesforceError(
                400, "MALFORMED_ID", f"{plan.obj.label} ID: id value of incorrect type: {record_id}", ["Id"]
            )
        return ids.to18(record_id)

    def read(
        self, ctx: CallContext, plan: ObjectPlan, record_id: str, params: Mapping[str, str], version: str
    ) -> Reply:
        rid = self._path_id(plan, record_id)
        row = self.store.get(ctx.org_id, plan.obj.name, rid)
        if row is None or row["IsDeleted"]:
            raise not_found()
        fields = [f for f in params["fields"].split(",") if f.strip()] if params.get("fields") else None
        return Reply(200, self.render_record(plan, row, version, fields))

    def update(self, ctx: CallContext, plan: ObjectPlan, record_id: str, body: Any, txn: Transaction | None) -> Reply:
        rid = self._path_id(plan, record_id)
        data = _object_body(plan.obj, body)
        with self._txn(ctx, txn) as t:
            t.update(plan.obj.name, rid, data)
        return Reply(204)

    def delete(self, ctx: CallContext, plan: ObjectPlan, record_id: str, txn: Transaction | None) -> Reply:
        rid = self._path_id(plan, record_id)
        with self._txn(ctx, txn) as t:
            t.delete(rid, plan.obj.name)
        return Reply(204)

    def _multiple(self, version: str, plan: ObjectPlan, record_ids: list[str]) -> Reply:
        return Reply(300, [self.record_url(version, plan.obj.name, rid) for rid in record_ids])

    def _ext_matches(self, ctx: CallContext, plan: ObjectPlan, ext_field: str, value: str) -> list[str]:
        f = plan.field(ext_field)
        if f is None or not (f.external_id or f.unique or f.name_field or f.name == "Id"):
            raise SalesforceError(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {ext_field}"
            )
        if f.name == "Id":
            row = self.store.get(ctx.org_id, plan.obj.name, value) if ids.is_valid(value) else None
            return [str(row["Id"])] if row is not None and not row["IsDeleted"] else []
        if f.external_id or f.unique:
            from services.salesforce_emulator.validation import coerce

            return self.store.find_ids(ctx.org_id, plan.obj.name, f.name, coerce(f, value, "csv"))
        return [str(row["Id"]) for row in self.store.rows(ctx.org_id, plan.obj.name) if row.get(f.name) == value]

    def read_by_external_id(
        self, ctx: CallContext, plan: ObjectPlan, ext_field: str, value: str, params: Mapping[str, str], version: str
    ) -> Reply:
        matches = self._ext_matches(ctx, plan, ext_field, value)
        if not matches:
            raise not_found()
        if len(matches) > 1:
            return self._multiple(version, plan, matches)
        row = self.store.get(ctx.org_id, plan.obj.name, matches[0])
        assert row is not None
        fields = [f for f in params["fields"].split(",") if f.strip()] if params.get("fields") else None
        return Reply(200, self.render_record(plan, row, version, fields))

    def delete_by_external_id(
        self, ctx: CallContext, plan: ObjectPlan, ext_field: str, value: str, version: str, txn: Transaction | None
    ) -> Reply:
        matches = self._ext_matches(ctx, plan, ext_field, value)
        if not matches:
            raise not_found()
        if len(matches) > 1:
            return self._multiple(version, plan, matches)
        with self._txn(ctx, txn) as t:
            t.delete(matches[0], plan.obj.name)
        return Reply(204)

    def upsert(
        self,
        ctx: CallContext,
        plan: ObjectPlan,
        ext_field: str,
        value: str | None,
        body: Any,
        version: str,
        txn: Transaction | None,
    ) -> Reply:
        data = _object_body(plan.obj, body)
        with self._txn(ctx, txn) as t:
            f = t.external_field(plan, ext_field)
            values, body_id = deserialize(plan, data)
            if body_id is not None:
                raise SalesforceError(
                    400, "INVALID_FIELD", "The Id field should not be specified in the sobject data.", ["Id"]
                )
            if f.name != "Id" and f.name in values:
                raise SalesforceError(
                    400,
                    "INVALID_FIELD",
                    f"The external ID field {f.name} should not be specified in the sobject data; "
                    "its value is taken from the URL.",
                    [f.name],
                )
            if f.name == "Id" and value is not None:
                self._path_id(plan, value)
            multiple: Reply | None = None
            try:
                record_id, created = t.upsert_values(plan, f.name, value, values)
            except MultipleMatchesError as exc:
                multiple = self._multiple(version, plan, exc.record_ids)
        if multiple is not None:
            return multiple
        return Reply(
            201 if created else 200,
            {"id": record_id, "success": True, "errors": [], "created": created},
            {"Location": self.record_url(version, plan.obj.name, record_id)} if created else {},
        )

    # --- getUpdated / getDeleted ----------------------------------------------------------------

    def _window(self, params: Mapping[str, str], max_days: int) -> tuple[int, int, int]:
        start, end = _param_ms(params, "start"), _param_ms(params, "end")
        now = self.store.now_ms()
        now_floor = now - now % 60_000
        if end <= start:
            raise SalesforceError(400, "INVALID_REPLICATION_DATE", "endDate must chronologically follow the startDate")
        if start < now - max_days * _DAY_MS:
            raise SalesforceError(400, "INVALID_REPLICATION_DATE", f"startDate cannot be more than {max_days} days ago")
        covered = min(end, now_floor)
        return start, end, covered

    def get_updated(self, ctx: CallContext, plan: ObjectPlan, params: Mapping[str, str]) -> Reply:
        start, _end, covered = self._window(params, 30)
        found = self.store.updated_ids(ctx.org_id, plan.obj.name, start, covered)
        if len(found) > 600_000:
            raise SalesforceError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot return more than 600000 ids")
        return Reply(200, {"ids": found, "latestDateCovered": format_datetime(covered)})

    def get_deleted(self, ctx: CallContext, plan: ObjectPlan, params: Mapping[str, str]) -> Reply:
        start, _end, covered = self._window(params, 15)
        found = self.store.deleted_records(ctx.org_id, plan.obj.name, start, covered)
        if len(found) > 600_000:
            raise SalesforceError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot return more than 600000 ids")
        earliest = self.store.started_ms - self.store.started_ms % 60_000
        earliest = max(earliest, self.store.now_ms() - 15 * _DAY_MS)
        return Reply(
            200,
            {
                "deletedRecords": [{"id": rid, "deletedDate": format_datetime(ms)} for rid, ms in found],
                "earliestDateAvailable": format_datetime(earliest - earliest % 60_000),
                "latestDateCovered": format_datetime(covered),
            },
        )

    # --- sObject Collections --------------------------------------------------------------------

    def _collection_body(self, body: Any) -> tuple[list[Any], bool]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records array")
        records = body["records"]
        if len(records) > MAX_COLLECTION:
            raise _too_many()
        return records, bool(body.get("allOrNone", False))

    def _record_plan(self, ctx: CallContext, record: Any) -> ObjectPlan:
        if not isinstance(record, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of SObject")
        attrs = record.get("attributes")
        type_name = attrs.get("type") if isinstance(attrs, dict) else None
        if not type_name:
            raise SalesforceError(400, "INVALID_TYPE", "Must specify a type for each sObject in the attributes")
        obj = self.store.object_def(ctx.org_id, str(type_name))
        if obj is None:
            raise SalesforceError(400, "INVALID_TYPE", f"sObject type '{type_name}' is not supported.")
        return plan_for(obj)

    def _run_items(
        self,
        ctx: CallContext,
        txn: Transaction | None,
        all_or_none: bool,
        ops: list[Callable[[Transaction], dict[str, Any]]],
        ids_for_errors: list[str | None],
    ) -> list[dict[str, Any]]:
        """Run per-record operations in one transaction; failed items keep their real error."""
        results: list[dict[str, Any] | None] = [None] * len(ops)
        failed = False

        class _RollBackError(Exception):
            pass

        try:
            with self._txn(ctx, txn) as t:
                for i, op in enumerate(ops):
                    try:
                        results[i] = op(t)
                    except SalesforceError as exc:
                        failed = True
                        item: dict[str, Any] = {"success": False, "errors": [_item_error(exc)]}
                        if ids_for_errors[i] is not None:
                            item = {"id": ids_for_errors[i], **item}
                        results[i] = item
                if failed and all_or_none:
                    raise _RollBackError
        except _RollBackError:
            pass
        out: list[dict[str, Any]] = []
        for i, res in enumerate(results):
            assert res is not None
            if failed and all_or_none and res["success"]:
                rolled: dict[str, Any] = {"success": False, "errors": [dict(ROLLED_BACK)]}
                if ids_for_errors[i] is not None:
                    rolled = {"id": ids_for_errors[i], **rolled}
                if "created" in res:
                    rolled["created"] = res["created"]
                out.append(rolled)
            else:
                out.append(res)
        return out

    def collection_create(self, ctx: CallContext, body: Any, txn: Transaction | None) -> Reply:
        records, all_or_none = self._collection_body(body)
        prepared = []
        for record in records:
            plan = self._record_plan(ctx, record)
            values, body_id = deserialize(plan, record)
            prepared.append((plan, values, body_id))

        def make(plan: ObjectPlan, values: dict[str, Any], body_id: str | None) -> Callable[[Transaction], Any]:
            def op(t: Transaction) -> dict[str, Any]:
                if body_id is not None:
                    raise SalesforceError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                return {"id": t.create_values(plan, values), "success": True, "errors": []}

            return op

        ops = [make(p, v, b) for p, v, b in prepared]
        return Reply(200, self._run_items(ctx, txn, all_or_none, ops, [None] * len(ops)))

    def collection_update(self, ctx: CallContext, body: Any, txn: Transaction | None) -> Reply:
        records, all_or_none = self._collection_body(body)
        prepared = []
        for record in records:
            plan = self._record_plan(ctx, record)
            values, body_id = deserialize(plan, record)
            prepared.append((plan, values, body_id))

        def make(plan: ObjectPlan, values: dict[str, Any], body_id: str | None) -> Callable[[Transaction], Any]:
            def op(t: Transaction) -> dict[str, Any]:
                if body_id is None:
                    raise SalesforceError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
                if not ids.is_valid(body_id):
                    raise SalesforceError(400, "MALFORMED_ID", f"malformed id {body_id}", ["Id"])
                if body_id[:3] != plan.obj.key_prefix:
                    raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["Id"])
                rid = ids.to18(body_id)
                try:
                    t.update_values(plan, rid, values)
                except SalesforceError as exc:
                    raise _as_item(exc) from None
                return {"id": rid, "success": True, "errors": []}

            return op

        ops = [make(p, v, b) for p, v, b in prepared]
        ids_for_errors = [ids.to18(b) if b and ids.is_valid(b) else b for _, _, b in prepared]
        return Reply(200, self._run_items(ctx, txn, all_or_none, ops, ids_for_errors))

    def collection_upsert(
        self, ctx: CallContext, plan: ObjectPlan, ext_field: str, body: Any, txn: Transaction | None
    ) -> Reply:
        records, all_or_none = self._collection_body(body)
        f = plan.field(ext_field)
        if f is None or (not f.external_id and f.name != "Id"):
            raise SalesforceError(
                404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {ext_field}"
            )
        prepared = []
        counts: dict[Any, int] = {}
        for record in records:
            rplan = self._record_plan(ctx, record) if isinstance(record, dict) and record.get("attributes") else plan
            if rplan.obj.name != plan.obj.name:
                raise SalesforceError(400, "INVALID_TYPE", "All records must be of the type named in the URL")
            values, body_id = deserialize(plan, record if isinstance(record, dict) else {})
            key = body_id if f.name == "Id" else values.pop(f.name, None)
            prepared.append((values, key))
            if key is not None:
                lowered = key.lower() if isinstance(key, str) else key
                counts[lowered] = counts.get(lowered, 0) + 1

        def make(values: dict[str, Any], key: Any) -> Callable[[Transaction], Any]:
            def op(t: Transaction) -> dict[str, Any]:
                if key is None:
                    raise SalesforceError(400, "MISSING_ARGUMENT", f"{f.name} not specified", [f.name])
                if counts.get(key.lower() if isinstance(key, str) else key, 0) > 1:
                    raise SalesforceError(
                        400, "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {key}", [f.name]
                    )
                try:
                    rid, created = t.upsert_values(plan, f.name, key, values)
                except MultipleMatchesError as exc:
                    raise SalesforceError(
                        400,
                        "DUPLICATE_EXTERNAL_ID",
                        f"{f.name}: more than one record found for external id field: {exc.record_ids}",
                        [f.name],
                    ) from None
                return {"id": rid, "success": True, "errors": [], "created": created}

            return op

        ops = [make(v, k) for v, k in prepared]
        results = self._run_items(ctx, txn, all_or_none, ops, [None] * len(ops))
        for item in results:
            item.setdefault("created", False)
        return Reply(200, results)

    def collection_delete(self, ctx: CallContext, params: Mapping[str, str], txn: Transaction | None) -> Reply:
        raw_ids = [i for i in params.get("ids", "").split(",") if i]
        if not raw_ids:
            raise SalesforceError(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(raw_ids) > MAX_COLLECTION:
            raise _too_many()
        all_or_none = params.get("allOrNone", "false").lower() == "true"

        def make(rid: str) -> Callable[[Transaction], Any]:
            def op(t: Transaction) -> dict[str, Any]:
                if not ids.is_valid(rid):
                    raise SalesforceError(400, "MALFORMED_ID", f"malformed id {rid}")
                try:
                    deleted = t.delete(rid)
                except SalesforceError as exc:
                    raise _as_item(exc) from None
                return {"id": deleted, "success": True, "errors": []}

            return op

        ops = [make(rid) for rid in raw_ids]
        ids_for_errors: list[str | None] = [ids.to18(r) if ids.is_valid(r) else r for r in raw_ids]
        return Reply(200, self._run_items(ctx, txn, all_or_none, ops, ids_for_errors))

    def collection_retrieve(self, ctx: CallContext, params: Mapping[str, str], version: str, body: Any = None) -> Reply:
        plan = self._plan(ctx, params.get("sobject", ""))
        wanted = params.get("ids", "")
        fields_param = params.get("fields", "")
        if isinstance(body, dict):
            wanted = ",".join(body.get("ids", []))
            fields_param = ",".join(body.get("fields", []))
        id_list = [i for i in wanted.split(",") if i]
        if len(id_list) > 2000:
            raise _too_many()
        fields = [f for f in fields_param.split(",") if f.strip()] or None
        out: list[Any] = []
        for rid in id_list:
            row = self.store.get(ctx.org_id, plan.obj.name, rid) if ids.is_valid(rid) else None
            out.append(None if row is None or row["IsDeleted"] else self.render_record(plan, row, version, fields))
        return Reply(200, out)

    # --- query (delegated) ----------------------------------------------------------------------

    def query(self, ctx: CallContext, url: str, headers: Mapping[str, str]) -> Reply:
        return Reply(200, self._query_handler(ctx, url, headers))

    # --- Composite ------------------------------------------------------------------------------

    def composite(self, ctx: CallContext, body: Any, headers: Mapping[str, str], version: str) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "compositeRequest is required")
        subrequests: list[Any] = body["compositeRequest"]
        if len(subrequests) > MAX_COMPOSITE:
            raise SalesforceError(
                400, "LIMIT_EXCEEDED", f"Composite requests cannot contain more than {MAX_COMPOSITE} subrequests"
            )
        ref_ids: set[str] = set()
        for sub in subrequests:
            if not isinstance(sub, dict) or not sub.get("method") or not sub.get("url") or not sub.get("referenceId"):
                raise SalesforceError(400, "INVALID_INPUT", "Each subrequest needs a method, a url and a referenceId")
            if sub["referenceId"] in ref_ids:
                raise SalesforceError(400, "INVALID_INPUT", f"Duplicate referenceId: {sub['referenceId']}")
            ref_ids.add(sub["referenceId"])
        all_or_none = bool(body.get("allOrNone", False))
        if all_or_none:
            return self._composite_all_or_none(ctx, subrequests, headers)
        results: dict[str, Any] = {}
        failed: set[str] = set()
        out = [self._run_sub(ctx, sub, results, failed, headers, None) for sub in subrequests]
        return Reply(200, {"compositeResponse": out})

    def _composite_all_or_none(self, ctx: CallContext, subrequests: list[Any], headers: Mapping[str, str]) -> Reply:
        results: dict[str, Any] = {}
        failed: set[str] = set()
        out: list[dict[str, Any]] = []

        class _RollBackError(Exception):
            pass

        try:
            with self.store.transaction(ctx) as txn:
                for sub in subrequests:
                    item = self._run_sub(ctx, sub, results, failed, headers, txn)
                    out.append(item)
                    if item["httpStatusCode"] >= 400:
                        raise _RollBackError
        except _RollBackError:
            failed_ref = out[-1]["referenceId"]
            halted = []
            for sub in subrequests:
                if sub["referenceId"] == failed_ref:
                    halted.append(out[-1])
                else:
                    halted.append(
                        {
                            "body": PROCESSING_HALTED,
                            "httpHeaders": {},
                            "httpStatusCode": 400,
                            "referenceId": sub["referenceId"],
                        }
                    )
            return Reply(200, {"compositeResponse": halted})
        return Reply(200, {"compositeResponse": out})

    def _run_sub(
        self,
        ctx: CallContext,
        sub: Mapping[str, Any],
        results: dict[str, Any],
        failed: set[str],
        headers: Mapping[str, str],
        txn: Transaction | None,
    ) -> dict[str, Any]:
        ref = str(sub["referenceId"])
        try:
            url = _resolve_refs(str(sub["url"]), results, failed, url=True)
            body = _resolve_refs(sub.get("body"), results, failed, url=False)
            sub_headers = {k.lower(): str(v) for k, v in (sub.get("httpHeaders") or {}).items()}
            reply = self.dispatch(ctx, str(sub["method"]), url, body, {**headers, **sub_headers}, txn)
        except SalesforceError as exc:
            failed.add(ref)
            return {"body": exc.rest_body(), "httpHeaders": {}, "httpStatusCode": exc.http_status, "referenceId": ref}
        if reply.status >= 400:
            failed.add(ref)
        else:
            results[ref] = reply.body
        return {"body": reply.body, "httpHeaders": reply.headers, "httpStatusCode": reply.status, "referenceId": ref}


_REF = re.compile(r"@\{([^}]+)\}")


def _lookup_ref(expr: str, results: Mapping[str, Any], failed: set[str]) -> Any:
    # The referenceId ends at the first '.' or '[': ``@{ref.id}``, ``@{ref[0].id}``.
    m = re.match(r"^([^.\[]+)(.*)$", expr)
    ref, path = (m.group(1), m.group(2)) if m else (expr, "")
    if ref in failed or ref not in results:
        raise SalesforceError(
            400,
            "PROCESSING_HALTED",
            f"Invalid reference specification. No value for {expr} found in {ref}. "
            f"Provided referenceId ('{ref}') must match a referenceId of a previous successful subrequest.",
        )
    value: Any = results[ref]
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            value = value[int(part[1:-1])] if part.startswith("[") else value[part]
        except (KeyError, IndexError, TypeError):
            raise SalesforceError(
                400, "PROCESSING_HALTED", f"Invalid reference specification. No value for {expr} found in {ref}."
            ) from None
    return value


def _resolve_refs(value: Any, results: Mapping[str, Any], failed: set[str], *, url: bool) -> Any:
    """Replace ``@{ref.path}`` in a subrequest's url or body; a whole-string reference keeps the JSON type."""
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole and not url:
            return _lookup_ref(whole.group(1), results, failed)
        return _REF.sub(lambda m: str(_lookup_ref(m.group(1), results, failed)), value)
    if isinstance(value, list):
        return [_resolve_refs(v, results, failed, url=url) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_refs(v, results, failed, url=url) for k, v in value.items()}
    return value


def _item_error(exc: SalesforceError) -> dict[str, Any]:
    return exc.item_error()


def _as_item(exc: SalesforceError) -> SalesforceError:
    # A missing record is a bad reference when it appears inside a collection.
    if exc.error_code == "NOT_FOUND":
        return SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
    return exc


def _too_many() -> SalesforceError:
    return SalesforceError(
        400,
        "EXCEEDED_ID_LIMIT",
        f"record limit reached. cannot submit more than {MAX_COLLECTION} records into this call",
    )


def _method_not_allowed(method: str) -> SalesforceError:
    return SalesforceError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,POST")


# --- FastAPI layer ------------------------------------------------------------------------------


def render(reply: Reply) -> Response:
    if reply.body is None or reply.status in (204, 304):
        return Response(status_code=reply.status, headers=reply.headers)
    return Response(
        _dumps(reply.body), status_code=reply.status, headers=reply.headers, media_type="application/json;charset=UTF-8"
    )


def build_data_router(
    store: RecordStore,
    call_context: Callable[..., Any],
    *,
    query_handler: QueryHandler,
) -> APIRouter:
    """Routes for the ``sobjects``/``composite`` resources of every version.

    Paths are absolute (include the router without a prefix). ``call_context`` is a FastAPI
    dependency returning the authenticated :class:`CallContext`; ``query_handler`` serves the
    query/queryAll subrequests of Composite calls.
    """
    api = DataApi(store, query_handler)
    router = APIRouter()
    # A default, not an Annotated alias: postponed annotations cannot see this function's locals.
    ctx_dependency = Depends(call_context)

    async def handle(request: Request, ctx: CallContext = ctx_dependency) -> Response:
        version = request.path_params.get("version", "")
        check_version(str(version))
        raw = await request.body()
        body: Any = None
        if request.method in ("POST", "PATCH", "PUT"):
            body = json_body(raw)
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await run_in_threadpool(api.dispatch, ctx, request.method, url, body, headers)
        return render(reply)

    methods = ["GET", "POST", "PATCH", "DELETE"]
    for resource in ("sobjects", "composite"):
        router.add_api_route(f"/services/data/v{{version}}/{resource}", handle, methods=methods)
        router.add_api_route(f"/services/data/v{{version}}/{resource}/{{rest:path}}", handle, methods=methods)
    return router


__all__ = [
    "DataApi",
    "Reply",
    "build_data_router",
    "field_describe",
    "global_entry",
    "object_describe",
]
