"""The emulator in-process (FastAPI TestClient, in-memory store, no TLS) for its unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.salesforce_emulator.app import Emulator, build_app
from services.salesforce_emulator.settings import EmulatorSettings

SEED = Path(__file__).resolve().parents[3] / "deploy" / "emulator" / "seed.yaml"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    settings = EmulatorSettings(
        data_file=":memory:", seed_file=SEED, tls=False, admin_token=ADMIN_TOKEN, https_port=8443
    )
    emu = build_app(settings)
    yield emu
    emu.close()


@pytest.fixture
def client(emulator: Emulator) -> TestClient:
    return TestClient(emulator.app, base_url=emulator.instance_url)
