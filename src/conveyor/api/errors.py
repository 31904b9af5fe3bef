"""Errors -> HTTP: every refusal is a JSON problem body (RFC 9457), never a traceback."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.core.pipeline import SpecError
from conveyor.errors import ConveyorError, InvalidInput

log = structlog.get_logger(__name__)

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else "request")


def _message(error: Any) -> str:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        # FastAPI puts the character position where "body.<field>" would be.
        reason = (error.get("ctx") or {}).get("error") or "JSON decode error"
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return f"body: not valid JSON ({reason}{where})"
    return f"{_field(loc)}: {error.get('msg')}"


def conveyor_error_response(exc: ConveyorError) -> JSONResponse:
    """The answer to one of our own errors (also used by the heartbeat fast path,
    which runs outside FastAPI's exception handlers)."""
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput) and exc.errors:
        extra["errors"] = exc.errors
    if exc.status >= 500:
        log.warning("request.failed", error=str(exc), kind=type(exc).__name__)
    return problem(exc.status, exc.title, str(exc), **extra)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConveyorError)
    async def conveyor_error(_: Request, exc: ConveyorError) -> JSONResponse:
        return conveyor_error_response(exc)

    @app.exception_handler(SpecError)
    async def spec_error(_: Request, exc: SpecError) -> JSONResponse:
        return problem(400, "Invalid pipeline spec", str(exc), errors=[str(e) for e in exc.errors])

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_message(e) for e in exc.errors()]
        return problem(400, "Invalid request", "; ".join(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, _title(exc.status_code), str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request.crashed", error=repr(exc))
        return problem(500, "Internal error", "an unexpected error happened; see controller log")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
