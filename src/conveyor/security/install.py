"""Wire security into the FastAPI app: routers, the hardening middleware, handlers.

The route gate itself (:func:`conveyor.security.policy.authorize`) is passed to
``FastAPI(dependencies=[...])`` in conveyor.api.app, so it runs before every route."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from conveyor.runtime import Runtime
from conveyor.security import routes, web
from conveyor.security.auth import LoginRequired
from conveyor.security.middleware import SecurityMiddleware


def install(app: FastAPI, runtime: Runtime) -> None:
    app.include_router(routes.router)
    app.include_router(web.router)
    app.add_middleware(SecurityMiddleware, runtime=runtime)

    @app.exception_handler(LoginRequired)
    async def login_required(_: Request, exc: LoginRequired) -> RedirectResponse:
        return web.login_redirect(exc)
