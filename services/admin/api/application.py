"""The admin API as one FastAPI app: one router per resource, every error a problem document."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.admin.api.access import Access
from services.admin.api.backfills import backfills_router
from services.admin.api.connections import connections_router
from services.admin.api.dead_letters import dead_letters_router
from services.admin.api.edge import BodyTooLargeError, LimitBody, RequestId, too_large
from services.admin.api.health import health_router
from services.admin.api.jobs import jobs_router
from services.admin.api.me import me_router
from services.admin.api.overview import overview_router
from services.admin.api.pauses import pauses_router
from services.admin.api.plan import plan_router
from services.admin.api.preflight import preflight_router
from services.admin.api.problems import (
    PROBLEM_RESPONSES,
    ApiError,
    install_problem_handlers,
    problem_response,
    request_id_of,
)
from services.admin.api.retries import retries_router
from services.admin.api.schema import schema_router
from services.admin.api.sync_log import sync_log_router
from services.admin.api.tenants import tenants_router
from services.admin.api.tokens import tokens_router
from services.admin.connect import ConnectFlow
from services.admin.console import install_console
from services.admin.console.sso import SingleSignOn
from services.admin.dead_letters import DeadLetterTopics
from services.admin.oidc import OidcVerifier
from services.common.connections import Sessions
from services.common.db import Pool
from services.common.service import Health
from services.common.tenant_config.policy import SalesforcePolicy

API_TITLE = "Duplex admin API"
API_VERSION = "1"
# What PolicySettings gives with none of its variables set: the strictest there is.
_DEFAULT_POLICY = SalesforcePolicy()


def build_api(
    *,
    pool: Pool,
    health: Health,
    max_body_bytes: int,
    oidc: OidcVerifier | None = None,
    connect: ConnectFlow | None = None,
    sessions: Sessions | None = None,
    policy: SalesforcePolicy = _DEFAULT_POLICY,
    dead_letters: DeadLetterTopics | None = None,
    public_url: str | None = None,
    sso: SingleSignOn | None = None,
) -> FastAPI:
    """The API over ``pool``; without ``connect`` (no vault), connecting tenants answers 503, and
    without ``sessions`` (no access to Salesforce) so does checking a tenant's connection, and
    without ``dead_letters`` (no Kafka) so do the dead-letter and retry routes.

    Tenant documents must name only the secrets and hosts ``policy`` allows (the deployment's
    ``AdminSettings.policy``).
    """
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        openapi_url="/openapi.json",
        # The UIs load their assets from a CDN; the document itself is enough (and works air-gapped).
        docs_url=None,
        redoc_url=None,
        # A path either exists or is a 404 problem: no redirects to guess at.
        redirect_slashes=False,
        # Instead of FastAPI's own 422 schema, which this API never sends.
        responses=PROBLEM_RESPONSES,
    )
    install_problem_handlers(app)

    async def on_too_large(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(too_large(max_body_bytes), request_id_of(request))

    app.add_exception_handler(BodyTooLargeError, on_too_large)
    # Added last, runs first: the request id exists before anything can fail.
    app.add_middleware(LimitBody, limit=max_body_bytes)
    app.add_middleware(RequestId)

    @app.get("/healthz", tags=["health"], summary="Liveness (no authentication, no data)")
    async def healthz() -> dict[str, str]:
        if not await health.is_live():
            raise ApiError(503, detail="not live")
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database answers and HTTP is served")
    async def readyz() -> dict[str, str]:
        if not await health.is_ready():
            raise ApiError(503, detail="not ready")
        return {"status": "ok"}

    access = Access(pool, oidc)
    app.include_router(me_router(access))
    app.include_router(tenants_router(access, policy, connect))
    app.include_router(connections_router(access, connect))
    app.include_router(preflight_router(access, sessions))
    app.include_router(backfills_router(access))
    app.include_router(jobs_router(access))
    app.include_router(health_router(access))
    app.include_router(overview_router(access))
    app.include_router(sync_log_router(access))
    app.include_router(dead_letters_router(access, dead_letters))
    app.include_router(retries_router(access, dead_letters))
    app.include_router(pauses_router(access))
    app.include_router(schema_router(access, sessions))
    app.include_router(plan_router(access, policy, sessions))
    app.include_router(tokens_router(access))
    install_console(app, public_url, sso)
    return app
