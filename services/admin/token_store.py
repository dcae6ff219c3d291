"""API tokens in PostgreSQL (``api_tokens``, ``deploy/sql/0008_admin_api.sql``): only their hashes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.admin.audit import write_audit
from services.admin.auth import Principal, Role, new_token, token_digest, token_usable
from services.common.db import Connection

_COLUMNS = "id, name, role, tenants, created_at, created_by, expires_at, last_used_at, revoked_at"


@dataclass(frozen=True)
class TokenRecord:
    """A token as listed: everything but the secret, which is never stored."""

    id: uuid.UUID
    name: str
    role: Role
    # None: every tenant.
    tenants: tuple[str, ...] | None
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def principal(self) -> Principal:
        return Principal(
            kind="token",
            id=str(self.id),
            name=self.name,
            role=self.role,
            tenants=None if self.tenants is None else frozenset(self.tenants),
        )


def _record(row: Any) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        tenants=None if row["tenants"] is None else tuple(row["tenants"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class TokenStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def create(
        self,
        *,
        name: str,
        role: Role,
        tenants: Sequence[str] | None,
        lifetime: timedelta | None,
        actor: str,
        request_id: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token and its secret, which the caller shows once."""
        token = new_token()
        async with self._conn.transaction():
            row = await self._conn.fetchrow(
                "INSERT INTO api_tokens (id, name, token_sha256, role, tenants, created_by, expires_at)"
                " VALUES ($1, $2, $3, $4, $5::text[], $6, now() + $7::interval)"
                f" RETURNING {_COLUMNS}",
                uuid.uuid4(),
                name,
                token_digest(token),
                role.value,
                None if tenants is None else sorted(set(tenants)),
                actor,
                lifetime,
            )
            record = _record(row)
            await write_audit(
                self._conn,
                actor=actor,
                action="token.created",
                detail={
                    "tokenId": str(record.id),
                    "name": name,
                    "role": role.value,
                    "tenants": None if record.tenants is None else list(record.tenants),
                    "expiresAt": None if record.expires_at is None else record.expires_at.isoformat(),
                },
                request_id=request_id,
            )
        return record, token

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._conn.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, id")
        return [_record(row) for row in rows]

    async def revoke(self, token_id: uuid.UUID, actor: str, request_id: str | None = None) -> bool:
        """Revoke a token (again is fine); False when there is no such token."""
        async with self._conn.transaction():
            row = await self._conn.fetchrow("SELECT revoked_at FROM api_tokens WHERE id = $1 FOR UPDATE", token_id)
            if row is None:
                return False
            if row["revoked_at"] is None:
                await self._conn.execute(
                    "UPDATE api_tokens SET revoked_at = now(), revoked_by = $2 WHERE id = $1", token_id, actor
                )
                await write_audit(
                    self._conn,
                    actor=actor,
                    action="token.revoked",
                    detail={"tokenId": str(token_id)},
                    request_id=request_id,
                )
        return True

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of a usable token (known, not expired, not revoked), else None."""
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS}, now() AS now FROM api_tokens WHERE token_sha256 = $1", token_digest(token)
        )
        if row is None or not token_usable(row["expires_at"], row["revoked_at"], row["now"]):
            return None
        await self._conn.execute(
            "UPDATE api_tokens SET last_used_at = now()"
            " WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            row["id"],
        )
        return _record(row).principal()
