"""Test helpers for authentication: users with tokens, and a client auth that sends the
admin token to the API and an agent enrollment token to the agent protocol (the agent
protocol accepts only agent tokens)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

import httpx

from conveyor.controller.clock import utcnow
from conveyor.core.permissions import Role, Scope
from conveyor.security.agents import issue_enrollment_token
from conveyor.security.auth import USER_TOKEN_PREFIX, digest, new_secret
from conveyor.store import Store
from conveyor.store import security as db


async def user_token(
    store: Store,
    name: str,
    role: Role | None = Role.VIEWER,
    pattern: str = "*",
    scope: Scope = Scope.ADMIN,
) -> str:
    """A user (created if missing) with ``role`` on ``pattern``, and a new API token."""
    now = utcnow()
    user = await db.get_user(store, name) or await db.create_user(store, name, None, now)
    if role is not None:
        await db.add_grant(store, name, role, pattern, now)
    token = new_secret(USER_TOKEN_PREFIX)
    await db.create_user_token(store, user.id, f"{name}-token", digest(token), scope.value, now)
    return token


class SplitAuth(httpx.Auth):
    """``user`` token for /api, ``agent`` token for /agent/v1 (``agent_factory`` makes
    one at the first agent call when none is given)."""

    def __init__(
        self,
        user: str | None,
        agent: str | None,
        agent_factory: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.user = user
        self.agent = agent
        self.agent_factory = agent_factory

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.agent is None and self.agent_factory and request.url.path.startswith("/agent/"):
            self.agent = await self.agent_factory()
        for prepared in self.auth_flow(request):
            yield prepared

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.agent if request.url.path.startswith("/agent/") else self.user
        if token and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


async def split_auth(store: Store, admin_token: str | None) -> SplitAuth:
    return SplitAuth(admin_token, await issue_enrollment_token(store, pool="test"))
