"""Duplex's Salesforce client against the emulator process."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx
import pytest

from devstack.emulator import EmulatorProcess
from services.common.connections import ConnectionUnavailableError
from services.common.salesforce import SalesforceApiError, SalesforceClient, UnlimitedBudget, env_secrets
from services.common.tenant_config import SalesforceSpec
from services.common.tenant_config.policy import SalesforcePolicy

pytestmark = pytest.mark.integration

# The emulator listens on 127.0.0.1, which only a development deployment may call.
DEVELOPMENT = SalesforcePolicy(development=True)


def spec(emulator: EmulatorProcess) -> SalesforceSpec:
    return SalesforceSpec.model_validate(
        {
            "instanceUrl": emulator.instance_url,
            "apiVersion": "62.0",
            "auth": {
                "mode": "password",
                "clientId": emulator.info["client_id"],
                "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_SF"}},
                "username": emulator.info["username"],
                "password": {"secretRef": {"env": "DUPLEX_SECRET_SF_PASSWORD"}},
            },
            "dailyApiCap": 1000,
            "callOptionsClient": "duplex-test",
        }
    )


@pytest.fixture
async def http(emulator: EmulatorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=emulator.ca_cert), timeout=30) as client:
        yield client


def client(emulator: EmulatorProcess, http: httpx.AsyncClient, budget: UnlimitedBudget) -> SalesforceClient:
    secrets = env_secrets(
        {"DUPLEX_SECRET_SF": emulator.info["client_secret"], "DUPLEX_SECRET_SF_PASSWORD": emulator.info["password"]}
    )
    return SalesforceClient("acme", spec(emulator), secrets=secrets, budget=budget, http=http, policy=DEVELOPMENT)


async def test_calls_are_budgeted_stamped_and_reported(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    budget = UnlimitedBudget()
    sf = client(emulator, http, budget)

    created = await sf.request("POST", f"{sf.api_base}/sobjects/Account", json={"Name": "Client test"})
    record_id = created.json()["id"]
    soql = f"SELECT Id, LastModifiedById FROM Account WHERE Id = '{record_id}'"
    row = (await sf.request("GET", f"{sf.api_base}/query", params={"q": soql})).json()["records"][0]

    assert row["Id"] == record_id
    assert budget.calls["acme"] == 2
    # OAuth endpoints are not API requests: Salesforce does not count them, nor does the budget.
    assert (await sf.request("GET", "/services/oauth2/userinfo")).json()["organization_id"]
    assert budget.calls["acme"] == 2
    used, limit = budget.usage["acme"]
    assert limit == 15_000
    assert used >= 2


async def test_an_expired_session_is_renewed_once(faults: EmulatorProcess, http: httpx.AsyncClient) -> None:
    budget = UnlimitedBudget()
    sf = client(faults, http, budget)
    await sf.request("GET", f"{sf.api_base}/limits")
    faults.admin("POST", f"/orgs/{faults.info['org_id']}/tokens/expire")

    response = await sf.request("GET", f"{sf.api_base}/limits")

    assert response.status_code == 200
    assert budget.calls["acme"] == 3  # the refused call counted too


async def test_failures_carry_salesforce_codes(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    sf = client(emulator, http, UnlimitedBudget())

    with pytest.raises(SalesforceApiError) as raised:
        await sf.request("POST", f"{sf.api_base}/sobjects/Account", json={"Phone": "1"})

    assert (raised.value.http_status, raised.value.error_code) == (400, "REQUIRED_FIELD_MISSING")
    assert raised.value.fields == ["Name"]


async def test_a_missing_secret_is_a_clear_error(emulator: EmulatorProcess, http: httpx.AsyncClient) -> None:
    sf = SalesforceClient(
        "acme", spec(emulator), secrets=env_secrets({}), budget=UnlimitedBudget(), http=http, policy=DEVELOPMENT
    )

    with pytest.raises(ConnectionUnavailableError, match="DUPLEX_SECRET_SF is not set") as raised:
        await sf.request("GET", f"{sf.api_base}/limits")
    assert raised.value.code == "secret_unavailable"


async def test_the_emulator_is_only_for_a_development_deployment(
    emulator: EmulatorProcess, http: httpx.AsyncClient
) -> None:
    secrets = env_secrets({"DUPLEX_SECRET_SF": "x", "DUPLEX_SECRET_SF_PASSWORD": "y"})
    sf = SalesforceClient("acme", spec(emulator), secrets=secrets, budget=UnlimitedBudget(), http=http)

    with pytest.raises(ConnectionUnavailableError, match="localhost is only allowed when") as raised:
        await sf.request("GET", f"{sf.api_base}/limits")
    assert raised.value.code == "policy_violation"
