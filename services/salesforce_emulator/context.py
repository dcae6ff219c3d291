"""Who is calling, through which API, on behalf of which org."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ApiName = Literal["rest", "bulkapi", "soap"]


def parse_call_options(header: str | None) -> str | None:
    """The ``client`` of a ``Sforce-Call-Options`` header (``client=duplex;defaultNamespace=x``).

    Both ``;`` and the older ``,`` separators are accepted.
    """
    if not header:
        return None
    for part in header.replace(",", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "client" and value.strip():
            return value.strip()
    return None


@dataclass(frozen=True)
class CallContext:
    """An authenticated API call."""

    org_id: str
    user_id: str
    api_version: str
    api_name: ApiName = "rest"
    client: str | None = None

    @property
    def change_origin(self) -> str:
        """CDC changeOrigin: ``com/salesforce/api/<api>/<version>[;client=<client>]``."""
        origin = f"com/salesforce/api/{self.api_name}/{self.api_version}"
        return f"{origin};client={self.client}" if self.client else origin
