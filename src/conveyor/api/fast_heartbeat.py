"""A lean request path for agent heartbeats (``POST /agent/v1/agents/{id}/heartbeat``).

With thousands of agents, heartbeats are most of a controller's requests (2,000
agents at 3 s: ~670 a second), and FastAPI's routing, dependency solving, request
and response validation cost more than the heartbeat itself. This pure-ASGI
middleware answers them directly. It sits inside ``RequestMiddleware`` (request
id, ``conveyor_http_request_duration_seconds`` with the route's template as label)
and ``SecurityMiddleware`` (body limit, security headers), and keeps everything
else the route does:

* the same gate: :func:`conveyor.security.policy.authorize` itself (authentication,
  the agent binding check, its audit of refusals), run on a ``Request`` whose scope
  names the registered heartbeat route, exactly as the router would;
* the same side effects (:func:`conveyor.api.agent_protocol.record_heartbeat`) and
  the same answers, errors included (:func:`conveyor.api.errors.conveyor_error_response`).

Only the common case is taken here: a well-formed JSON body that ``HeartbeatIn``
accepts. Anything else (a malformed body, wrong field types, a body the
``SecurityMiddleware`` refused while it was read, another content type) goes on to
the FastAPI route with the body it sent replayed, so that its answer stays exactly
the route's (FastAPI reads and decodes the body before the gate runs: a bad body
answers 400 before a bad token answers 401). The route stays registered (OpenAPI,
the permission matrix) and serves those rare requests."""

from __future__ import annotations

import json
import re
from typing import Any

import structlog
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api import agent_protocol
from conveyor.api.agent_protocol import HeartbeatIn, record_heartbeat
from conveyor.api.errors import conveyor_error_response
from conveyor.errors import ConveyorError
from conveyor.runtime import Runtime
from conveyor.security.auth import current_principal
from conveyor.security.policy import authorize

HEARTBEAT_ROUTE = "/agent/v1/agents/{agent_id}/heartbeat"
#: ASCII digits only: anything else (a sign, spaces, non-ASCII digits) is the route's
#: to refuse.
_HEARTBEAT_PATH = re.compile(r"/agent/v1/agents/([0-9]{1,30})/heartbeat")
#: The answer to almost every heartbeat, as the route renders it (JSONResponse).
EMPTY_ANSWER = b'{"assignments":[],"cancel":[],"abort":[]}'


def is_json(content_type: bytes) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/*+json`` (parameters
    ignored), else the body is not decoded as JSON."""
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


def find_route(routes: list[BaseRoute]) -> APIRoute:
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and route.path == HEARTBEAT_ROUTE
            and "POST" in (route.methods or ())
        ):
            return route
    raise LookupError(f"no POST {HEARTBEAT_ROUTE} route to stand in for")


class HeartbeatFastPath:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        # The route it stands in for: the gate looks its rule up by its template, and
        # RequestMiddleware labels the request with it.
        self.route = find_route(agent_protocol.router.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _HEARTBEAT_PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if match is None or not _json_request(scope):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = b""
        try:
            more = True
            while more:
                message = await receive()
                received.append(message)
                if message["type"] != "http.request":
                    raise _NotTaken
                body += message.get("body", b"")
                more = bool(message.get("more_body", False))
            beat = HeartbeatIn.model_validate_json(body)
        except (_NotTaken, ValidationError, ConveyorError) as exc:
            # The route answers (its own 400, or the body limit's error as it sees it).
            error = None if isinstance(exc, _NotTaken | ValidationError) else exc
            await self.app(scope, _replay(received, error, receive), send)
            return
        scope["route"] = self.route
        scope["path_params"] = {"agent_id": match.group(1)}
        try:
            request = Request(scope, receive)
            await authorize(request)
            principal = current_principal(request)
            if principal is not None:  # the gate let it through: it is an agent
                structlog.contextvars.bind_contextvars(user=principal.name)
            aborts = await record_heartbeat(self.runtime, int(match.group(1)), beat)
        except ConveyorError as exc:
            await conveyor_error_response(exc)(scope, receive, send)
            return
        answer = (
            EMPTY_ANSWER
            if not aborts
            else json.dumps(
                {"assignments": [], "cancel": [], "abort": aborts},
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(answer)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})


class _NotTaken(Exception):
    """The client went away while sending its body: the route's business."""


def _json_request(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return is_json(value)
    return False  # FastAPI (strict content type) does not decode it: the route answers


def _replay(received: list[Message], error: Exception | None, receive: Receive) -> Receive:
    """What the route reads: the messages already received, then the error that reading
    raised (if any), then the connection's own ``receive``."""
    pending = list(received)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        if error is not None:
            raise error
        return await receive()

    return replayed


__all__: list[Any] = ["EMPTY_ANSWER", "HeartbeatFastPath", "is_json"]
