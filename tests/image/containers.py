"""Running the images as production runs them (unprivileged, read-only root file system) for the tests,
with the host's network, so that the session's Kafka and PostgreSQL on 127.0.0.1 are reachable."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping

from devstack.image import run_command

RUN_TIMEOUT = 120


def run(image: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """One container, to completion."""
    command = run_command("--read-only", "--network=host", *options, image, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def start(image: str, name: str, settings: Mapping[str, str], *args: str) -> None:
    """One container in the background, kept after it stops (for its exit code) until removed."""
    command = run_command("--read-only", "--network=host", f"--name={name}", "--detach")
    command.remove("--rm")
    command += [*(f"--env={key}={value}" for key, value in settings.items()), image, *args]
    started = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert started.returncode == 0, started.stderr


def stop(name: str) -> None:
    stopped = subprocess.run(["podman", "stop", "--time=30", name], capture_output=True, text=True, check=False)
    assert stopped.returncode == 0, stopped.stderr


def remove(name: str) -> None:
    subprocess.run(["podman", "rm", "--force", "--time=5", name], capture_output=True, check=False)


def state(name: str) -> str:
    """``running 0``, ``exited 70``, …"""
    done = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def logs(name: str) -> str:
    done = subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def wait_until(name: str, condition: Callable[[], bool], what: str, within: float) -> None:
    """Poll ``condition`` while the container runs; fail with its log if it stops or time runs out."""
    deadline = time.monotonic() + within
    while not condition():
        now = state(name)
        assert now.startswith("running"), f"{name} stopped ({now}) before {what}:\n{logs(name)}"
        assert time.monotonic() < deadline, f"no {what} within {within:.0f} s:\n{logs(name)}"
        time.sleep(0.2)
