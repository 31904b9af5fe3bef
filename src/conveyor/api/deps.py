"""Request dependencies: the runtime, and who is calling.

Authentication and permission checks happen in one place, the route gate
:func:`conveyor.security.policy.authorize` (an application-wide dependency that runs
before every route). ``CallerDep`` hands the caller it found to a route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request

from conveyor.core.permissions import Permission
from conveyor.errors import Unauthorized
from conveyor.runtime import Runtime
from conveyor.security.auth import CACHE_SECONDS, Principal, authenticate, current_principal

#: Kept for compatibility; see conveyor.security.auth.CACHE_SECONDS.
TOKEN_CACHE_SECONDS = CACHE_SECONDS


@dataclass(frozen=True)
class Caller:
    token_id: int
    name: str
    scope: str
    principal: Principal | None = None

    def can(self, permission: Permission, job: str | None = None) -> bool:
        """For listings: may the caller see/act on this job?"""
        return self.principal is not None and self.principal.can(permission, job)

    def require(self, permission: Permission, job: str | None = None) -> None:
        if self.principal is None:
            raise Unauthorized("sign in first")
        self.principal.require(permission, job)


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread,
    # two thread hand-offs on every request for an attribute read.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(request: Request, runtime: RuntimeDep) -> Caller:
    principal = current_principal(request) or await authenticate(request, runtime)
    if principal is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    caller = Caller(
        token_id=principal.token_id or 0,
        name=principal.name,
        scope=principal.scope.value,
        principal=principal,
    )
    # Every log line of this request says who made it.
    structlog.contextvars.bind_contextvars(user=caller.name)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
