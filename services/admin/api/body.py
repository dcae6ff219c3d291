"""Request bodies, read by the routes themselves (never by FastAPI) so that authentication comes first
and every body error is a problem: 415 for a media type the route does not take, 400 for a body that
does not parse, 422 for one that parses but is not valid, 413 (see :mod:`.edge`) for one too large."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from services.admin.api.problems import INVALID_DOCUMENT, MALFORMED_BODY, ApiError, FieldError, field_name
from services.admin.documents import InvalidDocumentError, MalformedDocumentError, load_json, read_tenant_document
from services.common.tenant_config import ConfigIssue, TenantConfig
from services.common.tenant_config.policy import SalesforcePolicy

M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _unsupported(accepted: Sequence[str]) -> ApiError:
    return ApiError(415, detail=f"send the body as {' or '.join(accepted)}", headers={"Accept": ", ".join(accepted)})


def _malformed(exc: MalformedDocumentError) -> ApiError:
    return ApiError(400, detail=str(exc), title="Malformed body", type=MALFORMED_BODY)


def _model_errors(model: type[BaseModel], exc: ValidationError) -> ApiError:
    allowed = ", ".join(sorted(info.alias or name for name, info in model.model_fields.items()))
    errors = []
    for error in exc.errors(include_url=False):
        if error["type"] == "extra_forbidden":
            message = f"unknown field (allowed: {allowed})"
        else:
            message = error["msg"].removeprefix("Value error, ")
        errors.append(FieldError(field_name(("body", *error["loc"])), message))
    return ApiError(422, title="Invalid request", detail="the body has invalid fields; see errors", errors=errors)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency reading the body as one JSON object valid for ``model`` (declare it after the principal)."""

    async def parse(request: Request) -> M:
        if media_type(request) != JSON:
            raise _unsupported([JSON])
        try:
            value: Any = load_json(await request.body())
        except MalformedDocumentError as exc:
            raise _malformed(exc) from None
        if not isinstance(value, dict):
            raise ApiError(422, title="Invalid request", detail="the body must be a JSON object")
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise _model_errors(model, exc) from None

    return parse


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` that documents a :func:`json_body` body."""
    schema = model.model_json_schema(by_alias=True)
    # A nested model's $defs are not where OpenAPI looks for them: written out where they are used.
    return {"requestBody": {"required": True, "content": {JSON: {"schema": _inlined(schema, schema.pop("$defs", {}))}}}}


def _inlined(schema: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inlined(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    return schema


TENANT_DOCUMENT_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One Tenant document (see deploy/examples/tenant-acme.yaml), as YAML or JSON.",
        "content": {kind: {"schema": {"type": "object"}} for kind in (JSON, *YAML_TYPES)},
    }
}


def invalid_document(detail: str, issues: Sequence[ConfigIssue]) -> ApiError:
    """A 422 for a Tenant document, one entry per issue (a field path as ``duplex config validate`` prints it)."""
    return ApiError(
        422,
        title="Invalid tenant document",
        detail=detail,
        type=INVALID_DOCUMENT,
        errors=[FieldError(issue.where, issue.message) for issue in issues],
    )


def tenant_document(policy: SalesforcePolicy) -> Callable[[Request], Awaitable[TenantConfig]]:
    """A dependency reading the one valid Tenant document in the body, as YAML or JSON, that ``policy`` allows."""

    async def parse(request: Request) -> TenantConfig:
        kind = media_type(request)
        if kind != JSON and kind not in YAML_TYPES:
            raise _unsupported([JSON, "application/yaml"])
        try:
            return read_tenant_document(await request.body(), as_yaml=kind in YAML_TYPES, policy=policy)
        except MalformedDocumentError as exc:
            raise _malformed(exc) from None
        except InvalidDocumentError as exc:
            raise invalid_document(str(exc), exc.issues) from None

    return parse
