"""Tenants' secrets at rest: envelope encryption in PostgreSQL.

Each tenant has its own random 256-bit *data key*; it encrypts that tenant's secrets (refresh token,
access token, client secret, private key...) with AES-256-GCM, a fresh 96-bit nonce per value. The
associated data names the tenant and the purpose, so a ciphertext copied into another row, or
another tenant's row, fails to decrypt instead of handing out the wrong secret.

The database holds data keys only *wrapped* (AES-256-GCM again) by a key-encryption key (KEK)
that lives outside it, in the settings (``VAULT_KEYS``: a Kubernetes Secret or a KMS-fed variable),
with the KEK's id beside each wrapped key. A dump of the database alone reveals nothing.

Rotating the KEK: put the new key first in ``VAULT_KEYS`` and keep the old one after it, roll the
services, then run ``duplex keys rotate``; it re-wraps every data key under the new KEK in small
transactions. Values are never re-encrypted, and every reader holding both keys reads both
wrappings meanwhile, so there is no downtime. Once it reports nothing left, drop the old key.

Deleting a tenant deletes its data key; its secrets (and any copy of them in a backup) become
unreadable with it.

Plaintexts are registered with the log redactor as they pass through; the objects here never show
keys, ciphertexts or plaintexts in their ``repr``. Python cannot reliably zero memory, so plaintext
lifetimes are kept short instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.db import Connection, Pool
from services.common.logging import register_secret

KEY_BYTES = 32
NONCE_BYTES = 12
DEFAULT_ROTATION_BATCH = 100
_KEK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Purpose(StrEnum):
    """What a secret is for; part of its associated data, so values cannot swap purposes."""

    REFRESH_TOKEN = "refresh_token"
    # Written by SharedSession only: JSON {"access_token": ..., "instance_url": ...}.
    ACCESS_TOKEN = "access_token"
    CLIENT_SECRET = "client_secret"
    # PEM of the connected app's certificate key, for the JWT bearer flow.
    PRIVATE_KEY = "private_key"
    # A pending authorization's PKCE verifier: sealed with the tenant's data key, but stored beside
    # its state (oauth_authorizations), not in vault_secrets.
    PKCE_VERIFIER = "pkce_verifier"


class VaultError(Exception):
    """A secret or data key cannot be read. Messages name tenants and purposes, never values."""


class UnknownKeyError(VaultError):
    """A data key is wrapped by a KEK that is not in the keyring."""


def _parse_keys(text: str) -> tuple[str, dict[str, bytes]]:
    """``"k2:<base64>,k1:<base64>"`` → ("k2", {"k2": ..., "k1": ...}); messages never quote key material."""
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(part.strip() for part in text.split(",")):
        kek_id, separator, encoded = entry.partition(":")
        if not separator or not _KEK_ID.match(kek_id):
            msg = f"key #{position + 1}: expected <id>:<base64 of 32 bytes>, the id made of letters, digits, _ . -"
            raise ValueError(msg)
        if kek_id in keys:
            msg = f"key id {kek_id!r} appears twice"
            raise ValueError(msg)
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            msg = f"key {kek_id!r} is not valid base64"
            raise ValueError(msg) from None
        if len(key) != KEY_BYTES:
            msg = f"key {kek_id!r} is {len(key)} bytes; a KEK is {KEY_BYTES} bytes (openssl rand -base64 32)"
            raise ValueError(msg)
        keys[kek_id] = key
    return next(iter(keys)), keys


class VaultSettings(BaseSettings):
    """The vault's key-encryption keys, e.g. ``VAULT_KEYS="k2:<base64>,k1:<base64>"``.

    The first key is current: it wraps new data keys and ``duplex keys rotate`` re-wraps old ones
    under it. Keep a retired key listed until rotation reports nothing left under it. Make a key
    with ``openssl rand -base64 32``.
    """

    # A malformed key list must not be echoed back in the validation error.
    model_config = SettingsConfigDict(env_prefix="VAULT_", frozen=True, extra="ignore", hide_input_in_errors=True)

    keys: SecretStr = Field(description="Comma-separated <id>:<base64 of 32 bytes>; the first is current.")
    rotation_batch_size: int = Field(default=DEFAULT_ROTATION_BATCH, gt=0)

    @field_validator("keys")
    @classmethod
    def _well_formed(cls, value: SecretStr) -> SecretStr:
        _parse_keys(value.get_secret_value())
        return value


def vault_settings() -> VaultSettings | None:
    """``VAULT_*`` from the environment, or None when ``VAULT_KEYS`` is not set.

    Services take the vault as optional: only tenants whose tokens live in it need it. A
    ``VAULT_KEYS`` that is set but malformed still fails the start.
    """
    try:
        return VaultSettings()
    except ValidationError as exc:
        if [(e["type"], e["loc"]) for e in exc.errors()] == [("missing", ("keys",))]:
            return None
        raise


class Keyring:
    """KEKs by id, and which one is current."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            msg = f"the current key id {current!r} is not in the keyring"
            raise ValueError(msg)
        for kek_id, key in keys.items():
            if not _KEK_ID.match(kek_id) or len(key) != KEY_BYTES:
                msg = f"key {kek_id!r}: ids are letters, digits, _ . - and keys are {KEY_BYTES} bytes"
                raise ValueError(msg)
        self._keys = dict(keys)
        self._current = current

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """A keyring from ``VAULT_KEYS``' format; the key texts are registered with the log redactor."""
        current, keys = _parse_keys(text)
        for entry in text.split(","):
            register_secret(entry.partition(":")[2].strip())
        return cls(keys, current)

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> Keyring:
        return cls.parse(settings.keys.get_secret_value())

    @property
    def current(self) -> str:
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def key(self, kek_id: str) -> bytes:
        try:
            return self._keys[kek_id]
        except KeyError:
            msg = f"key-encryption key {kek_id!r} is not in the keyring (VAULT_KEYS has {', '.join(self._keys)})"
            raise UnknownKeyError(msg) from None

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, ids={self.ids!r})"


# ----------------------------------------------------------------------------------------------
# The cryptography, free of I/O.


@dataclass(frozen=True)
class WrappedKey:
    """A data key as stored: encrypted under the KEK ``kek_id``."""

    kek_id: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class Sealed:
    """A secret as stored: encrypted under its tenant's data key."""

    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


def _associated_data(kind: str, *parts: str) -> bytes:
    # JSON keeps the parts unambiguous whatever characters a tenant id may one day contain.
    return f"duplex.vault.v1/{kind}:".encode() + json.dumps(parts).encode()


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def wrap(keyring: Keyring, tenant: str, data_key: bytes) -> WrappedKey:
    """``data_key`` encrypted under the current KEK, bound to ``tenant`` and the KEK's id."""
    kek_id = keyring.current
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(keyring.key(kek_id)).encrypt(nonce, data_key, _associated_data("data-key", tenant, kek_id))
    return WrappedKey(kek_id, nonce, ciphertext)


def unwrap(keyring: Keyring, tenant: str, wrapped: WrappedKey) -> bytes:
    kek = keyring.key(wrapped.kek_id)
    try:
        return AESGCM(kek).decrypt(
            wrapped.nonce, wrapped.ciphertext, _associated_data("data-key", tenant, wrapped.kek_id)
        )
    except InvalidTag:
        msg = (
            f"the data key of tenant {tenant!r} does not decrypt under key-encryption key {wrapped.kek_id!r}"
            " (a different key under that id, or a row moved from another tenant)"
        )
        raise VaultError(msg) from None


def rewrap(keyring: Keyring, tenant: str, wrapped: WrappedKey) -> WrappedKey:
    """``wrapped`` under the current KEK; the data key itself (so every value) is unchanged."""
    if wrapped.kek_id == keyring.current:
        return wrapped
    return wrap(keyring, tenant, unwrap(keyring, tenant, wrapped))


def seal(data_key: bytes, tenant: str, purpose: Purpose, plaintext: str) -> Sealed:
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode(), _associated_data("secret", tenant, purpose))
    return Sealed(nonce, ciphertext)


def unseal(data_key: bytes, tenant: str, purpose: Purpose, sealed: Sealed) -> str:
    try:
        plain = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, _associated_data("secret", tenant, purpose))
    except InvalidTag:
        msg = f"the {purpose} secret of tenant {tenant!r} does not decrypt (altered, or moved from another row)"
        raise VaultError(msg) from None
    return plain.decode()


# ----------------------------------------------------------------------------------------------
# The store.


@dataclass(frozen=True)
class RotationReport:
    """What ``Vault.rotate`` did: data keys re-wrapped, found already current, and unreadable (by tenant)."""

    rewrapped: int
    already_current: int
    unreadable: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every data key is wrapped by the current KEK: the old ones may be dropped."""
        return not self.unreadable


_SELECT_KEY = "SELECT kek_id, nonce, wrapped_key FROM vault_data_keys WHERE tenant_id = $1"


def _wrapped(row: Any) -> WrappedKey:
    return WrappedKey(row["kek_id"], bytes(row["nonce"]), bytes(row["wrapped_key"]))


class Vault:
    """Tenants' secrets in PostgreSQL (tables ``vault_data_keys`` and ``vault_secrets``)."""

    def __init__(self, pool: Pool, keyring: Keyring, *, batch_size: int = DEFAULT_ROTATION_BATCH) -> None:
        self._pool = pool
        self._keyring = keyring
        self._batch_size = batch_size

    @property
    def pool(self) -> Pool:
        return self._pool

    def __repr__(self) -> str:
        return f"Vault(keyring={self._keyring!r})"

    async def put(self, tenant: str, purpose: Purpose, plaintext: str) -> None:
        """Store (or replace) a tenant's secret, creating the tenant's data key on first use."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self.write(conn, tenant, purpose, plaintext)

    async def get(self, tenant: str, purpose: Purpose) -> str | None:
        """A tenant's secret, or None when there is none."""
        async with self._pool.acquire() as conn:
            return await self.read(conn, tenant, purpose)

    async def delete(self, tenant: str, purpose: Purpose) -> bool:
        """Forget one secret; False when there was none."""
        async with self._pool.acquire() as conn:
            status: str = await conn.execute(
                "DELETE FROM vault_secrets WHERE tenant_id = $1 AND purpose = $2", tenant, str(purpose)
            )
        return status != "DELETE 0"

    async def delete_tenant(self, tenant: str) -> bool:
        """Forget the tenant's data key and with it every secret of the tenant; False when it had none."""
        async with self._pool.acquire() as conn:
            status: str = await conn.execute("DELETE FROM vault_data_keys WHERE tenant_id = $1", tenant)
        return status != "DELETE 0"

    async def pending_rotation(self) -> int:
        """How many data keys are not yet wrapped by the current KEK."""
        async with self._pool.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM vault_data_keys WHERE kek_id <> $1", self._keyring.current
            )
        return count

    async def rotate(self, progress: Callable[[int], None] | None = None) -> RotationReport:
        """Re-wrap every data key not under the current KEK, ``batch_size`` keys per transaction.

        Safe to run while services read and write, from several places at once, and again after an
        interruption. ``progress`` is told how many keys each batch went through.
        """
        current = self._keyring.current
        rewrapped = 0
        unreadable: list[str] = []
        after = ""
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                # Walking by tenant id gets past keys that cannot be unwrapped; NO KEY UPDATE does not
                # block writers of secrets, whose foreign key check only share-locks the key row.
                rows = await conn.fetch(
                    "SELECT tenant_id, kek_id, nonce, wrapped_key FROM vault_data_keys"
                    " WHERE kek_id <> $1 AND tenant_id > $2 ORDER BY tenant_id LIMIT $3 FOR NO KEY UPDATE",
                    current,
                    after,
                    self._batch_size,
                )
                updates = []
                for row in rows:
                    try:
                        new = rewrap(self._keyring, row["tenant_id"], _wrapped(row))
                    except VaultError:
                        unreadable.append(row["tenant_id"])
                        continue
                    updates.append((row["tenant_id"], new.kek_id, new.nonce, new.ciphertext))
                if updates:
                    await conn.executemany(
                        "UPDATE vault_data_keys SET kek_id = $2, nonce = $3, wrapped_key = $4, updated_at = now()"
                        " WHERE tenant_id = $1",
                        updates,
                    )
            if not rows:
                break
            rewrapped += len(updates)
            after = rows[-1]["tenant_id"]
            if progress is not None:
                progress(len(rows))
        async with self._pool.acquire() as conn:
            up_to_date: int = await conn.fetchval("SELECT count(*) FROM vault_data_keys WHERE kek_id = $1", current)
        return RotationReport(rewrapped=rewrapped, already_current=up_to_date - rewrapped, unreadable=tuple(unreadable))

    # On a caller's connection, inside its transaction (SharedSession holds a lock across them).

    async def read(self, conn: Connection, tenant: str, purpose: Purpose) -> str | None:
        """``get`` on ``conn``."""
        row = await conn.fetchrow(
            "SELECT k.kek_id, k.nonce, k.wrapped_key, s.nonce AS secret_nonce, s.ciphertext"
            " FROM vault_secrets s JOIN vault_data_keys k USING (tenant_id)"
            " WHERE s.tenant_id = $1 AND s.purpose = $2",
            tenant,
            str(purpose),
        )
        if row is None:
            return None
        data_key = unwrap(self._keyring, tenant, _wrapped(row))
        plaintext = unseal(data_key, tenant, purpose, Sealed(bytes(row["secret_nonce"]), bytes(row["ciphertext"])))
        register_secret(plaintext)
        return plaintext

    async def write(self, conn: Connection, tenant: str, purpose: Purpose, plaintext: str) -> None:
        """``put`` on ``conn``; call it inside a transaction."""
        register_secret(plaintext)
        data_key = await self.data_key(conn, tenant)
        sealed = seal(data_key, tenant, purpose, plaintext)
        await conn.execute(
            "INSERT INTO vault_secrets (tenant_id, purpose, nonce, ciphertext) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, purpose)"
            " DO UPDATE SET nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            tenant,
            str(purpose),
            sealed.nonce,
            sealed.ciphertext,
        )

    async def data_key(self, conn: Connection, tenant: str) -> bytes:
        """The tenant's data key, created on first use; the row stays share-locked until the
        transaction ends, so ``delete_tenant`` cannot remove it under a writer."""
        row = await conn.fetchrow(_SELECT_KEY + " FOR KEY SHARE", tenant)
        if row is not None:
            return unwrap(self._keyring, tenant, _wrapped(row))
        data_key = new_data_key()
        wrapped = wrap(self._keyring, tenant, data_key)
        created = await conn.fetchval(
            "INSERT INTO vault_data_keys (tenant_id, kek_id, nonce, wrapped_key) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id) DO NOTHING RETURNING true",
            tenant,
            wrapped.kek_id,
            wrapped.nonce,
            wrapped.ciphertext,
        )
        if created:
            return data_key
        # Another writer created it first (the insert waited for its commit); use theirs.
        row = await conn.fetchrow(_SELECT_KEY + " FOR KEY SHARE", tenant)
        if row is None:
            msg = f"the data key of tenant {tenant!r} was deleted while being created"
            raise VaultError(msg)
        return unwrap(self._keyring, tenant, _wrapped(row))


# ----------------------------------------------------------------------------------------------
# One access token per tenant, shared by every replica.


class IssuedToken(Protocol):
    """What a refresh returns (``services.common.salesforce_oauth.Token`` is one)."""

    @property
    def access_token(self) -> str: ...
    @property
    def instance_url(self) -> str: ...
    @property
    def refresh_token(self) -> str | None: ...


@dataclass(frozen=True)
class SessionToken:
    """A tenant's current access token and the instance it is good for.

    ``source`` names what the token was obtained with, when that can change under it: a tenant that
    signs in server-side stores a digest of its sign-in settings here, so a token obtained for other
    settings (another user, another org) is never served after the tenant's configuration changed.
    """

    access_token: str = field(repr=False)
    instance_url: str
    source: str | None = None

    def __post_init__(self) -> None:
        register_secret(self.access_token)

    def to_json(self) -> str:
        body = {"access_token": self.access_token, "instance_url": self.instance_url}
        if self.source is not None:
            body["source"] = self.source
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> SessionToken:
        body = json.loads(text)
        return cls(access_token=body["access_token"], instance_url=body["instance_url"], source=body.get("source"))


# Given the tenant's stored refresh token (None when it has none: the server-side sign-ins), obtain
# a new access token; may raise (ReconnectNeeded...), and then nothing is stored.
Refresh = Callable[[str | None], Awaitable[IssuedToken]]


def session_lock_key(tenant: str) -> int:
    """The transaction-level advisory lock serialising one tenant's refreshes."""
    digest = hashlib.sha256(f"duplex.vault.session/{tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SharedSession:
    """A tenant's access token, stored in the vault and refreshed once for all processes.

    ``current()`` returns the stored token (refreshing only when there is none). A caller whose
    token was refused (HTTP 401) calls ``refreshed(stale)``: under a PostgreSQL advisory lock on the
    tenant, the first caller refreshes and stores the new token; every caller after it finds a token
    other than the stale one stored and takes that instead. The refresh token is read under the same
    lock, so with refresh-token rotation no process ever presents a refresh token another one
    has just spent. A stored token whose ``source`` is not this session's counts as none.
    """

    def __init__(self, vault: Vault, tenant: str, refresh: Refresh, *, source: str | None = None) -> None:
        self._vault = vault
        self._tenant = tenant
        self._refresh = refresh
        self._source = source
        # Tasks of one process wait here rather than each holding a pooled connection on the lock.
        self._local = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SharedSession(tenant={self._tenant!r})"

    async def current(self) -> SessionToken:
        stored = await self._vault.get(self._tenant, Purpose.ACCESS_TOKEN)
        if stored is not None:
            session = SessionToken.from_json(stored)
            if session.source == self._source:
                return session
        return await self._renew(stale=None)

    async def refreshed(self, stale: SessionToken) -> SessionToken:
        """A token other than ``stale``, refreshing it unless another caller already has."""
        return await self._renew(stale=stale.access_token)

    async def _renew(self, stale: str | None) -> SessionToken:
        vault = self._vault
        async with self._local:
            # Created and committed before the lock, so a refresh callback that writes to the vault
            # on another connection never waits for this transaction's uncommitted key row.
            async with vault.pool.acquire() as conn, conn.transaction():
                await vault.data_key(conn, self._tenant)
            async with vault.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", session_lock_key(self._tenant))
                stored = await vault.read(conn, self._tenant, Purpose.ACCESS_TOKEN)
                if stored is not None:
                    session = SessionToken.from_json(stored)
                    fresh = stale is None or not hmac.compare_digest(session.access_token, stale)
                    if fresh and session.source == self._source:
                        return session
                refresh_token = await vault.read(conn, self._tenant, Purpose.REFRESH_TOKEN)
                token = await self._refresh(refresh_token)
                session = SessionToken(token.access_token, token.instance_url, self._source)
                await vault.write(conn, self._tenant, Purpose.ACCESS_TOKEN, session.to_json())
                if token.refresh_token is not None and token.refresh_token != refresh_token:
                    await vault.write(conn, self._tenant, Purpose.REFRESH_TOKEN, token.refresh_token)
                return session


async def store_grant(vault: Vault, conn: Connection, tenant: str, token: IssuedToken) -> None:
    """A new grant (a connect, a reconnect) becomes what every tenant's SharedSession serves.

    Call it inside a transaction on ``conn``: it takes SharedSession's lock, so no replica refreshes
    with the refresh token being replaced, and the tokens commit with the caller's other writes.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", session_lock_key(tenant))
    if token.refresh_token is not None:
        await vault.write(conn, tenant, Purpose.REFRESH_TOKEN, token.refresh_token)
    session = SessionToken(token.access_token, token.instance_url)
    await vault.write(conn, tenant, Purpose.ACCESS_TOKEN, session.to_json())


async def take_grant(vault: Vault, conn: Connection, tenant: str) -> str | None:
    """Forget the tenant's refresh and access tokens; the token whose revocation ends the grant (the
    refresh token, else the access token of a tenant that signs in server-side), or None.

    Inside a transaction on ``conn``, under SharedSession's lock: a rollback (the revoke failed)
    keeps both tokens, and no replica refreshes meanwhile.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", session_lock_key(tenant))
    refresh_token = await vault.read(conn, tenant, Purpose.REFRESH_TOKEN)
    access = await vault.read(conn, tenant, Purpose.ACCESS_TOKEN)
    await conn.execute(
        "DELETE FROM vault_secrets WHERE tenant_id = $1 AND purpose = ANY($2::text[])",
        tenant,
        [str(Purpose.REFRESH_TOKEN), str(Purpose.ACCESS_TOKEN)],
    )
    if refresh_token is not None:
        return refresh_token
    return SessionToken.from_json(access).access_token if access is not None else None
