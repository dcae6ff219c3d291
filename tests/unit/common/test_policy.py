"""The deployment's policy on tenant documents: which secret variables they may name, which hosts they may call."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.tenant_config import parse_tenant_config
from services.common.tenant_config.policy import (
    PolicySettings,
    PolicyViolationError,
    SalesforcePolicy,
    policy_issues,
)

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "tenant-acme.yaml"
STRICT = SalesforcePolicy()


# ---------------------------------------------------------------------------------------------
# Secret variables


@pytest.mark.parametrize("name", ["DUPLEX_SECRET_ACME", "DUPLEX_SECRET_", "DUPLEX_SECRET_acme_2"])
def test_a_variable_under_the_prefix_is_allowed(name: str) -> None:
    assert STRICT.env_rule(name) is None
    STRICT.check_env(name)


@pytest.mark.parametrize(
    "name", ["POSTGRES_DSN", "VAULT_KEYS", "DUPLEX_SECRETS_X", "duplex_secret_x", "X_DUPLEX_SECRET_"]
)
def test_a_variable_outside_the_prefix_is_refused(name: str) -> None:
    assert STRICT.env_rule(name) == (
        "names a variable outside DUPLEX_SECRET_*, the prefix this deployment allows for tenant secrets; "
        f"rename the variable to DUPLEX_SECRET_{name}"
    )
    with pytest.raises(PolicyViolationError, match=f"^secret variable {name}: names a variable outside"):
        STRICT.check_env(name)


def test_another_prefix_and_an_empty_one() -> None:
    acme = SalesforcePolicy(secret_env_prefix="ACME_")
    assert acme.env_rule("ACME_SF") is None
    assert acme.env_rule("DUPLEX_SECRET_SF") is not None
    anything = SalesforcePolicy(secret_env_prefix="")
    assert anything.env_rule("POSTGRES_DSN") is None


# ---------------------------------------------------------------------------------------------
# Hosts


@pytest.mark.parametrize(
    "url",
    [
        "https://login.salesforce.com",
        "https://test.salesforce.com",
        "https://acme.my.salesforce.com",
        "https://acme--uat.sandbox.my.salesforce.com",
        "https://login.salesforce.com:443",
        # Host names are case-insensitive.
        "https://LOGIN.Salesforce.COM",
        "https://Acme.My.SalesForce.com",
    ],
)
def test_salesforce_hosts_are_allowed(url: str) -> None:
    assert STRICT.url_rule(url) is None
    STRICT.check_url(url)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://login.salesforce.com.evil.io", "login.salesforce.com.evil.io"),
        ("https://acme.my.salesforce.com.evil.io", "acme.my.salesforce.com.evil.io"),
        ("https://evilmy.salesforce.com", "evilmy.salesforce.com"),
        ("https://my.salesforce.com", "my.salesforce.com"),
        ("https://salesforce.com", "salesforce.com"),
        ("https://eu.salesforce.com", "eu.salesforce.com"),
        ("https://login-salesforce.com", "login-salesforce.com"),
        ("https://acme.my-salesforce.com", "acme.my-salesforce.com"),
        ("https://login.salesforce.com@evil.io", "evil.io"),
        ("https://attacker.example", "attacker.example"),
    ],
)
def test_other_hosts_are_refused_and_named(url: str, host: str) -> None:
    assert STRICT.url_rule(url) == (
        f"{host} is not a Salesforce host (login.salesforce.com, test.salesforce.com, *.my.salesforce.com) "
        "nor one this deployment lists in DUPLEX_SALESFORCE_HOSTS"
    )
    with pytest.raises(PolicyViolationError, match=f"^{url}: {host} is not a Salesforce host"):
        STRICT.check_url(url)


@pytest.mark.parametrize(
    "url", ["http://localhost:8443", "https://LocalHost", "https://127.0.0.1:9443", "https://[::1]:8443"]
)
def test_localhost_only_in_development(url: str) -> None:
    assert STRICT.url_rule(url) == (
        "localhost is only allowed when the deployment is for development (DUPLEX_DEVELOPMENT=true)"
    )
    assert SalesforcePolicy(development=True).url_rule(url) is None


def test_development_allows_no_other_host() -> None:
    development = SalesforcePolicy(development=True)
    assert development.url_rule("https://127.0.0.2") is not None
    assert development.url_rule("https://attacker.example") is not None


def test_hosts_the_deployment_lists() -> None:
    policy = SalesforcePolicy(extra_hosts=("SF-Proxy.Corp", "*.my.sfcrmproducts.cn"))
    # Exact names, in any case.
    assert policy.url_rule("https://sf-proxy.corp") is None
    assert policy.url_rule("https://SF-PROXY.corp:8443") is None
    assert policy.url_rule("https://api.sf-proxy.corp") is not None
    assert policy.url_rule("https://sf-proxy.corp.evil.io") is not None
    # A wildcard is every host under the name, not the name itself nor a name that merely ends like it.
    assert policy.url_rule("https://acme.my.sfcrmproducts.cn") is None
    assert policy.url_rule("https://a.b.my.sfcrmproducts.cn") is None
    assert policy.url_rule("https://my.sfcrmproducts.cn") is not None
    assert policy.url_rule("https://evilmy.sfcrmproducts.cn") is not None
    # Salesforce's own stay allowed beside them.
    assert policy.url_rule("https://login.salesforce.com") is None


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPLEX_SECRET_ENV_PREFIX", "ACME_")
    monkeypatch.setenv("DUPLEX_SALESFORCE_HOSTS", " sf-proxy.corp , *.my.sfcrmproducts.cn ,")
    monkeypatch.setenv("DUPLEX_DEVELOPMENT", "true")
    assert PolicySettings().policy() == SalesforcePolicy("ACME_", ("sf-proxy.corp", "*.my.sfcrmproducts.cn"), True)


def test_settings_default_to_the_strict_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DUPLEX_SECRET_ENV_PREFIX", "DUPLEX_SALESFORCE_HOSTS", "DUPLEX_DEVELOPMENT"):
        monkeypatch.delenv(name, raising=False)
    assert PolicySettings().policy() == SalesforcePolicy("DUPLEX_SECRET_", (), False)


# ---------------------------------------------------------------------------------------------
# A whole document


def tenant(**salesforce: Any) -> Any:
    """The sample tenant with ``salesforce`` as its spec.salesforce."""
    document = copy.deepcopy(yaml.safe_load(SAMPLE.read_text()))
    document["spec"]["salesforce"] = {"apiVersion": "62.0", "dailyApiCap": 100, **salesforce}
    return parse_tenant_config(document)


def secret(env: str) -> dict[str, Any]:
    return {"secretRef": {"env": env}}


def test_a_document_within_the_policy_has_no_issues() -> None:
    config = tenant(
        instanceUrl="https://acme.my.salesforce.com",
        auth={"mode": "oauth_pkce", "clientId": "c", "clientSecret": secret("DUPLEX_SECRET_ACME")},
    )
    assert policy_issues(config, STRICT) == []


def test_every_refusal_is_named_by_its_field() -> None:
    config = tenant(
        instanceUrl="https://acme.example",
        loginUrl="http://localhost:8443",
        auth={
            "mode": "password",
            "clientId": "c",
            "clientSecret": secret("DUPLEX_SECRET_ACME"),
            "username": "u@acme.example",
            "password": secret("POSTGRES_DSN"),
            # A Kubernetes Secret is chosen by the deployment's RBAC, not by a variable name.
            "securityToken": {"secretRef": {"name": "acme", "key": "token"}},
        },
    )
    issues = {issue.where: issue.message for issue in policy_issues(config, STRICT)}
    assert issues == {
        "spec.salesforce.instanceUrl": STRICT.url_rule("https://acme.example"),
        "spec.salesforce.loginUrl": STRICT.url_rule("http://localhost:8443"),
        "spec.salesforce.auth.password.secretRef.env": STRICT.env_rule("POSTGRES_DSN"),
    }
    assert all(issues.values())


def test_no_login_url_means_salesforces_own() -> None:
    config = tenant(
        instanceUrl="https://acme.my.salesforce.com",
        auth={"mode": "client_credentials", "clientId": "c", "clientSecret": secret("OTHER")},
    )
    assert [issue.where for issue in policy_issues(config, STRICT)] == [
        "spec.salesforce.auth.clientSecret.secretRef.env"
    ]
    assert policy_issues(config, SalesforcePolicy(secret_env_prefix="")) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.io\\.my.salesforce.com",
        "https://evil.io;.my.salesforce.com",
        "https://.my.salesforce.com",
        "https://a..my.salesforce.com",
    ],
)
def test_a_host_that_is_not_a_dns_name_is_refused_before_the_suffix_is_looked_at(url: str) -> None:
    rule = STRICT.url_rule(url)

    assert rule is not None
    assert rule.endswith("is not a host name (letters, digits, '-' and '.')")
