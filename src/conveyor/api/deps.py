"""Request dependencies: the runtime, and who is calling (bearer token)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Header, Request

from conveyor.errors import Unauthorized
from conveyor.runtime import Runtime, hash_token

TOKEN_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Caller:
    token_id: int
    name: str
    scope: str


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(
    runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    if not authorization:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    digest = hash_token(token.strip())
    cache: dict[str, tuple[float, Caller]] = runtime.__dict__.setdefault("_token_cache", {})
    hit = cache.get(digest)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return _bound(hit[1])
    record = await runtime.store.find_token(digest)
    wall = runtime.clock()
    if (
        record is None
        or record.revoked_at is not None
        or (record.expires_at is not None and record.expires_at <= wall)
    ):
        raise Unauthorized("invalid, expired or revoked token")
    caller = Caller(token_id=record.id, name=record.name, scope=record.scope)
    cache[digest] = (now + TOKEN_CACHE_SECONDS, caller)
    return _bound(caller)


def _bound(caller: Caller) -> Caller:
    # Every log line of this request says who made it.
    structlog.contextvars.bind_contextvars(user=caller.name)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
