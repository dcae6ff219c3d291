"""The emulator's image (``make image-emulator``, for staging): it serves Salesforce's REST API over its
own TLS, from a read-only root file system, as the same unprivileged user as the services' image."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from devstack.image import build
from devstack.install import ensure_image_tools
from devstack.ports import pick_free_ports
from tests.image.containers import logs, start, state, stop, wait_until

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

SERVING_WITHIN = 60.0


@pytest.fixture(scope="module")
def emulator_image() -> str:
    ensure_image_tools()
    return build("emulator").tag


def test_the_emulator_image_serves_rest_over_its_own_tls(
    emulator_image: str, container_name: str, tmp_path: Path
) -> None:
    https_port, grpc_port = pick_free_ports(2)
    settings = {
        "SF_EMULATOR_HOST": "127.0.0.1",
        "SF_EMULATOR_HTTPS_PORT": str(https_port),
        "SF_EMULATOR_GRPC_PORT": str(grpc_port),
        "TELEMETRY_METRICS_PORT": "0",
    }
    start(emulator_image, container_name, settings)
    wait_until(container_name, lambda: "service running" in logs(container_name), "service running", SERVING_WITHIN)
    # Its CA was made at start, under /tmp: the only place it can write.
    ca = tmp_path / "ca.pem"
    copied = subprocess.run(["podman", "cp", f"{container_name}:/tmp/emulator/tls/ca.pem", str(ca)], check=False)
    assert copied.returncode == 0

    trusting_its_ca = ssl.create_default_context(cafile=ca)
    versions = httpx.get(f"https://127.0.0.1:{https_port}/services/data/", verify=trusting_its_ca, timeout=10)

    assert versions.status_code == httpx.codes.OK, versions.text
    assert versions.json()
    whoami = subprocess.run(
        ["podman", "exec", container_name, "python", "-c", "import os; print(os.getuid())"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert whoami.stdout.strip() == "10001", whoami.stderr
    stop(container_name)
    assert state(container_name) == "exited 0", logs(container_name)
