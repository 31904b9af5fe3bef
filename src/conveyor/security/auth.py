"""Who is calling: a user (API token or session cookie) or an agent (enrollment token).

Lookups are cached for a few seconds per controller (agents call often). The
controller that revokes a token, ends a session or changes grants drops its cache at
once; other controllers notice within :data:`CACHE_SECONDS` (the documented bound)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from starlette.requests import HTTPConnection

from conveyor.core.permissions import Grant, Permission, Scope, allowed, anywhere
from conveyor.errors import Forbidden, Unauthorized
from conveyor.runtime import Runtime
from conveyor.store import security as db
from conveyor.store.security import AgentTokenRecord

CACHE_SECONDS = 5.0
USER_TOKEN_PREFIX = "cvy_"
AGENT_TOKEN_PREFIX = "cva_"
SESSION_COOKIE = "conveyor_session"
CSRF_COOKIE = "conveyor_csrf"
#: Where the gate leaves the caller for the route, the audit and the log.
PRINCIPAL_KEY = "conveyor.principal"


def digest(secret: str) -> str:
    # Tokens and session ids are 256-bit random strings: SHA-256 is enough (no salt or
    # slow hash needed, unlike passwords) and lets every controller look them up.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(32)}"


class LoginRequired(Unauthorized):
    """An HTML page needs a signed-in user: the browser is sent to the sign-in form
    (``/login?next=<page>``; the handler is installed by conveyor.security.install)."""

    def __init__(self, next_path: str = "/") -> None:
        super().__init__("sign in to see this page")
        self.next_path = next_path


def wants_html(conn: HTTPConnection) -> bool:
    """A browser navigating to a page (not an API or agent call)."""
    path = conn.url.path
    if path.startswith(("/api/", "/agent/")) or conn.scope.get("method") != "GET":
        return False
    return "text/html" in conn.headers.get("accept", "")


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "agent"]
    name: str  # user name, or the enrollment token's name for agents
    via: Literal["token", "session", "agent"]
    scope: Scope = Scope.READ
    user_id: int | None = None
    token_id: int | None = None
    grants: tuple[Grant, ...] = ()
    agent_token: AgentTokenRecord | None = None
    agent_ids: frozenset[int] = field(default_factory=frozenset)

    def can(self, permission: Permission, job: str | None = None) -> bool:
        return self.kind == "user" and allowed(self.grants, self.scope, permission, job)

    def can_somewhere(self, permission: Permission) -> bool:
        return self.kind == "user" and permission in anywhere(self.grants, self.scope)

    def require(self, permission: Permission, job: str | None = None) -> None:
        if not self.can(permission, job):
            where = f" on job {job!r}" if job is not None else ""
            raise Forbidden(f"missing permission {permission.value}{where}")


class AuthCache:
    """digest -> (monotonic expiry, principal); per controller."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}
        #: Loads under way (single flight): when an entry expires, the many requests
        #: that then miss it (thousands of agents share a pool token) await one load.
        self.loading: dict[str, asyncio.Future[Principal]] = {}
        #: Bumped by drop/clear: a load that started before them does not store its
        #: result (it may predate a revocation).
        self.generation = 0

    def get(self, key: str) -> Principal | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        return hit[1]

    def put(self, key: str, principal: Principal, generation: int | None = None) -> None:
        if generation is not None and generation != self.generation:
            return  # dropped or cleared while it was loading
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + CACHE_SECONDS, principal)

    def drop(self, key: str) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


def auth_cache(runtime: Runtime) -> AuthCache:
    cache = runtime.__dict__.get("_auth_cache")
    if cache is None:
        cache = runtime.__dict__["_auth_cache"] = AuthCache()
    assert isinstance(cache, AuthCache)
    return cache


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


def basic_credentials(conn: HTTPConnection) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:apitoken)``, as Jenkins clients send it; the
    password is one of the user's API tokens (``cvy_...``), never the login password."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, token = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    if not sep or not token:
        raise Unauthorized("Basic credentials need 'user:apitoken'")
    return user, token


async def authenticate(conn: HTTPConnection, runtime: Runtime) -> Principal | None:
    """The caller, or None when the request carries no credentials at all."""
    basic = basic_credentials(conn)
    if basic is not None:
        user, secret = basic
        try:
            principal = await token_principal(runtime, digest(secret))
        except Unauthorized:
            raise Unauthorized(
                "invalid Basic credentials: send user:apitoken (an API token, not the password)"
            ) from None
        if not secrets.compare_digest(principal.name, user):
            raise Unauthorized("invalid Basic credentials: the API token is another user's")
        return principal
    token = bearer_token(conn)
    if token is not None:
        if token.startswith(AGENT_TOKEN_PREFIX):
            return await agent_principal(runtime, digest(token))
        return await token_principal(runtime, digest(token))
    session = conn.cookies.get(SESSION_COOKIE)
    if session:
        return await session_principal(runtime, digest(session))
    return None


async def _user_principal(
    runtime: Runtime,
    user_id: int,
    via: Literal["token", "session"],
    scope: Scope,
    token_id: int | None,
) -> Principal:
    user = await db.get_user_by_id(runtime.store, user_id)
    if user is None or user.disabled:
        raise Unauthorized("this user is disabled")
    grants = await db.grants_of(runtime.store, user_id)
    return Principal(
        kind="user",
        name=user.name,
        via=via,
        scope=scope,
        user_id=user_id,
        token_id=token_id,
        grants=tuple(grants),
    )


async def token_principal(runtime: Runtime, key: str) -> Principal:
    cache = auth_cache(runtime)
    hit = cache.get(key)
    if hit is not None:
        return hit
    record = await db.find_user_token(runtime.store, key)
    now = runtime.clock()
    if record is None or record.revoked_at is not None or _expired(record.expires_at, now):
        raise Unauthorized("invalid, expired or revoked token")
    principal = await _user_principal(
        runtime, record.user_id, "token", Scope(record.scope), record.id
    )
    cache.put(key, principal)
    return principal


async def session_principal(runtime: Runtime, key: str) -> Principal:
    cache = auth_cache(runtime)
    hit = cache.get("s:" + key)
    if hit is not None:
        return hit
    record = await db.find_session(runtime.store, key)
    now = runtime.clock()
    if record is None or record.revoked_at is not None or record.expires_at <= now:
        raise Unauthorized("your session ended: log in again")
    # A browser session carries the user's full roles (no token scope to narrow them).
    principal = await _user_principal(runtime, record.user_id, "session", Scope.ADMIN, None)
    cache.put("s:" + key, principal)
    return principal


async def agent_principal(runtime: Runtime, key: str, fresh: bool = False) -> Principal:
    cache = auth_cache(runtime)
    if fresh:
        return await _load_agent_principal(runtime, cache, key)
    hit = cache.get("a:" + key)
    if hit is not None:
        return hit
    loading = cache.loading.get("a:" + key)
    if loading is None:
        # Its own task: a request that goes away does not cancel the others' answer.
        loading = asyncio.ensure_future(_load_agent_principal(runtime, cache, key))
        cache.loading["a:" + key] = loading

        def done(task: asyncio.Future[Principal], slot: str = "a:" + key) -> None:
            if cache.loading.get(slot) is task:
                del cache.loading[slot]
            if not task.cancelled():
                task.exception()  # retrieved even if every waiter went away

        loading.add_done_callback(done)
    return await asyncio.shield(loading)


async def agent_principal_with(
    runtime: Runtime, key: str, principal: Principal, agent_id: int
) -> Principal:
    """The principal of agent token ``key`` if ``agent_id`` is bound to it now (an agent
    that registered on another controller after this one cached the token), else a
    fresh load. Checks the one binding instead of reloading all the token's agents:
    with 3 controllers, each of 2,000 agents would otherwise reload 2,000 rows on each
    controller it had not registered on."""
    cache = auth_cache(runtime)
    generation = cache.generation
    if principal.token_id is not None and await db.is_bound(
        runtime.store, agent_id, principal.token_id
    ):
        current = cache.get("a:" + key) or principal
        grown = replace(current, agent_ids=current.agent_ids | {agent_id})
        cache.put("a:" + key, grown, generation)
        return grown
    return await agent_principal(runtime, key, fresh=True)


async def _load_agent_principal(runtime: Runtime, cache: AuthCache, key: str) -> Principal:
    generation = cache.generation
    record = await db.find_agent_token(runtime.store, key)
    if record is None or not record.usable(runtime.clock()):
        cache.drop("a:" + key)
        raise Unauthorized("invalid, expired or revoked agent token")
    principal = Principal(
        kind="agent",
        name=record.name,
        via="agent",
        token_id=record.id,
        agent_token=record,
        agent_ids=frozenset(await db.agents_of_token(runtime.store, record.id)),
    )
    cache.put("a:" + key, principal, generation)
    return principal


def _expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def current_principal(conn: HTTPConnection) -> Principal | None:
    value = conn.scope.get(PRINCIPAL_KEY)
    return value if isinstance(value, Principal) else None
