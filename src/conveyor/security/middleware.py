"""HTTP hardening in one ASGI middleware: request body limit, CSRF for cookie-signed
unsafe requests (double submit), security headers, and the audit of mutating requests.

CSRF: a browser signed in by cookie must send the readable ``conveyor_csrf`` cookie's
value back in the ``X-CSRF-Token`` header or a ``csrf_token`` form field; another site
can make the browser send the cookies but cannot read them. Requests that carry a
bearer token are exempt (browsers never add that header on their own)."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.errors import problem
from conveyor.errors import ConveyorError
from conveyor.runtime import Runtime
from conveyor.security.audit import AUDITED_KEY, audit_request
from conveyor.security.auth import CSRF_COOKIE, SESSION_COOKIE

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]

FORM = "application/x-www-form-urlencoded"

#: Signing in again while signed in: the JSON login cannot be posted by a plain HTML
#: form (cross-site JSON needs a CORS preflight we never grant); /login checks its own.
CSRF_EXEMPT = frozenset({("POST", "/api/v1/session"), ("POST", "/login")})


def body_limit_exempt(path: str) -> bool:
    """Artifact uploads stream to the blob store and have no overall size limit here."""
    return path.startswith("/agent/v1/assignments/") and path.endswith("/artifacts")


class BodyTooLarge(ConveyorError):
    status = 413
    title = "Content too large"


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        limit = self.runtime.settings.max_request_body_bytes
        if not body_limit_exempt(path):
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                response = problem(
                    413, "Content too large", f"request body over the limit of {limit} bytes"
                )
                await response(scope, receive, send)
                return
            receive = _limited(receive, limit)
        if (
            method in UNSAFE
            and "authorization" not in headers
            and (method, path) not in CSRF_EXEMPT
        ):
            cookies = cookie_parser(headers.get("cookie", ""))
            if cookies.get(SESSION_COOKIE):
                receive, ok = await _csrf_ok(headers, cookies, receive)
                if not ok:
                    conn = HTTPConnection(scope)
                    await audit_request(
                        conn, self.runtime, "csrf.refused", 403, security=True, actor="anonymous"
                    )
                    response = problem(
                        403,
                        "Forbidden",
                        "missing or wrong CSRF token: send the conveyor_csrf cookie's value"
                        " in the X-CSRF-Token header or the csrf_token form field",
                    )
                    await response(scope, receive, send)
                    return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if method in UNSAFE and not scope.get(AUDITED_KEY) and not path.startswith("/agent/"):
                route = scope.get("route")
                action = getattr(route, "name", None) or "unknown_route"
                # A refused request (bad or missing credentials) is a security event.
                await audit_request(
                    HTTPConnection(scope), self.runtime, action, status,
                    security=status in (401, 403),
                )  # fmt: skip


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over the limit of {limit} bytes")
        return message

    return wrapped


async def _csrf_ok(
    headers: Headers, cookies: dict[str, str], receive: Receive
) -> tuple[Receive, bool]:
    expected = cookies.get(CSRF_COOKIE, "")
    sent = headers.get("x-csrf-token")
    if sent is None and headers.get("content-type", "").split(";")[0].strip() == FORM:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
        values = parse_qs(body.decode("latin-1"))
        sent = (values.get("csrf_token") or [""])[0]
        receive = _replay(body, receive)
    ok = bool(expected) and bool(sent) and hmac.compare_digest(expected, sent or "")
    return receive, ok


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def wrapped() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return wrapped


__all__: list[Any] = ["SecurityMiddleware", "body_limit_exempt"]
