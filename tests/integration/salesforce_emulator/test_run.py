"""The composition root in-process: one start-up line, HTTP and gRPC while the block runs, nothing after."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.salesforce_emulator.app import run
from services.salesforce_emulator.settings import IN_MEMORY, EmulatorSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def settings(tmp_path: Path) -> EmulatorSettings:
    return EmulatorSettings(
        https_port=0,
        grpc_port=0,
        data_file=IN_MEMORY,
        seed_file=ROOT / "deploy/emulator/seed.yaml",
        tls=False,
        tls_dir=tmp_path / "tls",
        admin_token="run-admin-token",
    )


async def grpc_health(target: str) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_serves_while_the_block_runs_and_closes_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run(settings(tmp_path)) as running:
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1
        info = json.loads(lines[0])
        emulator = running.emulator
        # Port 0 was resolved before anything was built, so the line and the emulator agree.
        assert info["instance_url"] == emulator.instance_url != "http://127.0.0.1:0"
        assert info["grpc"] == emulator.grpc_address != "127.0.0.1:0"
        assert info["admin_token"] == "run-admin-token"
        assert await running.health.is_ready()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{info['instance_url']}/services/data/")).status_code == 200
        assert (await grpc_health(info["grpc"])).status == health_pb2.HealthCheckResponse.SERVING

    assert not await running.health.is_ready()
    assert capsys.readouterr().out == ""
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{info['instance_url']}/services/data/")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_health(info["grpc"])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
