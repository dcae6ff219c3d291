"""Where the admin API tells Salesforce to send browsers back: its public URL, or the address served."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.admin.settings import AdminSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "public_url", "base"),
    [
        ("127.0.0.1", None, "http://127.0.0.1:8080"),
        ("0.0.0.0", None, "http://127.0.0.1:8080"),
        ("::", None, "http://127.0.0.1:8080"),
        ("::1", None, "http://[::1]:8080"),
        ("admin.internal", None, "http://admin.internal:8080"),
        ("0.0.0.0", "https://duplex.example.com/", "https://duplex.example.com"),
        ("0.0.0.0", "https://example.com/duplex", "https://example.com/duplex"),
    ],
)
def test_the_public_base_url(host: str, public_url: str | None, base: str) -> None:
    settings = AdminSettings(host=host, public_url=public_url, vault=None)

    assert settings.public_base_url(8080) == base


@pytest.mark.parametrize(
    "url", ["duplex.example.com", "ftp://duplex.example.com", "https://x.example/?a=1", "https://"]
)
def test_a_public_url_that_is_not_one_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="must be an http"):
        AdminSettings(public_url=url, vault=None)
