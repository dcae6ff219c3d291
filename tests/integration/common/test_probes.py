"""Every service's probes, served by its event loop (services.common.probes), in a real process:
/healthz and /readyz answer while it runs; a loop frozen in blocking work fails liveness (a probe
gets no answer within its timeout) and answers again once it thaws; /readyz follows the service's
readiness checks; /metrics serves the registry; SIGTERM still exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.ports import pick_free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[3]
# What a Kubernetes probe would wait (timeoutSeconds: 1).
PROBE_TIMEOUT = 1.0


class Probed:
    def __init__(self, port: int, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.freeze_file = directory / "freeze"
        self.unready_file = directory / "unready"
        self.process = process

    def status(self, path: str) -> int | None:
        """The status of ``path``, or None when no answer came within the probe's timeout."""
        try:
            return httpx.get(self.url + path, timeout=PROBE_TIMEOUT).status_code
        except httpx.TimeoutException:
            return None

    def until(self, path: str, want: int | None, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while (got := self._status_or_down(path)) != want:
            assert self.process.poll() is None, "the service exited"
            assert time.monotonic() < deadline, f"{path}: {got}, expected {want}"
            time.sleep(0.1)

    def _status_or_down(self, path: str) -> int | str | None:
        try:
            return self.status(path)
        except httpx.TransportError:
            return "down"


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[Probed]:
    (port,) = pick_free_ports(1)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TELEMETRY_METRICS_PORT": str(port),
        "PROBED_FREEZE_FILE": str(tmp_path / "freeze"),
        "PROBED_UNREADY_FILE": str(tmp_path / "unready"),
        "PROBED_FREEZE_SECONDS": "4",
    }
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.common.probed_service"], env=env, cwd=ROOT)
    try:
        service = Probed(port, tmp_path, process)
        service.until("/readyz", 200)
        yield service
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_frozen_event_loop_fails_liveness_until_it_thaws(probed: Probed) -> None:
    assert probed.status("/healthz") == 200
    assert "duplex_" in httpx.get(probed.url + "/metrics", timeout=5).text

    probed.freeze_file.touch()
    probed.until("/healthz", None)  # no answer within the probe's timeout: liveness fails
    assert probed.process.poll() is None  # while the process itself is up
    probed.until("/healthz", 200)

    probed.unready_file.touch()
    probed.until("/readyz", 503)
    assert probed.status("/healthz") == 200  # not ready is not dead
    probed.unready_file.unlink()
    probed.until("/readyz", 200)

    probed.process.send_signal(signal.SIGTERM)
    assert probed.process.wait(timeout=20) == 0
