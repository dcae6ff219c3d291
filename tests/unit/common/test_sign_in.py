"""The server-side sign-ins (password, client credentials, JWT bearer) and the deployment's policy on
them: which variables a tenant's secrets may be read from, which hosts may be sent credentials, and
which instance a token may be used at. Salesforce is an httpx mock transport; nothing else runs."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.connections import (
    ConnectionUnavailableError,
    SignInError,
    sign_in,
    sign_in_source,
    token_url,
)
from services.common.salesforce import SalesforceClient, UnlimitedBudget, env_secrets, secret_env_name
from services.common.salesforce_oauth import JWT_BEARER_GRANT
from services.common.tenant_config import SalesforceSpec, SecretValue
from services.common.tenant_config.policy import PolicyViolationError, SalesforcePolicy
from tests.fixtures.keys import private_key_pem

pytestmark = pytest.mark.unit

MY_DOMAIN = "https://acme.my.salesforce.com"
IDENTITY = "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
STRICT = SalesforcePolicy()
KEY_ENV = "DUPLEX_SECRET_ACME_SF_KEY"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwt_spec(**salesforce: Any) -> SalesforceSpec:
    return SalesforceSpec.model_validate(
        {
            "instanceUrl": MY_DOMAIN,
            "apiVersion": "62.0",
            "auth": {
                "mode": "jwt_bearer",
                "clientId": "3MVG9-duplex",
                "username": "integration@acme.example",
                "privateKey": {"secretRef": {"env": KEY_ENV}},
            },
            "dailyApiCap": 1000,
            **salesforce,
        }
    )


class Salesforce:
    """Answers token requests with ``answer`` (a token for ``instance`` by default); records them."""

    def __init__(self, *, instance: str = MY_DOMAIN, answer: httpx.Response | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or httpx.Response(
            200, json={"access_token": "00D!token", "instance_url": instance, "id": IDENTITY, "scope": "api"}
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer

    def form(self, index: int = 0) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[index].content.decode()).items()}


@pytest.fixture
def salesforce() -> Salesforce:
    return Salesforce()


async def signed_in(
    spec: SalesforceSpec, org: Salesforce, environ: dict[str, str], policy: SalesforcePolicy = STRICT
) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        return await sign_in(spec, env_secrets(environ, policy=policy), http, policy)


async def test_jwt_bearer_posts_a_signed_assertion_to_the_my_domain(
    key: rsa.RSAPrivateKey, salesforce: Salesforce
) -> None:
    token = await signed_in(jwt_spec(), salesforce, {KEY_ENV: private_key_pem(key)})

    (request,) = salesforce.requests
    assert str(request.url) == f"{MY_DOMAIN}/services/oauth2/token"
    # No client id or secret in the form: the assertion's iss is the client id, its signature the proof.
    assert set(salesforce.form()) == {"grant_type", "assertion"}
    assert salesforce.form()["grant_type"] == JWT_BEARER_GRANT
    claims = jwt.decode(
        salesforce.form()["assertion"],
        key.public_key(),
        algorithms=["RS256"],
        audience="https://login.salesforce.com",
    )
    assert (claims["iss"], claims["sub"]) == ("3MVG9-duplex", "integration@acme.example")
    assert (token.access_token, token.instance_url, token.ids) == (
        "00D!token",
        MY_DOMAIN,
        ("00D000000000001AAA", "005000000000001AAA"),
    )


async def test_a_sandbox_login_url_is_where_the_assertion_goes_and_its_audience(
    key: rsa.RSAPrivateKey, salesforce: Salesforce
) -> None:
    await signed_in(jwt_spec(loginUrl="https://test.salesforce.com"), salesforce, {KEY_ENV: private_key_pem(key)})

    assert str(salesforce.requests[0].url) == "https://test.salesforce.com/services/oauth2/token"
    claims = jwt.decode(salesforce.form()["assertion"], options={"verify_signature": False})
    assert claims["aud"] == "https://test.salesforce.com"


async def test_a_refused_assertion_is_salesforce_s_error(key: rsa.RSAPrivateKey) -> None:
    org = Salesforce(
        answer=httpx.Response(400, json={"error": "invalid_grant", "error_description": "invalid assertion"})
    )

    with pytest.raises(SignInError) as refused:
        await signed_in(jwt_spec(), org, {KEY_ENV: private_key_pem(key)})

    assert (refused.value.code, refused.value.description) == ("invalid_grant", "invalid assertion")


async def test_a_key_that_is_not_an_rsa_pem_is_refused_without_quoting_it(salesforce: Salesforce) -> None:
    with pytest.raises(SignInError) as refused:
        await signed_in(jwt_spec(), salesforce, {KEY_ENV: "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"})

    assert refused.value.code == "invalid_private_key"
    assert "c2VjcmV0" not in str(refused.value)
    assert salesforce.requests == []


async def test_the_password_flow_appends_the_security_token(salesforce: Salesforce) -> None:
    spec = SalesforceSpec.model_validate(
        {
            "instanceUrl": MY_DOMAIN,
            "apiVersion": "62.0",
            "auth": {
                "mode": "password",
                "clientId": "3MVG9-duplex",
                "clientSecret": {"secretRef": {"env": "DUPLEX_SECRET_S"}},
                "username": "integration@acme.example",
                "password": {"secretRef": {"env": "DUPLEX_SECRET_P"}},
                "securityToken": {"secretRef": {"name": "acme-sf", "key": "security-token"}},
            },
            "dailyApiCap": 1000,
        }
    )
    environ = {"DUPLEX_SECRET_S": "s", "DUPLEX_SECRET_P": "pw", "DUPLEX_SECRET_ACME_SF_SECURITY_TOKEN": "+tok"}

    await signed_in(spec, salesforce, environ)

    assert salesforce.form() == {
        "grant_type": "password",
        "username": "integration@acme.example",
        "password": "pw+tok",
        "client_id": "3MVG9-duplex",
        "client_secret": "s",
    }


# ---------------------------------------------------------------------------------------------
# The policy


def secret(**ref: str) -> SecretValue:
    return SecretValue.model_validate({"secretRef": ref})


def test_a_secret_variable_outside_the_prefix_is_never_read() -> None:
    resolve = env_secrets({"POSTGRES_DSN": "postgresql://duplex:hunter2@db/duplex"})

    with pytest.raises(PolicyViolationError) as refused:
        resolve(secret(env="POSTGRES_DSN"))

    assert str(refused.value) == (
        "secret variable POSTGRES_DSN: names a variable outside DUPLEX_SECRET_*, the prefix this deployment"
        " allows for tenant secrets; rename the variable to DUPLEX_SECRET_POSTGRES_DSN"
    )


def test_secret_variables_follow_the_configured_prefix() -> None:
    policy = SalesforcePolicy(secret_env_prefix="ACME_")
    resolve = env_secrets({"ACME_KEY": "k", "DUPLEX_SECRET_KEY": "d", "ACME_SF_CLIENT_SECRET": "s"}, policy=policy)

    assert resolve(secret(env="ACME_KEY")) == "k"
    # A Kubernetes Secret's key arrives under the prefix too (the chart maps it so).
    assert secret_env_name(secret(name="sf", key="client-secret"), policy) == "ACME_SF_CLIENT_SECRET"
    assert resolve(secret(name="sf", key="client-secret")) == "s"
    with pytest.raises(PolicyViolationError):
        resolve(secret(env="DUPLEX_SECRET_KEY"))
    with pytest.raises(LookupError, match="environment variable ACME_MISSING is not set"):
        resolve(secret(env="ACME_MISSING"))


async def test_a_secret_outside_the_prefix_fails_the_sign_in_before_anything_is_sent(salesforce: Salesforce) -> None:
    spec = jwt_spec(
        auth={"mode": "jwt_bearer", "clientId": "c", "username": "u", "privateKey": secret(env="VAULT_KEYS")}
    )

    with pytest.raises(SignInError) as refused:
        await signed_in(spec, salesforce, {"VAULT_KEYS": "k1:..."})

    assert refused.value.code == "policy_violation"
    assert "secret variable VAULT_KEYS: names a variable outside DUPLEX_SECRET_*" in str(refused.value)
    assert salesforce.requests == []


@pytest.mark.parametrize(
    ("salesforce_section", "host"),
    [
        ({"loginUrl": "https://login.attacker.example"}, "login.attacker.example"),
        ({"instanceUrl": "https://acme.my.salesforce.com.attacker.example"}, "acme.my.salesforce.com.attacker.example"),
    ],
)
async def test_credentials_are_never_sent_to_a_host_off_the_list(
    key: rsa.RSAPrivateKey, salesforce: Salesforce, salesforce_section: dict[str, str], host: str
) -> None:
    with pytest.raises(SignInError) as refused:
        await signed_in(jwt_spec(**salesforce_section), salesforce, {KEY_ENV: private_key_pem(key)})

    assert refused.value.code == "policy_violation"
    assert f"{host} is not a Salesforce host" in refused.value.description
    assert salesforce.requests == []


async def test_a_listed_host_is_allowed(key: rsa.RSAPrivateKey, salesforce: Salesforce) -> None:
    policy = SalesforcePolicy(extra_hosts=("*.sfproxy.acme.example",))
    spec = jwt_spec(loginUrl="https://eu.sfproxy.acme.example")

    await signed_in(spec, salesforce, {KEY_ENV: private_key_pem(key)}, policy)

    assert str(salesforce.requests[0].url) == "https://eu.sfproxy.acme.example/services/oauth2/token"


async def test_localhost_only_for_a_development_deployment(key: rsa.RSAPrivateKey, salesforce: Salesforce) -> None:
    spec = jwt_spec(loginUrl="https://127.0.0.1:8443")

    with pytest.raises(SignInError) as refused:
        await signed_in(spec, salesforce, {KEY_ENV: private_key_pem(key)})
    assert "localhost is only allowed when the deployment is for development" in str(refused.value)
    assert salesforce.requests == []

    await signed_in(spec, salesforce, {KEY_ENV: private_key_pem(key)}, SalesforcePolicy(development=True))
    assert str(salesforce.requests[0].url) == "https://127.0.0.1:8443/services/oauth2/token"


async def test_a_token_for_an_instance_off_the_list_is_not_used(key: rsa.RSAPrivateKey) -> None:
    org = Salesforce(instance="https://instance.attacker.example")

    with pytest.raises(SignInError) as refused:
        await signed_in(jwt_spec(), org, {KEY_ENV: private_key_pem(key)})

    assert refused.value.code == "policy_violation"
    assert "instance.attacker.example is not a Salesforce host" in refused.value.description


async def test_a_client_of_its_own_fails_the_tenant_alone_with_the_reason(key: rsa.RSAPrivateKey) -> None:
    org = Salesforce(
        answer=httpx.Response(400, json={"error": "invalid_grant", "error_description": "invalid assertion"})
    )
    budget = UnlimitedBudget()
    async with httpx.AsyncClient(transport=httpx.MockTransport(org)) as http:
        client = SalesforceClient(
            "acme", jwt_spec(), secrets=env_secrets({KEY_ENV: private_key_pem(key)}), budget=budget, http=http
        )
        with pytest.raises(ConnectionUnavailableError) as refused:
            await client.request("GET", "/services/data/v62.0/limits")

    assert (refused.value.reason, refused.value.code) == ("error", "invalid_grant")
    assert str(refused.value) == (
        "tenant acme: its Salesforce sign-in (jwt_bearer) failed with invalid_grant: invalid assertion"
    )
    assert not refused.value.awaits_connect
    assert budget.calls == {}


# ---------------------------------------------------------------------------------------------
# What a sign-in depends on


def test_server_side_tenants_sign_in_at_their_login_url_else_their_instance() -> None:
    assert token_url(jwt_spec()) == MY_DOMAIN
    assert token_url(jwt_spec(loginUrl="https://test.salesforce.com")) == "https://test.salesforce.com"
    pkce = jwt_spec(auth={"mode": "oauth_pkce", "clientId": "c"})
    assert token_url(pkce) == "https://login.salesforce.com"


def test_the_sign_in_source_changes_with_the_settings_and_never_holds_a_secret() -> None:
    base = sign_in_source(jwt_spec())

    assert base == sign_in_source(jwt_spec())
    other_user = jwt_spec(
        auth={
            "mode": "jwt_bearer",
            "clientId": "3MVG9-duplex",
            "username": "other@acme.example",
            "privateKey": secret(env=KEY_ENV),
        }
    )
    assert sign_in_source(other_user) != base
    assert sign_in_source(jwt_spec(loginUrl="https://test.salesforce.com")) != base
    # The API version, the cap... change nothing about who signs in where.
    assert sign_in_source(jwt_spec(dailyApiCap=5)) == base
