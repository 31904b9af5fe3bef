"""Request middleware (pure ASGI, so streamed bodies pass through unbuffered).

For every HTTP request it:

* takes the caller's ``X-Request-ID`` if it looks sane, else makes one (uuid4 hex),
  returns it in the ``X-Request-ID`` response header and binds ``request_id`` and
  ``controller`` into structlog's context for everything logged while serving it;
* observes ``conveyor_http_request_duration_seconds`` by method, route *template*
  (``/api/v1/builds/{build_id}``, never the raw path) and status;
* logs ``request.slow`` for requests slower than ``settings.slow_request_seconds``,
  except long-polls and event streams, which are slow on purpose.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.metrics import Metrics

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")
#: Route label of requests that matched no route (never the raw path: unbounded).
UNMATCHED_ROUTE = "<unmatched>"
#: Routes that hold the connection open on purpose: never "slow".
_LONG_ROUTES = re.compile(r"^/agent/v1/agents/[^/]+/poll$|/log/stream$")


def sane_request_id(value: str | None) -> str | None:
    if value is None or _SANE_REQUEST_ID.fullmatch(value) is None:
        return None
    return value


def route_template(scope: Scope) -> str:
    """The matched route's path template, e.g. ``/api/v1/builds/{build_id}``."""
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else UNMATCHED_ROUTE


def is_long_request(route: str, content_type: str) -> bool:
    return bool(_LONG_ROUTES.search(route)) or content_type.startswith("text/event-stream")


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, controller_id: str, slow_seconds: float
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.controller_id = controller_id
        self.slow_seconds = slow_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                incoming = value.decode("latin-1")
                break
        request_id = sane_request_id(incoming) or uuid.uuid4().hex
        status = 500
        content_type = ""

        async def send_with_id(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER
                ]
                for k, v in headers:
                    if k.lower() == b"content-type":
                        content_type = v.decode("latin-1")
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        # Whatever the request binds (here, and e.g. ``user`` in its dependencies) ends
        # with it: the caller's context is restored afterwards (matters when the app is
        # called in the caller's task, as in-process test clients do).
        outer = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, controller=self.controller_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = str(scope.get("method", "?"))
            self.metrics.observe_http(method, route, status, seconds)
            if seconds > self.slow_seconds and not is_long_request(route, content_type):
                log.warning(
                    "request.slow",
                    method=method,
                    route=route,
                    path=scope.get("path"),
                    status=status,
                    seconds=round(seconds, 3),
                )
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**outer)
