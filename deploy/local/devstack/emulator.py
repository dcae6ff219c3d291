"""The Salesforce emulator as a real process: started on free ports, its start-up line parsed.

Used by ``make stack-up``/``make demo``, the benchmarks and the tests.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.ports import pick_free_ports

ROOT = Path(__file__).resolve().parents[3]
API_VERSION = "62.0"


@dataclass
class EmulatorProcess:
    """A running emulator and what its start-up line said."""

    process: subprocess.Popen[str]
    info: dict[str, Any]
    data_dir: Path

    @property
    def instance_url(self) -> str:
        return str(self.info["instance_url"])

    @property
    def ca_cert(self) -> str:
        return str(self.info["ca_cert"])

    @property
    def grpc_target(self) -> str:
        return str(self.info["grpc"])

    def http(self) -> httpx.Client:
        """An HTTP client trusting the emulator's CA, for raw wire-level checks."""
        return httpx.Client(
            base_url=self.instance_url, verify=ssl.create_default_context(cafile=self.ca_cert), timeout=30
        )

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """Call the emulator's admin API (``/__emulator__``) for the default org or another path."""
        with self.http() as client:
            response = client.request(
                method,
                f"/__emulator__{path}",
                json=body,
                headers={"Authorization": f"Bearer {self.info['admin_token']}"},
            )
        response.raise_for_status()
        return response

    def password_token(self, username: str | None = None, password: str | None = None) -> dict[str, Any]:
        """OAuth 2.0 username-password grant for the default org's connected app."""
        with self.http() as client:
            response = client.post(
                "/services/oauth2/token",
                data={
                    "grant_type": "password",
                    "client_id": self.info["client_id"],
                    "client_secret": self.info["client_secret"],
                    "username": username or self.info["username"],
                    "password": password or self.info["password"],
                },
            )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def org_spec(alias: str, *, edition: str = "developer", licenses: int = 2) -> dict[str, Any]:
    """A new org for the admin API (``POST /orgs``): an admin user, Duplex's connected app
    (client credentials as that admin: ``<alias>-client`` / ``<alias>-secret``) and the unique
    external-id field ``Account.Duplex_Id__c``."""
    return {
        "alias": alias,
        "name": f"Org {alias}",
        "edition": edition,
        "licenses": licenses,
        "users": [{"username": f"admin@{alias}.example", "password": f"{alias}-password"}],
        "clients": [
            {
                "name": "duplex",
                "client_id": f"{alias}-client",
                "client_secret": f"{alias}-secret",
                "pkce_required": False,
                "execution_user": f"admin@{alias}.example",
            }
        ],
        "objects": {
            "Account": {
                "fields": [
                    {"name": "Duplex_Id__c", "type": "string", "length": 64, "external_id": True, "unique": True}
                ]
            }
        },
    }


def start_emulator(data_dir: Path, *extra: str, timeout: float = 90.0) -> EmulatorProcess:
    """Start ``python -m services.salesforce_emulator`` on free ports and wait for its JSON line.

    Output goes to files in ``data_dir`` (not pipes) and the process gets its own session, so it
    can outlive its starter (``make demo``) and a Ctrl-C in the starter's terminal.
    """
    https_port, grpc_port = pick_free_ports(2)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "services.salesforce_emulator",
        "--https-port",
        str(https_port),
        "--grpc-port",
        str(grpc_port),
        "--tls-dir",
        str(data_dir / "tls"),
        *extra,
    ]
    if "--data-file" not in extra:
        command += ["--data-file", ":memory:"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_EMULATOR_")}
    stdout_path, stderr_path = data_dir / "emulator.json", data_dir / "stderr.log"
    with stdout_path.open("w") as stdout, stderr_path.open("a") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        line = stdout_path.read_text().partition("\n")
        if line[1]:
            return EmulatorProcess(process, json.loads(line[0]), data_dir)
        time.sleep(0.1)
    process.kill()
    process.wait()
    msg = f"the emulator did not start:\n{stderr_path.read_text()}"
    raise RuntimeError(msg)
