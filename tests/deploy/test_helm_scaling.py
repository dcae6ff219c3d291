"""The chart's lint, its scaling and monitoring, and its topics, against the code they stand for.

Every values file in ci/ passes ``helm lint --strict`` and renders. KEDA ScaledObjects watch the consumer
groups the services actually join (``ServiceKafka.group``), on the topics they subscribe to
(``services.admin.consumer_lag.CONSUMER_GROUPS``), never above the partitions those have, and sign in
with the Secrets the services use; the HPA is the CPU fallback; ServiceMonitors scrape each service's
metrics port. The topics Job's flags are parsed by the real CLI into the same table the Strimzi
KafkaTopics render, and values the chart cannot honour fail rendering with a message naming them.
"""

from __future__ import annotations

import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
import yaml

from services.admin.cli import _sized_table
from services.admin.consumer_lag import CONSUMER_GROUPS
from services.common.kafka import make_kafka
from services.common.settings import KafkaSettings
from services.common.topic_admin import topic_configs
from services.common.topics import Topic, TopicNames, TopicTable, load_topic_table
from tests.deploy.test_helm_chart import (
    BY_NAME,
    CHART,
    ROOT,
    Doc,
    _helm,
    component,
    container,
    container_ports,
    deployment,
    environment,
    load_settings,
    of_kind,
    pod_labels,
    render,
    render_fails,
)

CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
KEDA_CI = CHART / "ci" / "keda-monitoring-values.yaml"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
CONSUMERS = {"mapping": "mapping", "conflict-resolver": "conflictResolver", "writer": "writer"}
KEDA = ("--set", "autoscaling.keda.enabled=true")
HPA = ("--set", "autoscaling.hpa.enabled=true")


def ci_values(path: Path) -> Doc:
    values: Doc = yaml.safe_load(path.read_text())
    return values


def by_component(docs: list[Doc], kind: str) -> dict[str, Doc]:
    found = of_kind(docs, kind)
    named = {component(doc): doc for doc in found}
    assert len(named) == len(found), f"two {kind}s for one service"
    return named


# ---------------------------------------------------------------- lint and render every ci/ file


def test_there_is_a_ci_file_with_keda_service_monitors_and_the_prometheus_rule() -> None:
    values = ci_values(KEDA_CI)
    assert values["autoscaling"]["keda"]["enabled"] is True
    assert values["metrics"]["serviceMonitor"]["enabled"] is True
    assert values["metrics"]["prometheusRule"]["enabled"] is True


@pytest.mark.parametrize("values", [None, *CI_FILES], ids=lambda p: "defaults" if p is None else p.name)
def test_every_ci_values_file_lints_strictly_and_renders(values: Path | None) -> None:
    args = [] if values is None else ["-f", str(values)]
    lint = subprocess.run(
        [str(_helm()), "lint", str(CHART), "--strict", *args], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert render(*args)


def test_the_charts_topic_table_is_the_projects() -> None:
    # The chart cannot read files outside itself: it carries a copy, which must not drift.
    assert (CHART / "files" / "topics.yaml").read_text() == (ROOT / "deploy" / "kafka" / "topics.yaml").read_text()


# ---------------------------------------------------------------- KEDA


def _triggers(scaled: Doc) -> list[Doc]:
    triggers: list[Doc] = scaled["spec"]["triggers"]
    return triggers


@pytest.mark.parametrize("prefix", ["", "prod."])
def test_scaled_objects_watch_the_groups_and_topics_the_services_consume(prefix: str) -> None:
    docs = render(*KEDA, "--set", f"kafka.topicPrefix={prefix}")
    scaled = by_component(docs, "ScaledObject")
    # cdc-ingest reads Salesforce, not Kafka; the governor and the admin API consume nothing.
    assert set(scaled) == set(CONSUMER_GROUPS) == set(CONSUMERS)
    names = TopicNames(load_topic_table(), prefix=prefix)
    for service, topics in CONSUMER_GROUPS.items():
        spec = scaled[service]["spec"]
        target = deployment(docs, service)
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": target["metadata"]["name"],
        }
        # The Deployment leaves its count to KEDA, so an upgrade does not reset it.
        assert "replicas" not in target["spec"]
        group = make_kafka(
            KafkaSettings(bootstrap_servers="kafka:9092", topic_prefix=prefix), service_name=service, topic_names=names
        ).group
        triggers = _triggers(scaled[service])
        assert [t["metadata"]["topic"] for t in triggers] == [names(topic) for topic in topics]
        for trigger in triggers:
            assert trigger["type"] == "kafka"
            assert trigger["metadata"]["consumerGroup"] == group
            assert trigger["metadata"]["bootstrapServers"] == "kafka:9092"
            assert trigger["metadata"]["lagThreshold"] == "100"
            # KEDA's trigger metadata is a map of strings: a number would be refused by its CRD.
            assert all(isinstance(value, str) for value in trigger["metadata"].values())
            assert "authenticationRef" not in trigger
    assert of_kind(docs, "TriggerAuthentication") == []
    assert of_kind(docs, "HorizontalPodAutoscaler") == []


def test_replicas_stay_within_the_partitions_of_the_services_topics() -> None:
    docs = render("-f", str(KEDA_CI))
    values = ci_values(KEDA_CI)
    scaled = by_component(docs, "ScaledObject")
    table = _sized_table(["6", "crm_writes=12"], [])
    for service, topics in CONSUMER_GROUPS.items():
        spec = scaled[service]["spec"]
        bounds = values[CONSUMERS[service]]["autoscaling"]
        assert spec["minReplicaCount"] == bounds["minReplicas"]
        assert spec["maxReplicaCount"] == bounds.get("maxReplicas", max(table.topics[t].partitions for t in topics))
        assert spec["maxReplicaCount"] <= max(table.topics[t].partitions for t in topics)


def test_max_replicas_default_to_the_partition_count() -> None:
    docs = render(*KEDA, "--set", "topics.partitions=5", "--set", "topics.overrides.crm_writes.partitions=7")
    scaled = by_component(docs, "ScaledObject")
    assert {name: doc["spec"]["maxReplicaCount"] for name, doc in scaled.items()} == {
        "mapping": 5,
        "conflict-resolver": 5,
        "writer": 7,
    }


def _secret_refs(docs: list[Doc], workload: Doc) -> set[tuple[str, str]]:
    """The (Secret, key) pairs a pod reads Kafka's credentials and TLS files from."""
    refs = {
        (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
        for entry in container(workload).get("env", [])
        if entry["name"].startswith("KAFKA_") and "secretKeyRef" in entry.get("valueFrom", {})
    }
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        if volume["name"].startswith("kafka-tls"):
            refs |= {(volume["secret"]["secretName"], item["key"]) for item in volume["secret"]["items"]}
    return refs


def test_keda_signs_in_to_kafka_with_the_secrets_the_services_use() -> None:
    docs = render("-f", str(ALL_OPTIONS), *KEDA)
    (auth,) = of_kind(docs, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = auth["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} == {"username", "password", "ca", "cert", "key"}
    assert {(ref["name"], ref["key"]) for ref in refs} == _secret_refs(docs, deployment(docs, "writer"))
    by_parameter = {ref["parameter"]: (ref["name"], ref["key"]) for ref in refs}
    assert by_parameter["username"] == ("duplex-kafka-user", "user")
    assert by_parameter["ca"] == ("kafka-cluster-ca-cert", "ca.crt")
    for scaled in of_kind(docs, "ScaledObject"):
        for trigger in _triggers(scaled):
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
            assert trigger["metadata"]["sasl"] == "scram_sha512"
            assert trigger["metadata"]["tls"] == "enable"
            assert trigger["metadata"]["consumerGroup"].startswith("staging.")


@pytest.mark.parametrize(("mechanism", "mode"), [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256")])
def test_keda_speaks_the_sasl_mechanism_the_services_use(mechanism: str, mode: str) -> None:
    docs = render(
        *KEDA,
        "--set",
        "kafka.securityProtocol=SASL_PLAINTEXT",
        "--set",
        f"kafka.sasl.mechanism={mechanism}",
        "--set",
        "kafka.sasl.existingSecret=kafka-user",
    )
    (auth,) = of_kind(docs, "TriggerAuthentication")
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password"}
    for scaled in of_kind(docs, "ScaledObject"):
        for trigger in _triggers(scaled):
            assert trigger["metadata"]["sasl"] == mode
            assert "tls" not in trigger["metadata"]


# ---------------------------------------------------------------- the HPA fallback


def test_the_hpa_scales_the_consumers_on_cpu_within_their_partitions() -> None:
    docs = render(*HPA, "--set", "writer.autoscaling.minReplicas=2", "--set", "writer.autoscaling.maxReplicas=4")
    hpas = by_component(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(CONSUMER_GROUPS)
    for service, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"]["name"] == deployment(docs, service)["metadata"]["name"]
        assert "replicas" not in deployment(docs, service)["spec"]
        (metric,) = spec["metrics"]
        assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}
        # The HPA's CPU target is a share of the request: without one it cannot decide.
        assert container(deployment(docs, service))["resources"]["requests"]["cpu"]
    assert (hpas["writer"]["spec"]["minReplicas"], hpas["writer"]["spec"]["maxReplicas"]) == (2, 4)
    assert hpas["mapping"]["spec"]["maxReplicas"] == 12
    # A writer that never drops below two keeps its disruption budget.
    assert "writer" in {component(pdb) for pdb in of_kind(docs, "PodDisruptionBudget")}
    assert of_kind(docs, "ScaledObject") == []


def test_without_autoscaling_the_deployments_keep_their_replicas() -> None:
    docs = render("--set", "writer.replicas=3")
    assert deployment(docs, "writer")["spec"]["replicas"] == 3
    assert of_kind(docs, "ScaledObject") == of_kind(docs, "HorizontalPodAutoscaler") == []


# ---------------------------------------------------------------- ServiceMonitors


def test_service_monitors_scrape_every_services_metrics_port() -> None:
    docs = render("-f", str(KEDA_CI))
    monitors = by_component(docs, "ServiceMonitor")
    assert set(monitors) == set(BY_NAME)
    services = of_kind(docs, "Service")
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert spec["namespaceSelector"] == {"matchNames": ["sync"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
        wanted = spec["selector"]["matchLabels"]
        (selected,) = [svc for svc in services if wanted.items() <= svc["metadata"]["labels"].items()]
        workload = deployment(docs, name)
        assert selected["spec"]["selector"].items() <= pod_labels(workload).items()
        (port,) = [p for p in selected["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["targetPort"] == "metrics"
        assert port["port"] == container_ports(workload)["metrics"]


def test_no_service_monitors_unless_enabled() -> None:
    docs = render("-f", str(ALL_OPTIONS))
    assert of_kind(docs, "ServiceMonitor") == []
    # The metrics Services stay: helm test reads every service's readiness through them.
    assert len([svc for svc in of_kind(docs, "Service") if svc["metadata"]["name"].endswith("-metrics")]) == len(
        BY_NAME
    )


def readiness_test(docs: list[Doc]) -> Doc:
    (pod,) = [doc for doc in of_kind(docs, "Pod") if doc["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    return pod


def test_helm_test_asks_every_enabled_service_for_readiness_through_its_metrics_service() -> None:
    docs = render("-n", "sync", "--set", "cdcIngest.enabled=false")
    pod = readiness_test(docs)
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    (checker,) = pod["spec"]["containers"]
    assert checker["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    urls = checker["command"][3:]
    services = {svc["metadata"]["name"]: svc for svc in of_kind(docs, "Service")}
    asked = set()
    for url in urls:
        host, port = url.removeprefix("http://").removesuffix("/readyz").split(":")
        name, namespace, _ = host.split(".")
        assert namespace == "sync"
        service = services[name]
        (workload,) = [
            w for w in of_kind(docs, "Deployment") if service["spec"]["selector"].items() <= pod_labels(w).items()
        ]
        assert int(port) == container_ports(workload)["metrics"]
        asked.add(component(workload))
    assert asked == set(BY_NAME) - {"cdc-ingest"}


@pytest.mark.parametrize(("statuses", "code"), [((200, 200), 0), ((200, 503), 1)], ids=["all ready", "one not"])
def test_the_readiness_check_fails_unless_every_service_answers_ready(
    statuses: tuple[int, ...], code: int, tmp_path: Path
) -> None:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[int(self.path.strip("/").split("/")[0])])
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = readiness_test(render())["spec"]["containers"][0]["command"][2]
        port = server.server_address[1]
        urls = [f"http://127.0.0.1:{port}/{n}/readyz" for n in range(len(statuses))]
        result = subprocess.run([sys.executable, "-c", script, *urls], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == code, result.stdout
    assert ("NOT READY: " + urls[-1] in result.stdout) is bool(code)


# ---------------------------------------------------------------- topics: the Job's flags and Strimzi


def _job_table(docs: list[Doc]) -> TopicTable:
    """The table the topics Job's `duplex topics apply` builds from its flags, parsed by the CLI itself."""
    (job,) = [doc for doc in of_kind(docs, "Job") if component(doc) == "topics"]
    command = container(job)["command"]
    assert command[:6] == ["python", "-m", "services.admin", "topics", "apply", "--replication-factor"]
    options = command[7:]
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert {flag for flag, _ in pairs} <= {"--partitions", "--retention-ms"}
    return _sized_table([v for f, v in pairs if f == "--partitions"], [v for f, v in pairs if f == "--retention-ms"])


SIZES = (
    "--set",
    "topics.partitions=24",
    "--set",
    "topics.retentionMs=86400000",
    "--set",
    "topics.overrides.crm_writes.partitions=6",
    "--set",
    "topics.overrides.crm_writes.retentionMs=-1",
    "--set",
    "topics.overrides.crm_writes_dlq.partitions=1",
)


def test_the_topics_job_passes_partitions_and_retention_to_topics_apply() -> None:
    table = _job_table(render(*SIZES))
    assert table.topics[Topic.CRM_WRITES].partitions == 6
    assert table.topics[Topic.CRM_WRITES].retention_ms == -1
    assert table.topics[Topic.CRM_WRITES_DLQ].partitions == 1
    assert table.topics[Topic.MAPPED_CHANGES].partitions == 24
    assert table.topics[Topic.MAPPED_CHANGES].retention_ms == 86_400_000
    assert table.topics[Topic.TENANTS].retention_ms == -1
    assert _job_table(render()) == load_topic_table()


def test_strimzi_topics_replace_the_job_with_what_the_job_would_create() -> None:
    job_table = _job_table(render(*SIZES, "--set", "kafka.topicPrefix=prod."))
    docs = render(
        *SIZES,
        "--set",
        "kafka.topicPrefix=prod.",
        "--set",
        "topics.strimzi.enabled=true",
        "--set",
        "topics.strimzi.cluster=main",
    )
    assert "topics" not in {component(doc) for doc in of_kind(docs, "Job")}
    topics = of_kind(docs, "KafkaTopic")
    names = TopicNames(job_table, prefix="prod.")
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(names(topic) for topic in Topic)
    by_name = {t["spec"]["topicName"]: t for t in topics}
    for topic, spec in job_table.topics.items():
        resource = by_name[names(topic)]
        assert resource["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "main"
        assert resource["spec"]["partitions"] == spec.partitions, topic
        assert resource["spec"]["replicas"] == 3
        assert {k: str(v) for k, v in resource["spec"]["config"].items()} == topic_configs(spec, 3), topic


def test_the_topics_job_runs_unless_strimzi_creates_the_topics() -> None:
    assert "topics" in {component(doc) for doc in of_kind(render(), "Job")}
    assert of_kind(render(), "KafkaTopic") == []


# ---------------------------------------------------------------- values the chart refuses

REFUSED = [
    ("both autoscalers", (*KEDA, *HPA), "autoscaling.keda.enabled and autoscaling.hpa.enabled are both set"),
    (
        "more replicas than partitions",
        (*KEDA, "--set", "writer.autoscaling.maxReplicas=13"),
        "writer.autoscaling.maxReplicas is 13, above the 12 partitions of its topics (crm_writes)",
    ),
    (
        "more replicas than partitions, through fewer partitions",
        (*HPA, "--set", "topics.partitions=4", "--set", "mapping.autoscaling.maxReplicas=8"),
        "mapping.autoscaling.maxReplicas is 8, above the 4 partitions of its topics (app_changes, crm_changes)",
    ),
    (
        "fewer max than min replicas",
        (*KEDA, "--set", "writer.autoscaling.minReplicas=3", "--set", "writer.autoscaling.maxReplicas=2"),
        "writer.autoscaling.maxReplicas (2) is below its minReplicas (3)",
    ),
    ("a retention of nothing", ("--set", "topics.retentionMs=0"), "at '/topics/retentionMs'"),
    (
        "a retention below a minute",
        ("--set", "topics.overrides.crm_writes.retentionMs=1000"),
        "at '/topics/overrides/crm_writes/retentionMs'",
    ),
    ("no partitions", ("--set", "topics.partitions=0"), "at '/topics/partitions'"),
    (
        "a topic not in the table",
        ("--set", "topics.overrides.crm-writes.partitions=3"),
        "invalid propertyName 'crm-writes'",
    ),
    (
        "Strimzi without its cluster",
        ("--set", "topics.strimzi.enabled=true"),
        "topics.strimzi.enabled needs topics.strimzi.cluster",
    ),
    (
        "a misspelt autoscaler option",
        ("--set", "autoscaling.keda.lagTreshold=5"),
        "additional properties 'lagTreshold' not allowed",
    ),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_the_chart_refuses_scaling_and_topics_it_cannot_honour(args: tuple[str, ...], message: str) -> None:
    assert message in render_fails(*args)


def test_the_admin_api_measures_lag_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("-f", str(KEDA_CI))
    admin = BY_NAME["admin"]
    loaded: Any = load_settings(monkeypatch, admin.settings, environment(docs, deployment(docs, "admin")))
    assert (loaded.consumer_lag_enabled, loaded.consumer_lag_interval_seconds) == (True, 30)
    off = render("--set", "admin.consumerLag.enabled=false")
    loaded = load_settings(monkeypatch, admin.settings, environment(off, deployment(off, "admin")))
    assert loaded.consumer_lag_enabled is False
