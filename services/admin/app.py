"""Composition root of the admin API (``duplex serve``): settings in, a serving API out.

Opens, on one exit stack: the listening socket, the PostgreSQL pool, the HTTP client for
Salesforce (the connect flow), then uvicorn serving the FastAPI app and, with Kafka configured, the
loop exporting the consumer groups' lag measured at the broker (``consumer_lag.py``); closes them in
reverse order.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from services.admin.api.application import build_api
from services.admin.connect import CALLBACK_PATH, ConnectFlow
from services.admin.console.sso import single_sign_on
from services.admin.consumer_lag import ConsumerLagMonitor
from services.admin.dead_letters import DeadLetterTopics
from services.admin.oidc import OidcVerifier
from services.admin.settings import AdminSettings
from services.common.connections import SecretLookup, Sessions
from services.common.db import create_pool, database_ready
from services.common.http_server import Listener
from services.common.salesforce import env_secrets
from services.common.service import Health, Running, in_background
from services.common.settings import environment
from services.common.telemetry import Telemetry
from services.common.topics import TopicNames, load_topic_table
from services.common.vault import Keyring, Vault

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunningAdmin(Running):
    port: int
    # The same app uvicorn serves, for in-process tests (httpx.ASGITransport).
    app: FastAPI


@asynccontextmanager
async def run(
    settings: AdminSettings, telemetry: Telemetry | None = None, *, secrets: SecretLookup | None = None
) -> AsyncIterator[RunningAdmin]:
    """The admin API serving on ``settings.host``/``settings.port`` until the block exits.

    ``secrets`` resolve the tenants' connected-app secrets (default: from the environment, where
    Kubernetes Secrets arrive).
    """
    async with AsyncExitStack() as stack:
        listener = Listener(settings.host, settings.port)
        stack.callback(listener.close)
        pool = await stack.enter_async_context(create_pool(settings.postgres()))
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.salesforce_ca_file) if settings.salesforce_ca_file else True
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(verify=verify, timeout=settings.salesforce_timeout_seconds)
        )
        policy = settings.policy.policy()
        resolve = env_secrets(environment(), policy=policy) if secrets is None else secrets
        vault = None if settings.vault is None else Vault(pool, Keyring.from_settings(settings.vault))
        # The connection check signs tenants in as the services do, sharing their sessions.
        sessions = Sessions(pool, vault=vault, service=settings.service_name, http=http, secrets=resolve, policy=policy)
        # Without the vault there is nowhere to keep tokens: connecting answers 503, the rest works.
        connect = None
        if vault is not None:
            connect = ConnectFlow(
                pool,
                vault,
                http=http,
                secrets=resolve,
                redirect_uri=settings.public_base_url(listener.port) + CALLBACK_PATH,
                policy=policy,
            )
        oidc = settings.oidc()
        # The console's sign-in through the provider (DUPLEX_ADMIN_OIDC_CLIENT_ID); None without it.
        sso = await stack.enter_async_context(single_sign_on(settings, settings.public_base_url(listener.port)))
        health = Health(ready=(database_ready(pool), listener.serving))
        app = build_api(
            pool=pool,
            health=health,
            max_body_bytes=settings.max_body_bytes,
            oidc=OidcVerifier(oidc) if oidc else None,
            connect=connect,
            sessions=sessions,
            policy=policy,
            public_url=settings.public_url,
            sso=sso,
            dead_letters=None
            if settings.kafka is None
            else DeadLetterTopics(settings.kafka, TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)),
        )
        await stack.enter_async_context(listener.serve(app))
        # Beside the API, not part of its readiness: the API serves while Kafka is away.
        if settings.kafka is not None and settings.consumer_lag_enabled and telemetry is not None:
            names = TopicNames(load_topic_table(), prefix=settings.kafka.topic_prefix)
            lag = ConsumerLagMonitor(settings.kafka, names, telemetry.metrics.consumer_group_lag)
            in_background(stack, lag.run_forever(settings.consumer_lag_interval_seconds), "consumer-lag")
        log.info("admin API serving", extra={"host": settings.host, "port": listener.port})
        yield RunningAdmin(health=health, port=listener.port, app=app)
