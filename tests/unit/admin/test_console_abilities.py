"""What the console offers each role, from the API's ``GET /me``: the API's own rules."""

from __future__ import annotations

import pytest

from services.admin.console.web import abilities

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("role", "operate", "configure"),
    [("viewer", False, False), ("operator", True, False), ("admin", True, True)],
)
def test_each_role_is_offered_what_the_api_lets_it_do(role: str, operate: bool, configure: bool) -> None:
    me = {"name": "n", "role": role, "tenants": ["acme"]}
    assert abilities(me) == {"can_operate": operate, "can_configure": configure}


@pytest.mark.parametrize("me", [None, {}, {"role": "owner"}, "admin"])
def test_no_known_role_is_offered_anything(me: object) -> None:
    assert abilities(me) == {"can_operate": False, "can_configure": False}
