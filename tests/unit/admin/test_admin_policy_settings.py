"""The admin API reads the deployment's policy from the same variables as the services."""

from __future__ import annotations

import pytest

from services.admin.settings import AdminSettings
from services.common.tenant_config.policy import SalesforcePolicy

pytestmark = pytest.mark.unit

VARIABLES = ("DUPLEX_SECRET_ENV_PREFIX", "DUPLEX_SALESFORCE_HOSTS", "DUPLEX_DEVELOPMENT")


def test_the_policy_comes_from_the_services_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPLEX_SECRET_ENV_PREFIX", "TENANT_")
    monkeypatch.setenv("DUPLEX_SALESFORCE_HOSTS", "sf-proxy.corp,*.my.sfcrmproducts.cn")
    monkeypatch.setenv("DUPLEX_DEVELOPMENT", "true")

    policy = AdminSettings(vault=None).policy.policy()

    assert policy == SalesforcePolicy("TENANT_", ("sf-proxy.corp", "*.my.sfcrmproducts.cn"), development=True)


def test_without_them_the_policy_is_the_strict_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)

    assert AdminSettings(vault=None).policy.policy() == SalesforcePolicy()
    assert SalesforcePolicy() == SalesforcePolicy("DUPLEX_SECRET_", (), development=False)
