"""Browser sign-in: ``GET /login`` (a form), ``POST /login``, ``POST /logout``.

HTML pages that need a signed-in user raise :class:`LoginRequired`; its handler
redirects to ``/login?next=<page>``."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from conveyor.api.deps import RuntimeDep
from conveyor.errors import Unauthorized
from conveyor.security.auth import CSRF_COOKIE, LoginRequired
from conveyor.security.login import (
    TooManyAttempts,
    check_login,
    end_session,
    set_csrf_cookie,
    start_session,
)

router = APIRouter(include_in_schema=False)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent.parent / "web" / "templates"))


def safe_next(value: str | None) -> str:
    """Only same-site paths: an open redirect would help phishing."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def login_redirect(exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(safe_next(exc.next_path))}", status_code=303)


def _form(
    request: Request, *, next_path: str, error: str | None = None, username: str = "",
    status: int = 200,
) -> HTMLResponse:  # fmt: skip
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = TEMPLATES.TemplateResponse(
        request,
        "login.html",
        {"csrf_token": csrf, "next": next_path, "error": error, "username": username},
        status_code=status,
    )
    set_csrf_cookie(request, response, csrf, 3600)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _form(request, next_path=safe_next(next))


@router.post("/login", response_model=None)
async def login_form(
    request: Request,
    runtime: RuntimeDep,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    target = safe_next(next)
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return _form(
            request, next_path=target, username=username, status=403,
            error="The form expired or came from another site: please sign in again.",
        )  # fmt: skip
    try:
        user = await check_login(request, runtime, username, password)
    except TooManyAttempts as exc:
        return _form(request, next_path=target, username=username, error=str(exc), status=429)
    except Unauthorized as exc:
        return _form(request, next_path=target, username=username, error=str(exc), status=401)
    response = RedirectResponse(target, status_code=303)
    await start_session(request, runtime, user, response)
    return response


@router.post("/logout", response_model=None)
async def logout_form(request: Request, runtime: RuntimeDep) -> Response:
    """Needs the csrf_token form field (or X-CSRF-Token); the middleware checks it."""
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, runtime, response)
    return response
