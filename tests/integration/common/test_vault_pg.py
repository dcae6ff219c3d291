"""The vault against a real PostgreSQL: storage, AAD binding in place, rotation, the dump, one refresh."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from devstack.paths import POSTGRES_BIN_DIR
from services.admin.vault_cli import keys_app
from services.common.db import migrate
from services.common.salesforce_oauth import ReconnectNeeded
from services.common.vault import Keyring, Purpose, SessionToken, SharedSession, Vault, VaultError

pytestmark = pytest.mark.integration

K1 = secrets.token_bytes(32)
K2 = secrets.token_bytes(32)
OLD = Keyring({"k1": K1}, "k1")
BOTH = Keyring({"k2": K2, "k1": K1}, "k2")
NEW = Keyring({"k2": K2}, "k2")
INSTANCE = "https://acme.my.salesforce.example"


def keys_text(*pairs: tuple[str, bytes]) -> str:
    return ",".join(f"{kek_id}:{base64.b64encode(key).decode()}" for kek_id, key in pairs)


@pytest.fixture
async def dsn(fresh_database: str) -> str:
    await migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as created:
        yield created


def secret(tenant: str, purpose: Purpose) -> str:
    # Distinct, recognisable and long enough to be found in a dump.
    return f"plaintext-{tenant}-{purpose}-{secrets.token_hex(12)}"


async def test_put_get_replace_and_delete(pool: asyncpg.Pool) -> None:
    vault = Vault(pool, OLD)
    first, second = secret("acme", Purpose.REFRESH_TOKEN), secret("acme", Purpose.REFRESH_TOKEN)

    assert await vault.get("acme", Purpose.REFRESH_TOKEN) is None
    await vault.put("acme", Purpose.REFRESH_TOKEN, first)
    await vault.put("acme", Purpose.CLIENT_SECRET, "client-secret")
    assert await vault.get("acme", Purpose.REFRESH_TOKEN) == first
    await vault.put("acme", Purpose.REFRESH_TOKEN, second)
    assert await vault.get("acme", Purpose.REFRESH_TOKEN) == second

    assert await vault.delete("acme", Purpose.REFRESH_TOKEN)
    assert not await vault.delete("acme", Purpose.REFRESH_TOKEN)
    assert await vault.get("acme", Purpose.REFRESH_TOKEN) is None
    assert await vault.get("acme", Purpose.CLIENT_SECRET) == "client-secret"

    assert await vault.delete_tenant("acme")
    assert await vault.get("acme", Purpose.CLIENT_SECRET) is None
    assert await pool.fetchval("SELECT count(*) FROM vault_secrets") == 0
    assert not await vault.delete_tenant("acme")


async def test_concurrent_first_writes_share_one_data_key(pool: asyncpg.Pool) -> None:
    vault = Vault(pool, OLD)
    purposes = list(Purpose)
    values = [secret("acme", p) for p in purposes]

    await asyncio.gather(*(vault.put("acme", p, v) for p, v in zip(purposes, values, strict=True)))

    assert await pool.fetchval("SELECT count(*) FROM vault_data_keys") == 1
    assert [await vault.get("acme", p) for p in purposes] == values


@pytest.mark.parametrize(("tenant", "purpose"), [("globex", Purpose.REFRESH_TOKEN), ("acme", Purpose.CLIENT_SECRET)])
async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(
    pool: asyncpg.Pool, tenant: str, purpose: Purpose
) -> None:
    vault = Vault(pool, OLD)
    stolen = secret("acme", Purpose.REFRESH_TOKEN)
    await vault.put("acme", Purpose.REFRESH_TOKEN, stolen)
    await vault.put("acme", Purpose.CLIENT_SECRET, "acme-client-secret")
    await vault.put("globex", Purpose.REFRESH_TOKEN, "globex-refresh")
    if tenant != "acme":
        # Give globex acme's data key as well, so only the associated data stands in the way.
        await pool.execute(
            "UPDATE vault_data_keys g SET kek_id = a.kek_id, nonce = a.nonce, wrapped_key = a.wrapped_key"
            " FROM vault_data_keys a WHERE a.tenant_id = 'acme' AND g.tenant_id = 'globex'"
        )

    await pool.execute(
        "UPDATE vault_secrets t SET nonce = s.nonce, ciphertext = s.ciphertext FROM vault_secrets s"
        " WHERE s.tenant_id = 'acme' AND s.purpose = 'refresh_token' AND t.tenant_id = $1 AND t.purpose = $2",
        tenant,
        str(purpose),
    )

    with pytest.raises(VaultError) as raised:
        await vault.get(tenant, purpose)
    assert stolen not in str(raised.value)
    assert await vault.get("acme", Purpose.REFRESH_TOKEN) == stolen


async def test_rotation_rewraps_every_key_in_batches_and_old_plus_new_reads_throughout(pool: asyncpg.Pool) -> None:
    tenants = [f"tenant-{n}" for n in range(5)]
    values = {t: secret(t, Purpose.REFRESH_TOKEN) for t in tenants}
    old = Vault(pool, OLD)
    for tenant, value in values.items():
        await old.put(tenant, Purpose.REFRESH_TOKEN, value)
    rotating = Vault(pool, BOTH, batch_size=2)
    # Written during the rotation window: wrapped by the new key from the start.
    await rotating.put("late", Purpose.REFRESH_TOKEN, "late-refresh-token")
    before = {r["tenant_id"]: bytes(r["wrapped_key"]) for r in await pool.fetch("SELECT * FROM vault_data_keys")}

    assert await rotating.pending_rotation() == 5
    assert [await rotating.get(t, Purpose.REFRESH_TOKEN) for t in tenants] == list(values.values())
    batches: list[int] = []
    report = await rotating.rotate(progress=batches.append)

    assert (report.rewrapped, report.already_current, report.unreadable) == (5, 1, ())
    assert batches == [2, 2, 1]
    rows = await pool.fetch("SELECT tenant_id, kek_id, wrapped_key FROM vault_data_keys")
    assert {r["kek_id"] for r in rows} == {"k2"}
    assert all(bytes(r["wrapped_key"]) != before[r["tenant_id"]] for r in rows if r["tenant_id"] != "late")
    new_only = Vault(pool, NEW)
    assert [await new_only.get(t, Purpose.REFRESH_TOKEN) for t in tenants] == list(values.values())
    assert await new_only.get("late", Purpose.REFRESH_TOKEN) == "late-refresh-token"
    with pytest.raises(VaultError):
        await old.get(tenants[0], Purpose.REFRESH_TOKEN)

    again = await rotating.rotate()
    assert (again.rewrapped, again.already_current) == (0, 6)


async def test_rotation_reports_keys_it_cannot_unwrap_and_rotates_the_rest(pool: asyncpg.Pool) -> None:
    await Vault(pool, Keyring({"lost": secrets.token_bytes(32)}, "lost")).put("orphan", Purpose.REFRESH_TOKEN, "x" * 8)
    await Vault(pool, OLD).put("acme", Purpose.REFRESH_TOKEN, "acme-refresh")

    report = await Vault(pool, BOTH, batch_size=1).rotate()

    assert (report.rewrapped, report.unreadable, report.complete) == (1, ("orphan",), False)
    assert await Vault(pool, NEW).get("acme", Purpose.REFRESH_TOKEN) == "acme-refresh"


async def test_a_dump_after_storing_and_rotating_holds_no_plaintext(pool: asyncpg.Pool, dsn: str) -> None:
    values = [secret(t, p) for t in ("acme", "globex") for p in Purpose]
    vault = Vault(pool, OLD)
    for value in values:
        tenant, purpose = value.split("-")[1], Purpose(value.split("-")[2])
        await vault.put(tenant, purpose, value)
    await Vault(pool, BOTH).rotate()

    dump = await asyncio.to_thread(
        subprocess.run,
        [str(POSTGRES_BIN_DIR / "pg_dump"), "--data-only", "--dbname", dsn],
        capture_output=True,
        text=True,
        check=True,
    )

    # The dump does hold the vault's rows: 2 data keys under k2, 8 secrets.
    assert "COPY public.vault_secrets" in dump.stdout
    assert dump.stdout.count("\tk2\t") == 2
    leaked = [v for v in values if v in dump.stdout or v.encode().hex() in dump.stdout]
    assert leaked == []
    assert K1.hex() not in dump.stdout
    assert K2.hex() not in dump.stdout


@dataclass(frozen=True)
class Issued:
    access_token: str
    instance_url: str
    refresh_token: str | None = None


class CountingRefresh:
    """A refresh that takes a while (so callers overlap) and rotates the refresh token."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def __call__(self, refresh_token: str | None) -> Issued:
        self.calls.append(refresh_token)
        await asyncio.sleep(0.3)
        n = len(self.calls)
        return Issued(f"access-token-{n}", INSTANCE, f"refresh-token-{n}")


async def test_a_refused_token_is_refreshed_once_across_processes(dsn: str) -> None:
    refresh = CountingRefresh()
    async with (
        asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool_a,
        asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool_b,
    ):
        await Vault(pool_a, OLD).put("acme", Purpose.REFRESH_TOKEN, "refresh-token-0")
        replica_a = SharedSession(Vault(pool_a, OLD), "acme", refresh)
        replica_b = SharedSession(Vault(pool_b, OLD), "acme", refresh)

        first = await replica_a.current()
        assert first == SessionToken("access-token-1", INSTANCE)
        assert await replica_b.current() == first

        # Both replicas had `first` refused at the same time.
        renewed = await asyncio.gather(replica_a.refreshed(first), replica_b.refreshed(first))

        assert renewed[0] == renewed[1] == SessionToken("access-token-2", INSTANCE)
        assert refresh.calls == ["refresh-token-0", "refresh-token-1"]
        # A late report of the same stale token takes the new one; no third refresh.
        assert await replica_b.refreshed(first) == renewed[0]
        assert len(refresh.calls) == 2
        assert await Vault(pool_b, OLD).get("acme", Purpose.REFRESH_TOKEN) == "refresh-token-2"


async def test_a_failed_refresh_stores_nothing_and_releases_the_lock(pool: asyncpg.Pool) -> None:
    vault = Vault(pool, OLD)
    await vault.put("acme", Purpose.REFRESH_TOKEN, "revoked-refresh-token")

    async def refused(refresh_token: str | None) -> Issued:
        raise ReconnectNeeded("invalid_grant", "expired access/refresh token")

    with pytest.raises(ReconnectNeeded):
        await SharedSession(vault, "acme", refused).current()
    assert await vault.get("acme", Purpose.ACCESS_TOKEN) is None

    refresh = CountingRefresh()
    assert await asyncio.wait_for(SharedSession(vault, "acme", refresh).current(), 5) == SessionToken(
        "access-token-1", INSTANCE
    )


def duplex() -> typer.Typer:
    """``duplex`` with the ``keys`` sub-app registered as the admin CLI registers it."""
    app = typer.Typer()
    app.add_typer(keys_app, name="keys")
    return app


async def test_duplex_keys_rotate(pool: asyncpg.Pool, dsn: str) -> None:
    await Vault(pool, OLD).put("acme", Purpose.REFRESH_TOKEN, "acme-refresh-token")
    runner = CliRunner()

    result = await asyncio.to_thread(
        runner.invoke, duplex(), ["keys", "rotate", "--dsn", dsn], env={"VAULT_KEYS": keys_text(("k2", K2), ("k1", K1))}
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "re-wrapped 1 data keys under key 'k2' (0 already current)"
    assert await Vault(pool, NEW).get("acme", Purpose.REFRESH_TOKEN) == "acme-refresh-token"

    missing = await asyncio.to_thread(
        runner.invoke, duplex(), ["keys", "rotate", "--dsn", dsn], env={"VAULT_KEYS": "k3:short"}
    )
    assert missing.exit_code == 1
    assert "k3" in missing.stderr
    without_old = await asyncio.to_thread(
        runner.invoke, duplex(), ["keys", "rotate", "--dsn", dsn], env={"VAULT_KEYS": keys_text(("k3", K1))}
    )
    assert without_old.exit_code == 1
    assert "tenants: acme" in without_old.stderr
