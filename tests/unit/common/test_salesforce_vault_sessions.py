"""An ``oauth_pkce`` tenant's SalesforceClient takes its session from the vault's sessions: the
current token to start, a refreshed one after a 401, and after an unusable connection it starts over
from the vault, so a reconnect is picked up without rebuilding the client."""

from __future__ import annotations

from typing import cast

import httpx
import pytest

from services.common.connections import ConnectionUnavailableError, Sessions, TenantSession
from services.common.salesforce import SalesforceClient, UnlimitedBudget, env_secrets
from services.common.tenant_config import SalesforceSpec
from services.common.vault import SessionToken

pytestmark = pytest.mark.unit

INSTANCE = "https://acme.my.salesforce.test"
LIMITS = "/services/data/v62.0/limits"
SPEC = SalesforceSpec.model_validate(
    {
        "instanceUrl": INSTANCE,
        "apiVersion": "62.0",
        "auth": {"mode": "oauth_pkce", "clientId": "3MVG9duplex"},
        "dailyApiCap": 1000,
    }
)


class Vaulted:
    """The vault's sessions of one tenant, scripted: what ``current`` and ``refreshed`` answer."""

    def __init__(self, *answers: str | ConnectionUnavailableError) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def for_tenant(self, tenant_id: str, spec: SalesforceSpec) -> TenantSession:
        return cast(TenantSession, self)

    async def current(self) -> SessionToken:
        return self._next("current")

    async def refreshed(self, stale: SessionToken) -> SessionToken:
        return self._next(f"refreshed({stale.access_token})")

    def _next(self, call: str) -> SessionToken:
        self.asked.append(call)
        answer = self.answers.pop(0)
        if isinstance(answer, ConnectionUnavailableError):
            raise answer
        return SessionToken(answer, INSTANCE)


class Org:
    """Accepts only the tokens in ``valid``; every request is recorded."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)
        self.tokens: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        self.tokens.append(token)
        if token not in self.valid:
            return httpx.Response(401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "Session expired"}])
        return httpx.Response(200, json={})


def client(http: httpx.AsyncClient, budget: UnlimitedBudget, sessions: Vaulted | None) -> SalesforceClient:
    return SalesforceClient(
        "acme",
        SPEC,
        secrets=env_secrets({}),
        budget=budget,
        http=http,
        sessions=cast(Sessions, sessions) if sessions else None,
    )


def lost() -> ConnectionUnavailableError:
    return ConnectionUnavailableError("acme", "needs_reconnect", "connect it again")


async def test_the_session_comes_from_the_vault_and_a_refused_one_is_refreshed_there() -> None:
    org, vaulted, budget = Org("t1", "t2"), Vaulted("t1", "t2"), UnlimitedBudget()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(http, budget, vaulted)
        await sf.request("GET", LIMITS)
        org.valid.discard("t1")  # expired
        await sf.request("GET", LIMITS)
        await sf.request("GET", LIMITS)

    assert vaulted.asked == ["current", "refreshed(t1)"]
    assert org.tokens == ["t1", "t1", "t2", "t2"]
    assert budget.calls["acme"] == 4


async def test_an_unusable_connection_fails_the_call_and_the_next_one_starts_from_the_vault() -> None:
    org, budget = Org("t2"), UnlimitedBudget()
    vaulted = Vaulted("t1", lost(), lost(), "t2")
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(http, budget, vaulted)
        with pytest.raises(ConnectionUnavailableError):
            await sf.request("GET", LIMITS)  # t1 refused, and the refresh token too
        with pytest.raises(ConnectionUnavailableError):
            await sf.request("GET", LIMITS)  # not reconnected yet: nothing is sent
        await sf.request("GET", LIMITS)  # reconnected

    assert vaulted.asked == ["current", "refreshed(t1)", "current", "current"]
    assert org.tokens == ["t1", "t2"]
    # Budget only for the calls made.
    assert budget.calls["acme"] == 2


async def test_without_a_vault_an_oauth_pkce_tenant_fails_alone_and_spends_no_budget() -> None:
    org, budget = Org(), UnlimitedBudget()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(http, budget, None)
        with pytest.raises(ConnectionUnavailableError) as raised:
            await sf.request("GET", LIMITS)

    assert raised.value.reason == "vault_not_configured"
    assert str(raised.value) == (
        "tenant acme: auth mode oauth_pkce keeps the tenant's tokens in the vault, and this service has no VAULT_KEYS"
    )
    assert not raised.value.awaits_connect
    assert org.tokens == []
    assert budget.calls == {}
