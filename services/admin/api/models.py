"""Request and response bodies of the admin API (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from services.admin.auth import parse_duration

# As metadata.name (and the tenants table's CHECK): a lowercase DNS label, with the same message.
from services.common.tenant_config.model import TenantId

RoleName = Literal["admin", "operator", "viewer"]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# --- tokens ------------------------------------------------------------------------------------


class TokenRequest(ApiModel):
    # Only the wire names: a snake_case key is an unknown field, not a synonym.
    model_config = ConfigDict(populate_by_name=False)

    name: str = Field(min_length=1, max_length=100, description="What the token is for (shown in the audit log).")
    role: RoleName
    tenants: list[TenantId] | None = Field(
        default=None, min_length=1, description="The tenants it may see; omitted or null: every tenant."
    )
    expires_in: str | None = Field(default=None, description="Lifetime such as 12h, 30d or 8w; omitted: no expiry.")

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class Token(ApiModel):
    id: str
    name: str
    role: RoleName
    tenants: list[str] | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreatedToken(Token):
    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokenList(ApiModel):
    items: list[Token]


# --- tenants -----------------------------------------------------------------------------------


class Issue(ApiModel):
    field: str
    message: str


class TenantSummary(ApiModel):
    name: str
    version: int | None
    applied_at: datetime | None
    applied_by: str | None
    created_at: datetime


class TenantList(ApiModel):
    items: list[TenantSummary]


class Validated(ApiModel):
    name: str
    valid: Literal[True] = True
    object_pairs: int
    fields: int
    warnings: list[Issue]


class Applied(ApiModel):
    name: str
    version: int
    changed: bool
    created: bool
    warnings: list[Issue]


class Version(ApiModel):
    version: int
    sha256: str
    applied_at: datetime
    applied_by: str


class VersionList(ApiModel):
    items: list[Version]


class TenantVersion(Version):
    name: str
    document: dict[str, Any] = Field(description="The stored document with every default explicit.")


class DocumentChange(ApiModel):
    path: str
    change: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


class VersionDiff(ApiModel):
    name: str
    from_version: int = Field(alias="from")
    to_version: int = Field(alias="to")
    changes: list[DocumentChange]
    unified: str = Field(description="A unified diff of the two documents as YAML.")


# --- Salesforce connections --------------------------------------------------------------------


class ConnectionAuthorization(ApiModel):
    authorize_url: str = Field(
        description="Open it in the browser of a Salesforce user allowed to use the connected app; single use."
    )
    expires_at: datetime = Field(description="The authorization must be completed before then.")
    redirect_uri: str = Field(description="Where Salesforce sends the browser back: the connected app's callback URL.")


class SalesforceConnectionView(ApiModel):
    name: str
    auth_mode: Literal["oauth_pkce", "client_credentials", "password", "jwt_bearer"] = Field(
        description="oauth_pkce: connected through a browser (connection:authorize); the others: services sign"
        " the tenant in server-side with its configured credentials, and record each sign-in here."
    )
    status: Literal["not_connected", "connected", "needs_reconnect", "revoked", "error"]
    org_id: str | None
    user_id: str | None
    username: str | None
    instance_url: str | None
    scopes: list[str]
    connected_at: datetime | None
    connected_by: str | None
    last_refresh_at: datetime | None
    last_error: str | None
