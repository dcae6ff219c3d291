"""Waiting for a gRPC server to say it is ready."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import processes


def wait_serving(target: str, log: Path, timeout: float = 60.0) -> None:
    """Block until the gRPC health service at ``target`` says SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    msg = f"{target} did not become ready:\n{processes.log_tail(log)}"
    raise RuntimeError(msg)
