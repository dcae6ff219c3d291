"""A real Kubernetes control plane for the chart's install tests (``devstack.kube``), once per session.

The first session on a machine builds the binaries into ``.cache/kube/bin`` (minutes; later sessions reuse
them), then starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on free ports in
a temporary directory, installs the KEDA and Prometheus Operator CRDs from ``deploy/kube/crds`` and waits
until they are served. Everything is stopped at the end of the session.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import kube
from devstack.helm import HelmInstallError, install_helm
from devstack.paths import REPO_ROOT

CRDS_DIR = REPO_ROOT / "deploy" / "kube" / "crds"
COMMAND_TIMEOUT = 300.0


@dataclass(frozen=True)
class Kube:
    """The running cluster, and helm and kubectl pointed at it."""

    cluster: kube.Cluster
    helm_bin: Path

    def _env(self) -> dict[str, str]:
        # Nothing from the developer's own ~/.kube or helm settings may leak in; HOME stays for helm's caches.
        cache = self.cluster.state_dir / "helm"
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(cache),
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "HELM_CACHE_HOME": str(cache / "cache"),
            "HELM_CONFIG_HOME": str(cache / "config"),
            "HELM_DATA_HOME": str(cache / "data"),
        }

    def run(self, program: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(program), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.helm_bin, *args)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(kube.binary("kubectl"), *args)

    def ok(self, result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 0, f"`{' '.join(result.args)}` failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.ok(self.kubectl("get", "-o", "json", *args)))
        return document


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    try:
        helm_bin, _ = install_helm()
    except HelmInstallError as error:
        pytest.fail(f"helm could not be installed: {error}")
    try:
        kube.build()
    except kube.KubeError as error:
        pytest.fail(f"building the Kubernetes binaries failed: {error}")
    state_dir = tmp_path_factory.mktemp("kube")
    cluster = kube.up(state_dir)
    try:
        k = Kube(cluster, helm_bin)
        k.ok(k.kubectl("apply", "--server-side", "-f", str(CRDS_DIR)))
        k.ok(k.kubectl("wait", "--for=condition=Established", "--timeout=120s", "crd", "--all"))
        yield k
    finally:
        kube.down(state_dir)
