"""The governor's gRPC secured (GOVERNOR_LINK_*), both ways: over TLS with the shared token a client is
granted calls; a call without the token or with a wrong one is refused, a plaintext client and one
that does not trust the governor's CA get nothing; health checks need no token (probes send none).
And unsecured, as before, for a cluster whose network is trusted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from duplex.governor.v1 import governor_service_pb2, governor_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr, ValidationError

from services.common.governor_client import GovernorBudget, governor_channel
from services.common.settings import GovernorLinkSettings
from services.rate_limit_governor.app import run
from services.salesforce_emulator.tls import TlsFiles, ensure_certificates
from tests.integration.rate_limit_governor.test_governor_service import database, settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

__all__ = ["database"]  # the fixture, imported for these tests
TOKEN = "governor-shared-token"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return ensure_certificates(tmp_path / "tls")


@asynccontextmanager
async def governor(dsn: str, link: GovernorLinkSettings) -> AsyncIterator[str]:
    async with run(settings(dsn, link=link)) as running:
        yield f"localhost:{running.port}"


async def acquire(target: str, link: GovernorLinkSettings) -> governor_service_pb2.AcquireCallsResponse:
    async with governor_channel(target, link) as channel:
        stub = governor_service_pb2_grpc.RateLimitGovernorServiceStub(channel)
        request = governor_service_pb2.AcquireCallsRequest(tenant_id="large", calls=1)
        return await stub.AcquireCalls(request, timeout=5)


def served(tls: TlsFiles) -> GovernorLinkSettings:
    return GovernorLinkSettings(
        tls_cert_file=str(tls.server_cert), tls_key_file=str(tls.server_key), token=SecretStr(TOKEN)
    )


def client(tls: TlsFiles, **overrides: Any) -> GovernorLinkSettings:
    fields: dict[str, Any] = {"tls_ca_file": str(tls.ca_cert), "token": SecretStr(TOKEN)}
    return GovernorLinkSettings.model_validate(fields | overrides)


async def test_a_client_with_the_ca_and_the_token_is_granted_calls(database: str, tls: TlsFiles) -> None:
    async with governor(database, served(tls)) as target:
        assert (await acquire(target, client(tls))).granted
        # The services' own client, as cdc-ingest and the writer build it.
        budget, channel = GovernorBudget.connect(target, client(tls))
        try:
            await budget.acquire("large", 2)
        finally:
            await channel.close(None)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"token": None}, grpc.StatusCode.UNAUTHENTICATED),
        ({"token": SecretStr("guessed")}, grpc.StatusCode.UNAUTHENTICATED),
        ({"tls_ca_file": None}, grpc.StatusCode.UNAVAILABLE),  # plaintext to a TLS port
    ],
    ids=["no token", "wrong token", "no TLS"],
)
async def test_a_client_without_the_token_or_tls_is_refused(
    database: str, tls: TlsFiles, tmp_path: Path, overrides: dict[str, Any], code: grpc.StatusCode
) -> None:
    async with governor(database, served(tls)) as target:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await acquire(target, client(tls, **overrides))
        assert refused.value.code() == code


async def test_a_client_that_does_not_trust_the_governors_ca_is_refused(
    database: str, tls: TlsFiles, tmp_path: Path
) -> None:
    other = ensure_certificates(tmp_path / "another-ca")
    async with governor(database, served(tls)) as target:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await acquire(target, client(tls, tls_ca_file=str(other.ca_cert)))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_checks_need_no_token(database: str, tls: TlsFiles) -> None:
    async with (
        governor(database, served(tls)) as target,
        governor_channel(target, client(tls, token=None)) as channel,
    ):
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_unsecured_as_before_when_nothing_is_set(database: str) -> None:
    async with governor(database, GovernorLinkSettings()) as target:
        assert (await acquire(target, GovernorLinkSettings())).granted


def test_a_certificate_without_its_key_fails_at_start() -> None:
    with pytest.raises(ValidationError, match="go together"):
        GovernorLinkSettings(tls_cert_file="governor.pem")
