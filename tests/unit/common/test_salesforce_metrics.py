"""Every Salesforce API call through SalesforceClient is counted by tenant, API family and priority."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.common.metrics import Metrics
from services.common.salesforce import (
    SalesforceClient,
    Session,
    UnlimitedBudget,
    api_family,
    call_priority,
    env_secrets,
)
from services.common.tenant_config import SalesforceSpec

pytestmark = pytest.mark.unit

INSTANCE = "https://acme.my.salesforce.com"
BASE = "/services/data/v62.0"
API_CALLS = "duplex_api_calls_total"


@pytest.mark.parametrize(
    ("path", "family"),
    [
        (f"{BASE}/sobjects/Account", "rest"),
        (f"{BASE}/sobjects/Account/Duplex_Id__c/dx-1", "rest"),
        (f"{BASE}/query", "rest"),
        (f"{BASE}/query/01gxx0000000001-2000", "rest"),  # nextRecordsUrl
        (f"{BASE}/queryAll", "rest"),
        (f"{BASE}/limits", "rest"),
        (f"{BASE}/sobjects/Account/describe", "rest"),
        (f"{BASE}/composite/sobjects", "composite"),
        (f"{BASE}/composite/sobjects/Account/Duplex_Id__c", "composite"),
        (f"{BASE}/composite", "composite"),
        (f"{BASE}/jobs/ingest", "bulk"),
        (f"{BASE}/jobs/ingest/750xx/batches", "bulk"),
        (f"{BASE}/jobs/query/750xx/results", "bulk"),
        # Only the resource after the version decides: an object or id that happens to be named so does not.
        (f"{BASE}/sobjects/jobs/001xx", "rest"),
        (f"{BASE}/sobjects/composite", "rest"),
        ("/services/apexrest/jobs/composite", "rest"),
    ],
)
def test_the_api_family_is_the_resource_after_the_version(path: str, family: str) -> None:
    assert api_family(path) == family


@pytest.mark.parametrize(("backfill", "priority"), [(False, "live"), (True, "backfill")])
def test_the_priority_is_the_one_the_governor_is_asked_for(backfill: bool, priority: str) -> None:
    assert call_priority(backfill=backfill) == priority


def spec() -> SalesforceSpec:
    return SalesforceSpec.model_validate(
        {
            "instanceUrl": INSTANCE,
            "apiVersion": "62.0",
            "auth": {
                "mode": "client_credentials",
                "clientId": "duplex-acme",
                "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_SF"}},
            },
            "dailyApiCap": 1000,
            "callOptionsClient": "duplex-acme",
        }
    )


class Org:
    """Answers every call with 200 (a JSON body and usage), except ``expired`` tokens: 401 once."""

    def __init__(self, *, expired: str | None = None) -> None:
        self.requests: list[str] = []
        self.expired = expired

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if request.url.path == "/services/oauth2/token":
            identity = "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
            return httpx.Response(200, json={"access_token": "fresh", "instance_url": INSTANCE, "id": identity})
        if self.expired and request.headers["Authorization"] == f"Bearer {self.expired}":
            return httpx.Response(401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "Session expired"}])
        return httpx.Response(200, content=json.dumps({"ok": True}), headers={"Sforce-Limit-Info": "api-usage=18/5000"})


def client(metrics: Metrics | None, http: httpx.AsyncClient, *, token: str | None = "t0") -> SalesforceClient:
    return SalesforceClient(
        "acme",
        spec(),
        secrets=env_secrets({"DUPLEX_SECRET_SF": "s3cret"}),
        budget=UnlimitedBudget(),
        http=http,
        session=Session(token, INSTANCE) if token else None,
        metrics=metrics,
    )


def calls(metrics: Metrics, api: str, priority: str, tenant: str = "acme") -> float:
    value = metrics.registry.get_sample_value(API_CALLS, {"tenant": tenant, "api": api, "priority": priority})
    return value or 0.0


async def test_each_call_counts_once_under_its_family_and_priority() -> None:
    metrics = Metrics(CollectorRegistry())
    org = Org()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(metrics, http)
        await sf.request("GET", f"{BASE}/query", params={"q": "SELECT Id FROM Account"})
        await sf.request("PATCH", f"{BASE}/composite/sobjects", json={"records": []})
        await sf.request("PATCH", f"{BASE}/composite/sobjects", json={"records": []})
        await sf.request("POST", f"{BASE}/jobs/ingest", json={}, backfill=True)
        await sf.request("GET", f"{BASE}/query", params={"q": "SELECT Id FROM Account"}, backfill=True)

    assert calls(metrics, "rest", "live") == 1
    assert calls(metrics, "composite", "live") == 2
    assert calls(metrics, "bulk", "backfill") == 1
    assert calls(metrics, "rest", "backfill") == 1
    assert calls(metrics, "bulk", "live") == 0
    assert len(org.requests) == 5


async def test_oauth_calls_are_not_api_calls() -> None:
    metrics = Metrics(CollectorRegistry())
    org = Org()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        # No session yet: the token call logs in first, then userinfo; neither is an API call.
        sf = client(metrics, http, token=None)
        await sf.request("GET", "/services/oauth2/userinfo")

    assert org.requests == ["/services/oauth2/token", "/services/oauth2/userinfo"]
    assert metrics.registry.get_sample_value(API_CALLS, {"tenant": "acme", "api": "rest", "priority": "live"}) is None


async def test_a_call_repeated_after_reauthenticating_counts_twice_and_the_token_call_not_at_all() -> None:
    metrics = Metrics(CollectorRegistry())
    org = Org(expired="stale")
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(metrics, http, token="stale")
        await sf.request("GET", f"{BASE}/limits")

    assert org.requests == [f"{BASE}/limits", "/services/oauth2/token", f"{BASE}/limits"]
    assert calls(metrics, "rest", "live") == 2


async def test_without_metrics_calls_still_go_through() -> None:
    org = Org()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        sf = client(None, http)
        assert (await sf.request("GET", f"{BASE}/limits")).json() == {"ok": True}
