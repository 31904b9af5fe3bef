"""The FastAPI application factory. Routes are thin; the runtime holds the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request

from conveyor import __version__
from conveyor.api import (
    agent_protocol,
    routes_agents,
    routes_artifacts,
    routes_builds,
    routes_cluster,
    routes_config,
    routes_credentials,
    routes_health,
    routes_jobs,
    routes_metrics,
    routes_notifications,
    routes_pools,
    routes_publications,
    routes_retention,
    routes_webhooks,
)
from conveyor.api.errors import install_error_handlers, problem
from conveyor.api.fast_heartbeat import HeartbeatFastPath
from conveyor.api.middleware import RequestMiddleware
from conveyor.jenkins import routes as jenkins_routes
from conveyor.jenkins.headers import JenkinsVersionHeader
from conveyor.runtime import Runtime
from conveyor.security.install import install as install_security
from conveyor.security.policy import authorize
from conveyor.web import pools as ui_pools
from conveyor.web import routes_ui

#: What a standby controller answers before it leads.
STANDBY_PATHS = frozenset({"/healthz", "/metrics", "/prometheus"})


def create_app(runtime: Runtime, run_loops: bool = True, fast_heartbeats: bool = True) -> FastAPI:
    """``fast_heartbeats=False`` leaves heartbeats to their FastAPI route (tests compare
    the two paths)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.prepare()
        if run_loops:
            await runtime.start_loops()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Self-hosted CI/CD: REST API (/api/v1) and agent protocol (/agent/v1).",
        lifespan=lifespan,
        # The permission gate runs before every route (conveyor.security.policy).
        dependencies=[Depends(authorize)],
        # FastAPI's native OpenTelemetry is not used (we export Prometheus metrics):
        # off, it no longer asks the global OTel providers (os.environ lookups) on
        # every request, ~7 us each.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    if fast_heartbeats:
        # Added first, so innermost of the middlewares: behind the request id, the
        # metrics, the body limit and the standby gate, in front of the router.
        app.add_middleware(HeartbeatFastPath, runtime=runtime)
    if runtime.settings.role == "standby":

        @app.middleware("http")
        async def standby_gate(request: Request, call_next: Any) -> Any:
            # For load balancers that switch active/standby: until this controller
            # leads, it answers only its liveness probe (and its metrics, so that
            # Prometheus does not see a healthy standby as down).
            if request.url.path not in STANDBY_PATHS and not runtime.lease.is_leader:
                return problem(
                    503, "Standby", "this controller is a standby; it serves once it leads"
                )
            return await call_next(request)

    install_security(app, runtime)
    app.add_middleware(JenkinsVersionHeader)  # X-Jenkins on every answer (Jenkins clients)
    # Added last, so outermost: standby refusals get a request id and are measured too.
    app.add_middleware(
        RequestMiddleware,
        metrics=runtime.metrics,
        controller_id=runtime.controller_id,
        slow_seconds=runtime.settings.slow_request_seconds,
    )
    app.include_router(routes_health.router)
    # The agent protocol early: with thousands of agents it is most of the requests,
    # and routes are matched in order (its /agent/v1 prefix overlaps no other route).
    app.include_router(agent_protocol.router)
    app.include_router(routes_metrics.router)
    # Build routes first: /api/v1/jobs/{name:path}/builds must win over /jobs/{name:path}.
    app.include_router(routes_artifacts.router)
    app.include_router(routes_builds.router)
    app.include_router(routes_config.router)  # before jobs: /jobs/{name}/rollback
    app.include_router(routes_jobs.router)
    app.include_router(routes_agents.router)
    app.include_router(routes_cluster.router)
    app.include_router(routes_notifications.router)
    app.include_router(routes_credentials.router)
    app.include_router(routes_webhooks.router)
    app.include_router(routes_pools.router)
    app.include_router(routes_publications.router)
    app.include_router(routes_publications.agent_router)
    app.include_router(routes_retention.router)
    app.include_router(routes_ui.router)
    app.include_router(ui_pools.router)
    app.include_router(jenkins_routes.router)  # Jenkins-compatible API subset
    return app
