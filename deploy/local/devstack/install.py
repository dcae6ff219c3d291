"""Fetching what the local stack and its tests run: Kafka's jars (Maven), PostgreSQL 15, Chromium and the
image tools (apt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from devstack.paths import CACHE_DIR, KAFKA_POM, POSTGRES_BIN_DIR

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
# Written last, so a download interrupted half-way is never taken for a complete one.
_COMPLETE_MARKER = ".complete"
POSTGRES_PACKAGE = "postgresql-15"
POSTGRES_BINARIES = ("initdb", "postgres", "pg_isready")
# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
CHROMIUM_PACKAGE = "chromium"
CHROMIUM = Path("/usr/bin/chromium")


class InstallError(RuntimeError):
    """A prerequisite is missing and could not be installed; the message says what to run."""


def kafka_version(pom: Path = KAFKA_POM) -> str:
    """The Kafka version pinned in ``deploy/kafka/pom.xml`` (the one place it is written)."""
    version = ET.parse(pom).getroot().findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not version:
        msg = f"{pom} has no <kafka.version> property"
        raise InstallError(msg)
    return version.strip()


def kafka_libs_dir(version: str | None = None) -> Path:
    """Where the broker's jars live once installed."""
    return CACHE_DIR / "kafka" / (version or kafka_version()) / "libs"


def kafka_installed(libs: Path | None = None) -> bool:
    return ((libs or kafka_libs_dir()) / _COMPLETE_MARKER).exists()


def install_kafka(pom: Path = KAFKA_POM) -> Path:
    """Download the broker's runtime jars unless already present (then no network is used)."""
    libs = kafka_libs_dir(kafka_version(pom))
    if kafka_installed(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = "Maven is missing; install it with: apt-get install -y maven openjdk-17-jre-headless"
        raise InstallError(msg)
    partial = libs.with_name(libs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    if not any(partial.glob("kafka_2.13-*.jar")):
        msg = f"Maven finished but {partial} holds no kafka_2.13 jar"
        raise InstallError(msg)
    (partial / _COMPLETE_MARKER).touch()
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    return libs


def postgres_installed(bin_dir: Path = POSTGRES_BIN_DIR) -> bool:
    return all((bin_dir / name).is_file() for name in POSTGRES_BINARIES)


def ensure_postgres(bin_dir: Path = POSTGRES_BIN_DIR) -> None:
    """Make sure PostgreSQL 15's server binaries exist, installing them with apt when root."""
    _ensure_package(
        POSTGRES_PACKAGE, lambda: postgres_installed(bin_dir), f"{bin_dir} lacks {', '.join(POSTGRES_BINARIES)}"
    )


def ensure_chromium(binary: Path = CHROMIUM) -> Path:
    """Make sure Debian's Chromium is installed (with apt when root); its path."""
    _ensure_package(CHROMIUM_PACKAGE, binary.is_file, f"{binary} is missing")
    return binary


# `make image` builds without a Docker engine: podman (its builder is buildah's library), runc (Debian
# 12's crun refuses hosts with hybrid cgroups) and mmdebstrap for the local Debian base.
IMAGE_TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}


def ensure_image_tools() -> dict[str, str]:
    """Make sure podman, runc and mmdebstrap are installed (with apt when root); their paths by name."""
    for command, package in IMAGE_TOOLS.items():
        _ensure_package(package, _on_path(command), f"{command} is missing")
    return {command: shutil.which(command) or command for command in IMAGE_TOOLS}


def _on_path(command: str) -> Callable[[], bool]:
    return lambda: shutil.which(command) is not None


def _ensure_package(package: str, installed: Callable[[], bool], missing: str) -> None:
    if installed():
        return
    command = f"apt-get update && apt-get install -y {package}"
    if os.geteuid() != 0:
        msg = f"{missing}; install it with: sudo sh -c '{command}'"
        raise InstallError(msg)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", package], check=True, env=env)
    if not installed():
        msg = f"`{command}` ran but {missing}"
        raise InstallError(msg)


def ensure_java() -> str:
    java = shutil.which("java")
    if java is None:
        msg = "Java is missing; install it with: apt-get install -y openjdk-17-jre-headless"
        raise InstallError(msg)
    return java
