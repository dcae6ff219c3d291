"""What a deployment lets a tenant document point at: which secrets it may name, which hosts it may call.

Whoever may apply a tenant must not be able to make a service read an arbitrary variable of its
own environment (``POSTGRES_DSN``) or send credentials to an arbitrary host. A document can be
perfectly well formed and still be refused here; the admin API and ``duplex config validate``
report these refusals beside the document's other problems, and the services check again before
they resolve a secret or call a login host, so a document stored before a policy tightened cannot
slip through either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.tenant_config.model import SecretValue, TenantConfig
from services.common.tenant_config.validation import ConfigIssue, IssuePath

# Salesforce's own login hosts, and the suffix of every My Domain (production and
# ``*.sandbox.my.salesforce.com`` alike) and of the instance URLs its token responses name.
SALESFORCE_LOGIN_HOSTS = ("login.salesforce.com", "test.salesforce.com")
SALESFORCE_HOST_SUFFIX = ".my.salesforce.com"
DEFAULT_SECRET_ENV_PREFIX = "DUPLEX_SECRET_"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# A DNS name: dot-separated labels of letters, digits and inner hyphens. urlsplit passes on whatever
# sits between "//" and the port ("evil.io\\.my.salesforce.com"), and a suffix check needs real labels.
_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class PolicyViolationError(Exception):
    """A service was about to resolve a secret or call a host the deployment's policy does not allow."""


@dataclass(frozen=True)
class SalesforcePolicy:
    """The rules; :class:`PolicySettings` reads them from the environment."""

    secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX
    # Exact host names, or ``*.example.com`` for every host under example.com.
    extra_hosts: tuple[str, ...] = ()
    # Only a development deployment may reach localhost (the salesforce-emulator).
    development: bool = False

    def env_rule(self, name: str) -> str | None:
        """Why ``name`` may not be read as a tenant secret, or None when it may."""
        if not self.secret_env_prefix or name.startswith(self.secret_env_prefix):
            return None
        return (
            f"names a variable outside {self.secret_env_prefix}*, the prefix this deployment allows for "
            f"tenant secrets; rename the variable to {self.secret_env_prefix}{name}"
        )

    def url_rule(self, url: str) -> str | None:
        """Why ``url``'s host may not be called with a tenant's credentials, or None when it may."""
        host = (urlsplit(url).hostname or "").lower()
        if host in _LOOPBACK_HOSTS:
            if self.development:
                return None
            return "localhost is only allowed when the deployment is for development (DUPLEX_DEVELOPMENT=true)"
        if not _DNS_NAME.fullmatch(host):
            return f"{host!r} is not a host name (letters, digits, '-' and '.')"
        if host in SALESFORCE_LOGIN_HOSTS or host.endswith(SALESFORCE_HOST_SUFFIX):
            return None
        if any(_host_matches(host, pattern) for pattern in self.extra_hosts):
            return None
        return (
            f"{host} is not a Salesforce host (login.salesforce.com, test.salesforce.com, *.my.salesforce.com) "
            "nor one this deployment lists in DUPLEX_SALESFORCE_HOSTS"
        )

    def check_env(self, name: str) -> None:
        if (rule := self.env_rule(name)) is not None:
            raise PolicyViolationError(f"secret variable {name}: {rule}")

    def check_url(self, url: str) -> None:
        if (rule := self.url_rule(url)) is not None:
            raise PolicyViolationError(f"{url}: {rule}")


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


class PolicySettings(BaseSettings):
    """``DUPLEX_SECRET_ENV_PREFIX``, ``DUPLEX_SALESFORCE_HOSTS`` (comma-separated), ``DUPLEX_DEVELOPMENT``."""

    model_config = SettingsConfigDict(env_prefix="DUPLEX_", frozen=True, extra="ignore")

    secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX
    salesforce_hosts: str = Field(default="", description="Extra hosts, e.g. sf-proxy.corp,*.my.sfcrmproducts.cn")
    development: bool = False

    def policy(self) -> SalesforcePolicy:
        hosts = tuple(h.strip() for h in self.salesforce_hosts.split(",") if h.strip())
        return SalesforcePolicy(self.secret_env_prefix, hosts, self.development)


def policy_issues(config: TenantConfig, policy: SalesforcePolicy) -> list[ConfigIssue]:
    """Every place ``config`` names a secret variable or a host that ``policy`` does not allow."""
    salesforce = config.spec.salesforce
    at: IssuePath = ("spec", "salesforce")
    issues = [
        ConfigIssue((*at, key), rule)
        for key, url in (("instanceUrl", salesforce.instance_url), ("loginUrl", salesforce.login_url))
        if url is not None and (rule := policy.url_rule(url)) is not None
    ]
    for path, secret in _secrets(config):
        if secret.secret_ref.env is not None and (rule := policy.env_rule(secret.secret_ref.env)) is not None:
            issues.append(ConfigIssue((*path, "secretRef", "env"), rule))
    return issues


def _secrets(config: TenantConfig) -> Iterator[tuple[IssuePath, SecretValue]]:
    auth = config.spec.salesforce.auth
    at: IssuePath = ("spec", "salesforce", "auth")
    for key, field in type(auth).model_fields.items():
        value = getattr(auth, key)
        if isinstance(value, SecretValue):
            yield (*at, field.alias or key), value
