"""Building the pinned helm binary into ``.cache/helm/<version>/bin`` with Go (once).

``make helm-check`` runs ``python -m devstack.helm install``, which prints the binary's path. There is
no prebuilt download: helm is built from its Go module (``go install``), so the machine needs Go
(``/usr/local/go/bin/go`` or on PATH) and the Go module proxy. A second run finds the binary and
builds nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack.paths import CACHE_DIR

HELM_VERSION = "v3.19.0"
HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
# The Kubernetes version `helm template` and `helm lint` assume without a cluster. helm's own release
# build sets it (with the version) through -ldflags from its k8s.io/client-go (v0.34 for v3.19.0:
# Kubernetes 1.34); a plain `go install` would leave helm's fallback, 1.20.
KUBE_VERSION = ("1", "34")
_GO_CANDIDATES = (Path("/usr/local/go/bin/go"),)


class HelmInstallError(RuntimeError):
    """Go is missing or the build failed; the message says what to do."""


def helm_bin_dir(version: str = HELM_VERSION) -> Path:
    return CACHE_DIR / "helm" / version / "bin"


def helm_path(version: str = HELM_VERSION) -> Path:
    return helm_bin_dir(version) / "helm"


def find_go() -> str:
    go = shutil.which("go")
    if go is not None:
        return go
    for candidate in _GO_CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    msg = "Go is missing (needed to build helm); install it, e.g. apt-get install -y golang-go"
    raise HelmInstallError(msg)


def install_helm(version: str = HELM_VERSION) -> tuple[Path, float | None]:
    """Build helm unless present; returns its path and the build's seconds (None: nothing built)."""
    target = helm_path(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target, None
    go = find_go()
    # Built into a side folder and moved into place last, so an interrupted build never
    # leaves a half-written binary that the next run would take for a complete one.
    partial = target.parent.with_name("bin.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = {**os.environ, "GOBIN": str(partial), "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    major, minor = KUBE_VERSION
    ldflags = [
        "-s",
        "-w",
        f"-X helm.sh/helm/v3/internal/version.version={version}",
        *(
            f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
            for package in ("chartutil", "lint/rules")
            for part, value in (("Major", major), ("Minor", minor))
        ),
    ]
    command = [go, "install", "-trimpath", f"-ldflags={' '.join(ldflags)}", f"{HELM_MODULE}@{version}"]
    began = time.monotonic()
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0 or not (partial / "helm").is_file():
        msg = f"`go install {HELM_MODULE}@{version}` failed (exit {result.returncode})"
        raise HelmInstallError(msg)
    seconds = time.monotonic() - began
    shutil.rmtree(target.parent, ignore_errors=True)
    partial.rename(target.parent)
    return target, seconds


def main(argv: list[str]) -> int:
    if argv not in (["install"], ["path"]):
        print("usage: python -m devstack.helm install|path", file=sys.stderr)
        return 2
    if argv == ["path"]:
        print(helm_path())
        return 0
    try:
        path, seconds = install_helm()
    except HelmInstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    built = f"built in {seconds:.0f}s" if seconds is not None else "already installed"
    print(f"helm {HELM_VERSION}: {path} ({built})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
