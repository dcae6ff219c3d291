"""The demo's two outer worlds: a sales rep working in Salesforce, and the partners app's database.

Neither goes through Duplex: the sales rep calls the emulated org's REST API as its admin user
(``Sforce-Call-Options: client=sales-console``), and the partners app's users change rows in its
own tables with the example app's functions (its outbox then publishes the changes).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import httpx

API = "/services/data/v62.0"
REP_CLIENT = "sales-console"

# Fields the sample tenant maps that a fresh developer org does not have (PUT is idempotent).
CUSTOM_FIELDS: dict[str, list[dict[str, Any]]] = {
    "Account": [
        {"name": "Partner_Status__c", "type": "picklist", "picklist_values": ["Active", "Onboarding", "Suspended"]},
        {"name": "Tier__c", "type": "picklist", "picklist_values": ["Gold", "Silver", "Bronze"]},
        {"name": "Industries__c", "type": "multipicklist", "picklist_values": ["Software", "Services", "Hardware"]},
        {"name": "Partner_Since__c", "type": "date"},
        {"name": "Archived__c", "type": "boolean", "default_value": False},
    ],
    "Contact": [{"name": "Portal_User__c", "type": "boolean", "default_value": False}],
}


class SalesRep:
    """Someone editing records in Salesforce's UI: plain REST calls, not Duplex's."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.http = httpx.AsyncClient(
            base_url=info["instance_url"],
            verify=ssl.create_default_context(cafile=info["ca_cert"]),
            timeout=60,
        )
        self._token: str | None = None

    async def __aenter__(self) -> SalesRep:
        response = await self.http.post(
            "/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": self.info["client_id"],
                "client_secret": self.info["client_secret"],
                "username": self.info["username"],
                "password": self.info["password"],
            },
        )
        response.raise_for_status()
        self._token = response.json()["access_token"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Sforce-Call-Options": f"client={REP_CLIENT}"}

    async def define_fields(self) -> None:
        """Add the sample tenant's custom fields to the org (the emulator's admin API)."""
        admin = {"Authorization": f"Bearer {self.info['admin_token']}"}
        for name, fields in CUSTOM_FIELDS.items():
            response = await self.http.put(
                f"/__emulator__/orgs/{self.info['org_id']}/objects/{name}", json={"fields": fields}, headers=admin
            )
            response.raise_for_status()

    async def create(self, sobject: str, records: Sequence[dict[str, Any]]) -> list[str]:
        """Create records 200 per call (sObject Collections); returns their ids."""
        ids: list[str] = []
        for start in range(0, len(records), 200):
            body = {"records": [{"attributes": {"type": sobject}, **r} for r in records[start : start + 200]]}
            response = await self.http.post(f"{API}/composite/sobjects", json=body, headers=self._headers)
            response.raise_for_status()
            for result in response.json():
                if not result["success"]:
                    raise RuntimeError(f"create {sobject} failed: {result['errors']}")
                ids.append(result["id"])
        return ids

    async def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        response = await self.http.patch(f"{API}/sobjects/{sobject}/{record_id}", json=fields, headers=self._headers)
        response.raise_for_status()

    async def delete(self, sobject: str, record_id: str) -> None:
        response = await self.http.delete(f"{API}/sobjects/{sobject}/{record_id}", headers=self._headers)
        response.raise_for_status()

    async def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        response = await self.http.get(f"{API}/sobjects/{sobject}/{record_id}", headers=self._headers)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def count(self, soql_where: str, sobject: str = "Account") -> int:
        response = await self.http.get(
            f"{API}/query", params={"q": f"SELECT COUNT() FROM {sobject} WHERE {soql_where}"}, headers=self._headers
        )
        response.raise_for_status()
        return int(response.json()["totalSize"])

    async def usage_by_client(self) -> dict[str, int]:
        """API calls the org counted in the rolling 24 h per Sforce-Call-Options client (the emulator's meter)."""
        response = await self.http.get(
            f"/__emulator__/orgs/{self.info['org_id']}/usage",
            headers={"Authorization": f"Bearer {self.info['admin_token']}"},
        )
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json()["by_client"].items()}

    async def usage(self) -> tuple[int, int]:
        """The org's API calls used and allowed in the rolling 24 h (everyone's), from /limits."""
        response = await self.http.get(f"{API}/limits", headers=self._headers)
        response.raise_for_status()
        daily = response.json()["DailyApiRequests"]
        return int(daily["Max"]) - int(daily["Remaining"]), int(daily["Max"])
