"""What Salesforce's front door does to every counted API call, whichever API it uses.

REST and Bulk calls pass it in :class:`~services.salesforce_emulator.app.ApiGateway`; SOAP calls
made in a session (``undelete``, ``merge``, ``getUserInfo``, ``getServerTimestamp``) pass it in the
SOAP router once the session header is read. Both
must see the same injected latency and outages and draw on the same rolling allocation, or a
client could dodge faults and limits by switching API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.salesforce_emulator.errors import SalesforceError
from services.salesforce_emulator.limits import UsageMeter
from services.salesforce_emulator.orgs import Org

LIMIT_HEADER = "Sforce-Limit-Info"


def server_unavailable() -> SalesforceError:
    return SalesforceError(503, "SERVER_UNAVAILABLE", "Server is temporarily unavailable. Retry later.")


class FrontDoor:
    """Latency, 503 outages and the API allocation of one authenticated call."""

    def __init__(self, usage: UsageMeter, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.usage = usage
        self._sleep = sleep

    async def admit(self, org: Org, client: str | None) -> tuple[int, int]:
        """Apply the org's faults and count the call: (used, max) after counting.

        Raises SERVER_UNAVAILABLE (injected outage, not counted) or REQUEST_LIMIT_EXCEEDED.
        """
        faults = org.faults
        if faults.latency_ms:
            await self._sleep(faults.latency_ms / 1000)
        if faults.next_call_unavailable():
            raise server_unavailable()
        return self.usage.admit(org, client)

    def header(self, org: Org) -> str:
        """``Sforce-Limit-Info`` for a refused call: usage as it stands."""
        return self.usage.header(org)
