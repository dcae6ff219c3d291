"""The real entry point as a subprocess: one JSON line, HTTPS with its own CA, clean stop, restart."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.ports import pick_free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "integration-admin-token"
START_TIMEOUT = 60.0


@dataclass
class Running:
    process: subprocess.Popen[str]
    info: dict[str, Any]
    stderr_path: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def start(data_dir: Path, *extra: str) -> Running:
    https_port, grpc_port = pick_free_ports(2)
    stderr_path = data_dir / f"stderr-{https_port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.salesforce_emulator",
            "--https-port",
            str(https_port),
            "--grpc-port",
            str(grpc_port),
            "--data-file",
            str(data_dir / "emulator.db"),
            "--tls-dir",
            str(data_dir / "tls"),
            "--admin-token",
            ADMIN_TOKEN,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("w"),
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")},
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(START_TIMEOUT)
    if not line or not line[0]:
        process.kill()
        process.wait()
        pytest.fail(f"emulator did not start: {stderr_path.read_text()}")
    return Running(process, json.loads(line[0]), stderr_path)


def trust(ca_cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_cert)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Running]:
    running = start(tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop()


def test_the_start_up_line_tells_a_client_everything(emulator: Running) -> None:
    info = emulator.info
    assert info["instance_url"].startswith("https://127.0.0.1:")
    assert info["login_url"] == info["instance_url"]
    assert info["grpc"].startswith("127.0.0.1:")
    assert info["grpc_tls"] is True
    assert Path(info["ca_cert"]).is_file()
    assert info["org_id"].startswith("00D")
    assert info["org_alias"] == "acme"
    assert (info["username"], info["password"]) == ("admin@acme.example", "acme-dev-password")
    assert (info["client_id"], info["client_secret"]) == ("duplex-acme-client", "duplex-acme-secret")
    assert info["admin_token"] == ADMIN_TOKEN


def test_https_is_trusted_through_the_printed_ca_only(emulator: Running) -> None:
    url = emulator.info["instance_url"] + "/services/data/"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)  # the system store does not know the emulator's CA
    assert httpx.get(url, verify=trust(emulator.info["ca_cert"])).status_code == 200


def test_grpc_serves_tls_with_the_same_ca(emulator: Running) -> None:
    credentials = grpc.ssl_channel_credentials(Path(emulator.info["ca_cert"]).read_bytes())
    with grpc.secure_channel(emulator.info["grpc"], credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        running = start(tmp_path)
        assert running.stop(sig) == 0
        assert "Traceback" not in running.stderr_path.read_text()


def test_sessions_survive_a_restart_with_the_same_data_file(tmp_path: Path) -> None:
    first = start(tmp_path)
    info = first.info
    token = httpx.post(
        info["instance_url"] + "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
            "username": info["username"],
            "password": info["password"],
        },
        verify=trust(info["ca_cert"]),
    ).json()["access_token"]
    assert first.stop() == 0
    second = start(tmp_path)
    try:
        assert second.info["org_id"] == info["org_id"]
        assert second.info["ca_cert"] == info["ca_cert"]
        response = httpx.get(
            second.info["instance_url"] + "/services/data/v62.0/limits/",
            headers={"Authorization": f"Bearer {token}"},
            verify=trust(second.info["ca_cert"]),
        )
        assert response.status_code == 200
    finally:
        second.stop()


def test_plain_http_when_tls_is_off(tmp_path: Path) -> None:
    running = start(tmp_path, "--no-tls")
    try:
        assert running.info["instance_url"].startswith("http://")
        assert running.info["ca_cert"] is None
        assert running.info["grpc_tls"] is False
        assert httpx.get(running.info["instance_url"] + "/services/data/").status_code == 200
    finally:
        running.stop()


def test_an_in_memory_emulator_forgets_sessions_but_keeps_ids(tmp_path: Path) -> None:
    ids_seen = []
    for _ in range(2):
        running = start(tmp_path, "--data-file", ":memory:")
        ids_seen.append((running.info["org_id"], running.info["user_id"]))
        assert running.stop() == 0
    assert ids_seen[0] == ids_seen[1]
    assert not (tmp_path / ":memory:").exists()


def test_settings_come_from_sf_emulator_variables_alone(tmp_path: Path) -> None:
    https_port, grpc_port = pick_free_ports(2)
    data_file = tmp_path / "from-env.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")}
    env |= {
        "SF_EMULATOR_HTTPS_PORT": str(https_port),
        "SF_EMULATOR_GRPC_PORT": str(grpc_port),
        "SF_EMULATOR_DATA_FILE": str(data_file),
        "SF_EMULATOR_TLS_DIR": str(tmp_path / "env-tls"),
        "SF_EMULATOR_EVENT_RETENTION_HOURS": "12.5",
        "SF_EMULATOR_ADMIN_TOKEN": "admin-token-from-env",
    }
    stderr_path = tmp_path / "stderr.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.salesforce_emulator"],  # no flags at all
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("w"),
        text=True,
        env=env,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(START_TIMEOUT)
    try:
        assert line, stderr_path.read_text()
        assert line[0], stderr_path.read_text()
        info = json.loads(line[0])
        assert info["instance_url"] == f"https://127.0.0.1:{https_port}"
        assert info["grpc"] == f"127.0.0.1:{grpc_port}"
        assert info["data_file"] == str(data_file)
        assert info["event_retention_hours"] == 12.5
        assert info["admin_token"] == "admin-token-from-env"
        assert Path(info["ca_cert"]).parent == tmp_path / "env-tls"
        assert data_file.is_file()
        admin = httpx.get(
            f"{info['instance_url']}/__emulator__/orgs",
            headers={"Authorization": "Bearer admin-token-from-env"},
            verify=trust(info["ca_cert"]),
        )
        assert admin.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_help_shows_each_variable_and_its_real_default() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")} | {"COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "services.salesforce_emulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout

    # Rich draws a box and wraps lines; compare the text without either.
    text = " ".join(shown.replace("│", " ").split())
    for variable, default in [
        ("SF_EMULATOR_HOST", "127.0.0.1"),
        ("SF_EMULATOR_HTTPS_PORT", "8443"),
        ("SF_EMULATOR_GRPC_PORT", "7443"),
        ("SF_EMULATOR_DATA_FILE", "var/emulator/emulator.db"),
        ("SF_EMULATOR_SEED_FILE", "deploy/emulator/seed.yaml"),
        ("SF_EMULATOR_ACCESS_TOKEN_TTL_SECONDS", "7200"),
        ("SF_EMULATOR_EVENT_RETENTION_HOURS", "72.0"),
    ]:
        assert f"Variable: {variable}. [default: ({default})]" in text
    assert "SF_EMULATOR_AUTHORIZATION_CODE_TTL_SECONDS (default 900)" in text
