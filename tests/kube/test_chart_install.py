"""The Helm chart installs, upgrades and uninstalls on a real Kubernetes API server (issue #20).

For every values file in helm/duplex/ci/: ``helm lint`` and ``helm template`` pass; ``helm install --wait``
succeeds, every object the chart renders exists, every Deployment is available (kwok makes the Pods Ready)
and each pre-install hook Job (migrations, topics) completed; ``helm upgrade --wait`` with a changed value
rolls the change out and runs the hooks again; ``helm uninstall --wait`` leaves none of the release's objects
behind. The API server admits the KEDA and Prometheus Operator resources against their real CRD schemas.
Deliberately broken values (tests/kube/broken/) are refused by the chart's values.schema.json or by the API
server, with the message a user would need.

Marked ``kube``, which ``make test`` leaves out: the first run on a machine builds Kubernetes (minutes).
``make chart-install`` builds it first, then runs these (``pytest tests/kube -m kube``).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.paths import REPO_ROOT
from tests.kube.conftest import Kube

pytestmark = [pytest.mark.kube, pytest.mark.timeout(900)]

CHART = REPO_ROOT / "helm" / "duplex"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
BROKEN = Path(__file__).parent / "broken"
RELEASE = "duplex"
WAIT = "240s"
HOOK = "helm.sh/hook"
# A Deployment per service; the upgrade changes one that the values file enables.
COMPONENT_VALUES_KEY = {
    "mapping": "mapping",
    "conflict-resolver": "conflictResolver",
    "writer": "writer",
    "cdc-ingest": "cdcIngest",
    "rate-limit-governor": "rateLimitGovernor",
    "admin": "admin",
}
UPGRADE_ANNOTATION = "duplex.test/upgrade"

Doc = dict[str, Any]


def _namespace_for(values: Path) -> str:
    return ("ci-" + re.sub(r"[^a-z0-9-]+", "-", values.stem.lower())).strip("-")[:63]


def render(k: Kube, namespace: str, *args: str) -> list[Doc]:
    out = k.ok(k.helm("template", RELEASE, str(CHART), "--namespace", namespace, *args))
    return [doc for doc in yaml.safe_load_all(out) if doc and doc.get("kind")]


def is_hook(doc: Doc) -> bool:
    return HOOK in ((doc.get("metadata") or {}).get("annotations") or {})


def write_manifest(docs: list[Doc], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def wait_until(what: str, check: Callable[[], bool], within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within:.0f}s waiting for {what}")
        time.sleep(0.2)


def provide_prerequisites(k: Kube, namespace: str, docs: list[Doc]) -> None:
    """The namespace, and the ServiceAccounts the values file names but the chart does not create.

    Such accounts are the operator's to provide (ci/all-options-values.yaml names ``duplex-hooks`` for the
    hook Jobs); without them the API server's ServiceAccount admission refuses the Pods.
    """
    k.ok(k.kubectl("create", "namespace", namespace))
    # Until the controller-manager has made it, Pods without an account of their own are refused, and
    # the Job controller backs off for many seconds before trying again.
    wait_until(
        f"namespace {namespace}'s default ServiceAccount",
        lambda: k.kubectl("get", "serviceaccount", "default", "-n", namespace).returncode == 0,
    )
    created = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ServiceAccount"}
    named = {
        spec["serviceAccountName"]
        for doc in docs
        if (spec := ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("serviceAccountName")
    }
    for account in sorted(named - created):
        k.ok(k.kubectl("create", "serviceaccount", account, "--namespace", namespace))


def completed_jobs(k: Kube, namespace: str) -> dict[str, set[str]]:
    """For each Job name, the uids of the Jobs by that name the Job controller reported Completed.

    Hook Jobs are deleted once they succeed (hook-succeeded), so their events are what is left of them.
    """
    events = k.get("events", "--namespace", namespace, "--field-selector", "involvedObject.kind=Job,reason=Completed")
    done: dict[str, set[str]] = {}
    for event in events["items"]:
        involved = event["involvedObject"]
        done.setdefault(involved["name"], set()).add(involved["uid"])
    return done


def assert_deployments_available(k: Kube, namespace: str, docs: list[Doc]) -> None:
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        live = k.get("deployment", doc["metadata"]["name"], "--namespace", namespace)
        status, wanted = live.get("status", {}), live["spec"]["replicas"]
        assert status.get("observedGeneration") == live["metadata"]["generation"], live["metadata"]["name"]
        assert status.get("updatedReplicas", 0) == wanted, (live["metadata"]["name"], status)
        assert status.get("availableReplicas", 0) == wanted, (live["metadata"]["name"], status)


def release_objects(k: Kube, namespace: str, manifest: Path) -> list[str]:
    return k.ok(
        k.kubectl("get", "--namespace", namespace, "-f", str(manifest), "--ignore-not-found", "-o", "name")
    ).split()


@pytest.fixture
def namespace_cleanup(kube_cluster: Kube) -> Iterator[list[str]]:
    """Namespaces to delete after the test, whatever its outcome (the release first, so its hooks do not linger)."""
    namespaces: list[str] = []
    yield namespaces
    for namespace in namespaces:
        kube_cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found", "--wait")
        kube_cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


def test_ci_values_exist() -> None:
    assert CI_VALUES, f"no values files in {CHART / 'ci'}"


@pytest.mark.parametrize("values", CI_VALUES, ids=[path.stem for path in CI_VALUES])
def test_lints_and_renders(kube_cluster: Kube, values: Path) -> None:
    k = kube_cluster
    k.ok(k.helm("lint", str(CHART), "--strict", "--values", str(values)))
    docs = render(k, _namespace_for(values), "--values", str(values))
    assert any(doc["kind"] == "Deployment" for doc in docs)


def test_crds_check_custom_resources_against_their_schemas(kube_cluster: Kube, tmp_path: Path) -> None:
    """The CRDs in deploy/kube/crds are installed and enforce their schemas (not merely make the kinds known)."""
    k = kube_cluster
    scaled_object: Doc = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "schema-probe", "namespace": "default"},
        "spec": {
            "scaleTargetRef": {"name": "mapping"},
            "minReplicaCount": "two",
            "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}],
        },
    }
    result = k.kubectl("apply", "--dry-run=server", "-f", str(write_manifest([scaled_object], tmp_path / "so.yaml")))
    assert result.returncode != 0
    assert 'spec.minReplicaCount: Invalid value: "string": spec.minReplicaCount in body must be of type integer' in (
        result.stderr
    ), result.stderr
    fixed = copy.deepcopy(scaled_object)
    fixed["spec"]["minReplicaCount"] = 2
    k.ok(k.kubectl("apply", "--dry-run=server", "-f", str(write_manifest([fixed], tmp_path / "so-ok.yaml"))))

    service_monitor: Doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "schema-probe", "namespace": "default"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "scheme": "gopher"}]},
    }
    result = k.kubectl("apply", "--dry-run=server", "-f", str(write_manifest([service_monitor], tmp_path / "sm.yaml")))
    assert result.returncode != 0
    assert 'spec.endpoints[0].scheme: Unsupported value: "gopher"' in result.stderr, result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=[path.stem for path in CI_VALUES])
def test_install_upgrade_uninstall(
    kube_cluster: Kube, values: Path, tmp_path: Path, namespace_cleanup: list[str]
) -> None:
    k = kube_cluster
    namespace = _namespace_for(values)
    docs = render(k, namespace, "--values", str(values))
    hook_jobs = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Job" and is_hook(doc)}
    manifest = write_manifest([doc for doc in docs if not is_hook(doc)], tmp_path / "release.yaml")
    namespace_cleanup.append(namespace)
    provide_prerequisites(k, namespace, docs)

    k.ok(
        k.helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--values",
            str(values),
            "--wait",
            "--timeout",
            WAIT,
        )
    )
    status = json.loads(k.ok(k.helm("status", RELEASE, "--namespace", namespace, "--output", "json")))
    assert (status["info"]["status"], status["version"]) == ("deployed", 1)
    live = set(release_objects(k, namespace, manifest))
    assert len(live) == len([doc for doc in docs if not is_hook(doc)]), live
    assert_deployments_available(k, namespace, docs)
    done = completed_jobs(k, namespace)
    assert all(len(done.get(job, ())) == 1 for job in hook_jobs), (hook_jobs, done)

    # The upgrade changes one service's pod template: a real rolling update (new ReplicaSet, old Pods deleted).
    deployments = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc for doc in docs if doc["kind"] == "Deployment"
    }
    component = next(name for name in COMPONENT_VALUES_KEY if name in deployments)
    change = f"{COMPONENT_VALUES_KEY[component]}.podAnnotations.{UPGRADE_ANNOTATION.replace('.', chr(92) + '.')}=two"
    k.ok(
        k.helm(
            "upgrade", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values),
            "--set-string", change, "--wait", "--timeout", WAIT,
        )
    )  # fmt: skip
    status = json.loads(k.ok(k.helm("status", RELEASE, "--namespace", namespace, "--output", "json")))
    assert (status["info"]["status"], status["version"]) == ("deployed", 2)
    changed = k.get("deployment", deployments[component]["metadata"]["name"], "--namespace", namespace)
    assert changed["spec"]["template"]["metadata"]["annotations"][UPGRADE_ANNOTATION] == "two"
    assert_deployments_available(k, namespace, docs)
    done = completed_jobs(k, namespace)
    assert all(len(done.get(job, ())) == 2 for job in hook_jobs), (hook_jobs, done)

    k.ok(k.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", WAIT))
    assert release_objects(k, namespace, manifest) == []
    selector = f"app.kubernetes.io/instance={RELEASE}"
    wait_until(
        "the release's Pods and ReplicaSets to be deleted",
        lambda: not k.ok(k.kubectl("get", "pods,replicasets,jobs", "-n", namespace, "-l", selector, "-o", "name")),
    )
    assert not k.ok(k.kubectl("get", "secrets", "-n", namespace, "-l", f"owner=helm,name={RELEASE}", "-o", "name"))


def test_schema_refuses_wrong_type(kube_cluster: Kube, namespace_cleanup: list[str]) -> None:
    k = kube_cluster
    namespace = "broken-schema"
    namespace_cleanup.append(namespace)
    k.ok(k.kubectl("create", "namespace", namespace))
    result = k.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace,
        "--values", str(BROKEN / "schema-wrong-type.yaml"), "--wait", "--timeout", WAIT,
    )  # fmt: skip
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert re.search(r"mapping/replicas.*got string, want integer", result.stderr), result.stderr
    # Refused before anything reached the cluster: no release, no objects.
    assert k.helm("status", RELEASE, "--namespace", namespace).returncode != 0
    assert not k.ok(
        k.kubectl(
            "get",
            "all,configmaps,secrets,jobs",
            "-n",
            namespace,
            "-l",
            f"app.kubernetes.io/instance={RELEASE}",
            "-o",
            "name",
        )
    )


def test_api_server_refuses_an_invalid_label(kube_cluster: Kube, namespace_cleanup: list[str]) -> None:
    """Pod labels are any strings to values.schema.json; only the API server knows Kubernetes' label syntax."""
    k = kube_cluster
    namespace = "broken-api"
    namespace_cleanup.append(namespace)
    values = BROKEN / "api-invalid-label.yaml"
    docs = render(k, namespace, "--values", str(values))  # the chart's schema lets it through
    provide_prerequisites(k, namespace, docs)
    result = k.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values), "--wait", "--timeout", WAIT,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(
        r'Deployment\.apps "[\w-]+-mapping" is invalid: spec\.template\.labels: Invalid value: "sync team!": '
        r"a valid label must be",
        result.stderr,
    ), result.stderr


def test_crd_schema_refuses_a_bad_service_monitor_interval(kube_cluster: Kube, namespace_cleanup: list[str]) -> None:
    """A value the chart's own schema lets through, that only the ServiceMonitor CRD's schema refuses."""
    k = kube_cluster
    namespace = "broken-crd"
    namespace_cleanup.append(namespace)
    values = BROKEN / "crd-servicemonitor-interval.yaml"
    docs = render(k, namespace, "--values", str(values))
    assert any(doc["kind"] == "ServiceMonitor" for doc in docs)
    provide_prerequisites(k, namespace, docs)
    result = k.helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values), "--wait", "--timeout", WAIT,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(
        r'ServiceMonitor\.monitoring\.coreos\.com "[\w-]+" is invalid: '
        r'spec\.endpoints\[0\]\.interval: Invalid value: "30s1m": spec\.endpoints\[0\]\.interval in body should match',
        result.stderr,
    ), result.stderr
