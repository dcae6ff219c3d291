"""The admin API's authorization rules and token format, as pure functions."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest

from services.admin.auth import (
    Action,
    Denial,
    Principal,
    Role,
    decide,
    is_api_token,
    may,
    new_token,
    parse_duration,
    role_may,
    sees,
    token_digest,
    token_usable,
)
from services.admin.oidc import OidcConfig, principal_from_claims

pytestmark = pytest.mark.unit


def principal(role: Role, tenants: set[str] | None = None) -> Principal:
    return Principal(
        kind="token", id="t-1", name="n", role=role, tenants=None if tenants is None else frozenset(tenants)
    )


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Action.READ}),
        (Role.OPERATOR, {Action.READ, Action.OPERATE}),
        (Role.ADMIN, set(Action)),
    ],
)
def test_each_role_may_what_its_rank_allows(role: Role, allowed: set[Action]) -> None:
    assert {a for a in Action if may(principal(role), a)} == allowed


@pytest.mark.parametrize("role", list(Role))
def test_a_role_may_what_a_principal_of_every_tenant_with_it_may(role: Role) -> None:
    assert {a for a in Action if role_may(role, a)} == {a for a in Action if may(principal(role), a)}


def test_only_an_admin_of_every_tenant_manages_tokens() -> None:
    assert may(principal(Role.ADMIN), Action.MANAGE_TOKENS)
    assert not may(principal(Role.ADMIN, {"acme"}), Action.MANAGE_TOKENS)
    assert may(principal(Role.ADMIN, {"acme"}), Action.CONFIGURE)


def test_scope() -> None:
    scoped = principal(Role.VIEWER, {"acme", "globex"})
    assert sees(principal(Role.VIEWER), "anyone")
    assert sees(scoped, "acme")
    assert not sees(scoped, "initech")
    assert not sees(principal(Role.VIEWER, set()), "acme")


@pytest.mark.parametrize(
    ("who", "action", "tenant", "denial"),
    [
        (None, Action.READ, None, Denial.UNAUTHENTICATED),
        (None, Action.READ, "acme", Denial.UNAUTHENTICATED),
        (principal(Role.VIEWER), Action.READ, "acme", None),
        (principal(Role.VIEWER), Action.CONFIGURE, "acme", Denial.FORBIDDEN),
        (principal(Role.VIEWER), Action.CONFIGURE, None, Denial.FORBIDDEN),
        # Out of scope looks missing, even when the role could not have done it anyway.
        (principal(Role.VIEWER, {"globex"}), Action.CONFIGURE, "acme", Denial.NOT_FOUND),
        (principal(Role.ADMIN, {"globex"}), Action.READ, "acme", Denial.NOT_FOUND),
        (principal(Role.ADMIN, {"globex"}), Action.CONFIGURE, "globex", None),
        (principal(Role.ADMIN, {"globex"}), Action.READ, None, None),
        (principal(Role.ADMIN, {"globex"}), Action.MANAGE_TOKENS, None, Denial.FORBIDDEN),
        (principal(Role.OPERATOR), Action.OPERATE, "acme", None),
        (principal(Role.ADMIN), Action.MANAGE_TOKENS, None, None),
    ],
)
def test_decide(who: Principal | None, action: Action, tenant: str | None, denial: Denial | None) -> None:
    assert decide(who, action, tenant) is denial


def test_the_actor_names_the_principal() -> None:
    assert principal(Role.ADMIN).actor == "n (token t-1)"


def test_tokens_are_prefixed_random_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert re.fullmatch(r"dpx_[A-Za-z0-9_-]{43}", token)
        assert is_api_token(token)
        assert token_digest(token) == hashlib.sha256(token.encode()).hexdigest()
    assert not is_api_token("eyJhbGciOiJSUzI1NiJ9.e30.sig")


def test_token_usable() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert token_usable(None, None, now)
    assert token_usable(now + timedelta(seconds=1), None, now)
    assert not token_usable(now, None, now)
    assert not token_usable(None, now - timedelta(days=1), now)


@pytest.mark.parametrize(
    ("text", "lifetime"),
    [("12h", timedelta(hours=12)), ("30d", timedelta(days=30)), (" 8w ", timedelta(weeks=8))],
)
def test_durations(text: str, lifetime: timedelta) -> None:
    assert parse_duration(text) == lifetime


@pytest.mark.parametrize("text", ["", "30", "0d", "30m", "1.5d", "-1d", "d", "1000000d", "30 days"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="must be a whole number of hours, days or weeks"):
        parse_duration(text)


CONFIG = OidcConfig(issuer="i", audience="a", jwks_url="http://x", roles_claim="groups", tenants_claim="tenants")


@pytest.mark.parametrize(
    ("claims", "role", "tenants"),
    [
        ({"groups": ["viewer", "admin", "staff"], "tenants": "*"}, Role.ADMIN, None),
        ({"groups": "operator", "tenants": ["acme", 7]}, Role.OPERATOR, frozenset({"acme"})),
        ({"groups": ["viewer"]}, Role.VIEWER, frozenset()),
        ({"groups": ["viewer"], "tenants": "acme"}, Role.VIEWER, frozenset()),
    ],
)
def test_oidc_claims_to_principal(claims: dict[str, object], role: Role, tenants: frozenset[str] | None) -> None:
    found = principal_from_claims({"sub": "u-1", "email": "a@example.test", **claims}, CONFIG)
    assert found == Principal(kind="oidc", id="u-1", name="a@example.test", role=role, tenants=tenants)


@pytest.mark.parametrize(
    "claims",
    [{"sub": "u", "groups": ["staff"]}, {"sub": "u"}, {"sub": "u", "roles": ["admin"]}, {"groups": ["admin"]}],
)
def test_oidc_claims_without_a_role_or_subject_are_nobody(claims: dict[str, object]) -> None:
    assert principal_from_claims(claims, CONFIG) is None
