"""Security API: sessions, whoami, users, API tokens, grants, agent enrollment tokens,
the audit log. Permissions are checked by the gate (conveyor.security.policy); routes
check only what depends on the request body (e.g. whose token)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from conveyor.api.deps import RuntimeDep
from conveyor.core.permissions import (
    Permission,
    Role,
    Scope,
    anywhere,
    permissions,
    valid_pattern,
)
from conveyor.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from conveyor.security.agents import issue_enrollment_token
from conveyor.security.audit import audit_request
from conveyor.security.auth import (
    USER_TOKEN_PREFIX,
    Principal,
    auth_cache,
    current_principal,
    digest,
    new_secret,
)
from conveyor.security.login import check_login, end_session, start_session
from conveyor.security.passwords import check_password_policy, hash_password
from conveyor.store import security as db

router = APIRouter(prefix="/api/v1", tags=["security"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
SCOPE_ORDER = [Scope.READ, Scope.TRIGGER, Scope.ADMIN]


def principal_of(request: Request) -> Principal:
    principal = current_principal(request)
    if principal is None:  # the gate puts it there for every non-public route
        raise Unauthorized("sign in first")
    return principal


# ------------------------------------------------------------------ models
class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)


class GrantOut(BaseModel):
    role: Role
    pattern: str


class UserOut(BaseModel):
    name: str
    disabled: bool = False
    locked: bool = False
    grants: list[GrantOut] = Field(default_factory=list)


class WhoAmIOut(BaseModel):
    kind: str
    user: str
    via: str
    scope: Scope
    roles: list[Role]
    grants: list[GrantOut]
    permissions: list[Permission] = Field(description="held globally (on every job)")
    permissions_somewhere: list[Permission] = Field(
        description="held on at least one job (prefix grants); check a job with the API"
    )


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME)
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    role: Role | None = Field(default=None, description="a global grant to give at once")


class PasswordIn(BaseModel):
    password: str = Field(min_length=8, max_length=1024)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scope: Scope = Scope.READ
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)
    user: str | None = Field(default=None, max_length=100, description="default: yourself")


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="shown once; only its digest is stored")


class GrantIn(BaseModel):
    user: str = Field(min_length=1, max_length=100)
    role: Role
    pattern: str = Field(default="*", min_length=1, max_length=200)


class GrantRowOut(BaseModel):
    user: str
    role: Role
    pattern: str


class AgentTokenIn(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    pool: str | None = Field(default=None, min_length=1, max_length=200)
    agent_name: str | None = Field(default=None, min_length=1, max_length=200)
    one_time: bool = False
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class AgentTokenOut(BaseModel):
    id: int
    name: str
    pool: str | None
    agent_name: str | None
    one_time: bool
    used_at: datetime | None
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class AgentTokenCreatedOut(AgentTokenOut):
    token: str = Field(description="shown once; only its digest is stored")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    source: str
    security: bool
    detail: dict[str, object] | None


class AuditPage(BaseModel):
    events: list[AuditOut]
    next_cursor: int | None = Field(description="pass as cursor for the next (older) page")


# ---------------------------------------------------------------- sessions
async def _user_out(runtime: RuntimeDep, user: db.UserRecord) -> UserOut:
    grants = await db.grants_of(runtime.store, user.id)
    return UserOut(
        name=user.name,
        disabled=user.disabled,
        locked=user.login.locked_until is not None and user.login.locked_until > runtime.clock(),
        grants=[GrantOut(role=g.role, pattern=g.pattern) for g in grants],
    )


@router.post("/session")
async def login(
    body: LoginIn, request: Request, response: Response, runtime: RuntimeDep
) -> UserOut:
    """Sign in: sets the ``conveyor_session`` (HttpOnly) and ``conveyor_csrf`` cookies."""
    user = await check_login(request, runtime, body.username, body.password)
    await start_session(request, runtime, user, response)
    return await _user_out(runtime, user)


@router.delete("/session", status_code=204)
async def logout(request: Request, runtime: RuntimeDep) -> Response:
    response = Response(status_code=204)
    await end_session(request, runtime, response)
    return response


@router.get("/whoami")
async def whoami(request: Request) -> WhoAmIOut:
    principal = principal_of(request)
    grants = list(principal.grants)
    return WhoAmIOut(
        kind=principal.kind,
        user=principal.name,
        via=principal.via,
        scope=principal.scope,
        roles=sorted({g.role for g in grants}),
        grants=[GrantOut(role=g.role, pattern=g.pattern) for g in grants],
        permissions=sorted(permissions(grants, principal.scope)),
        permissions_somewhere=sorted(anywhere(grants, principal.scope)),
    )


# ------------------------------------------------------------------- users
@router.get("/users")
async def list_users(runtime: RuntimeDep) -> list[UserOut]:
    return [await _user_out(runtime, u) for u in await db.list_users(runtime.store)]


@router.post("/users", status_code=201)
async def create_user(body: UserIn, request: Request, runtime: RuntimeDep) -> UserOut:
    password_hash = None
    if body.password is not None:
        check_password_policy(body.password)
        password_hash = await hash_password(body.password)
    user = await db.create_user(runtime.store, body.name, password_hash, runtime.clock(), body.role)
    await audit_request(
        request, runtime, "user.created", 201, security=True, target=f"user:{body.name}",
        role=None if body.role is None else body.role.value, password=password_hash is not None,
    )  # fmt: skip
    return await _user_out(runtime, user)


async def _set_disabled(request: Request, runtime: RuntimeDep, name: str, off: bool) -> UserOut:
    await db.set_disabled(runtime.store, name, off, runtime.clock())
    auth_cache(runtime).clear()
    user = await db.get_user(runtime.store, name)
    assert user is not None
    await audit_request(
        request, runtime, "user.disabled" if off else "user.enabled", 200, security=True,
        target=f"user:{name}",
    )  # fmt: skip
    return await _user_out(runtime, user)


@router.post("/users/{name}/disable")
async def disable_user(name: str, request: Request, runtime: RuntimeDep) -> UserOut:
    """Refuses the user's tokens and ends their sessions."""
    return await _set_disabled(request, runtime, name, True)


@router.post("/users/{name}/enable")
async def enable_user(name: str, request: Request, runtime: RuntimeDep) -> UserOut:
    return await _set_disabled(request, runtime, name, False)


@router.put("/users/{name}/password", status_code=204)
async def set_password(
    name: str, body: PasswordIn, request: Request, runtime: RuntimeDep
) -> Response:
    check_password_policy(body.password)
    await db.set_password(runtime.store, name, await hash_password(body.password))
    await audit_request(
        request, runtime, "user.password_set", 204, security=True, target=f"user:{name}"
    )
    return Response(status_code=204)


# ------------------------------------------------------------------ tokens
def _token_out(t: db.UserTokenRecord) -> TokenOut:
    return TokenOut(
        id=t.id, user=t.user, name=t.name, scope=Scope(t.scope), created_at=t.created_at,
        expires_at=t.expires_at, revoked_at=t.revoked_at,
    )  # fmt: skip


@router.get("/tokens")
async def list_tokens(
    request: Request,
    runtime: RuntimeDep,
    user: Annotated[str | None, Query(max_length=100, description="whose (user.manage)")] = None,
    all_users: Annotated[bool, Query(alias="all", description="everyone's (user.manage)")] = False,
) -> list[TokenOut]:
    principal = principal_of(request)
    if all_users or (user is not None and user != principal.name):
        principal.require(Permission.USER_MANAGE)
        owner = None if all_users else user
    else:
        owner = principal.name
    return [_token_out(t) for t in await db.list_user_tokens(runtime.store, owner)]


@router.post("/tokens", status_code=201)
async def create_token(body: TokenIn, request: Request, runtime: RuntimeDep) -> TokenCreatedOut:
    """A new API token, shown once. Its scope cannot exceed the caller's own."""
    principal = principal_of(request)
    owner_name = body.user or principal.name
    if owner_name != principal.name:
        principal.require(Permission.USER_MANAGE)
    if SCOPE_ORDER.index(body.scope) > SCOPE_ORDER.index(principal.scope):
        raise Forbidden(f"a {principal.scope.value}-scoped token cannot create a wider token")
    owner = await db.get_user(runtime.store, owner_name)
    if owner is None:
        raise NotFound(f"no user {owner_name!r}")
    now = runtime.clock()
    expires = None if body.expires_in_days is None else now + timedelta(days=body.expires_in_days)
    token = new_secret(USER_TOKEN_PREFIX)
    record = await db.create_user_token(
        runtime.store, owner.id, body.name, digest(token), body.scope.value, now, expires
    )
    await audit_request(
        request, runtime, "token.created", 201, security=True, target=f"token:{record.id}",
        user=owner.name, scope=body.scope.value,
    )  # fmt: skip
    return TokenCreatedOut(**_token_out(record).model_dump(), token=token)


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: int, request: Request, runtime: RuntimeDep) -> Response:
    principal = principal_of(request)
    record = await db.get_user_token(runtime.store, token_id)
    if record.user_id != principal.user_id:
        principal.require(Permission.USER_MANAGE)
    key = await db.revoke_user_token(runtime.store, token_id, runtime.clock())
    auth_cache(runtime).drop(key)  # this controller refuses it from now on
    await audit_request(
        request, runtime, "token.revoked", 204, security=True, target=f"token:{token_id}",
        user=record.user,
    )  # fmt: skip
    return Response(status_code=204)


# ------------------------------------------------------------------ grants
@router.get("/grants")
async def list_grants(
    runtime: RuntimeDep, user: Annotated[str | None, Query(max_length=100)] = None
) -> list[GrantRowOut]:
    return [
        GrantRowOut(user=g.user, role=g.role, pattern=g.pattern)
        for g in await db.list_grants(runtime.store, user)
    ]


def _check_pattern(pattern: str) -> None:
    if not valid_pattern(pattern):
        raise InvalidInput(
            f"pattern {pattern!r}: use '*', a prefix ending in '*' (team-a/*) or a job name"
        )


@router.post("/grants", status_code=201)
async def add_grant(body: GrantIn, request: Request, runtime: RuntimeDep) -> GrantRowOut:
    _check_pattern(body.pattern)
    await db.add_grant(runtime.store, body.user, body.role, body.pattern, runtime.clock())
    auth_cache(runtime).clear()
    await audit_request(
        request, runtime, "grant.added", 201, security=True, target=f"user:{body.user}",
        role=body.role.value, pattern=body.pattern,
    )  # fmt: skip
    return GrantRowOut(user=body.user, role=body.role, pattern=body.pattern)


@router.post("/grants/revoke")
async def revoke_grant(body: GrantIn, request: Request, runtime: RuntimeDep) -> GrantRowOut:
    if not await db.remove_grant(runtime.store, body.user, body.role, body.pattern):
        raise NotFound(f"user {body.user!r} has no {body.role.value} grant on {body.pattern!r}")
    auth_cache(runtime).clear()
    await audit_request(
        request, runtime, "grant.revoked", 200, security=True, target=f"user:{body.user}",
        role=body.role.value, pattern=body.pattern,
    )  # fmt: skip
    return GrantRowOut(user=body.user, role=body.role, pattern=body.pattern)


# ------------------------------------------------------------ agent tokens
def _agent_token_out(t: db.AgentTokenRecord) -> AgentTokenOut:
    return AgentTokenOut(
        id=t.id, name=t.name, pool=t.pool, agent_name=t.agent_name, one_time=t.one_time,
        used_at=t.used_at, created_by=t.created_by, created_at=t.created_at,
        expires_at=t.expires_at, revoked_at=t.revoked_at,
    )  # fmt: skip


@router.get("/agent-tokens")
async def list_agent_tokens(runtime: RuntimeDep) -> list[AgentTokenOut]:
    return [_agent_token_out(t) for t in await db.list_agent_tokens(runtime.store)]


@router.post("/agent-tokens", status_code=201)
async def create_agent_token(
    body: AgentTokenIn, request: Request, runtime: RuntimeDep
) -> AgentTokenCreatedOut:
    """An enrollment token for one agent (agent_name) or a pool; shown once."""
    principal = principal_of(request)
    now = runtime.clock()
    request.scope["conveyor.audited"] = True  # issue_enrollment_token records the event
    token = await issue_enrollment_token(
        runtime.store,
        pool=body.pool,
        agent_name=body.agent_name,
        one_time=body.one_time,
        expires_at=None
        if body.expires_in_days is None
        else now + timedelta(days=body.expires_in_days),
        name=body.name,
        created_by=principal.name,
        now=now,
    )
    record = await db.find_agent_token(runtime.store, digest(token))
    assert record is not None
    return AgentTokenCreatedOut(**_agent_token_out(record).model_dump(), token=token)


@router.delete("/agent-tokens/{token_id}", status_code=204)
async def revoke_agent_token(token_id: int, request: Request, runtime: RuntimeDep) -> Response:
    """Agents enrolled with it are refused (401) from their next call on."""
    key = await db.revoke_agent_token(runtime.store, token_id, runtime.clock())
    auth_cache(runtime).drop("a:" + key)
    await audit_request(
        request, runtime, "agent_token.revoked", 204, security=True,
        target=f"agent-token:{token_id}",
    )  # fmt: skip
    return Response(status_code=204)


# ------------------------------------------------------------------- audit
@router.get("/audit")
async def audit(
    runtime: RuntimeDep,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[
        str | None, Query(max_length=200, description="exact, or a prefix before '.'")
    ] = None,
    since: datetime | None = None,
    security_only: bool = False,
    cursor: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Newest first."""
    if since is not None and since.tzinfo is None:
        raise InvalidInput("since: give a time zone (e.g. 2026-01-05T12:00:00Z)")
    events = await db.list_audit(
        runtime.store, actor=actor, action=action, since=since, security_only=security_only,
        before_id=cursor, limit=limit,
    )  # fmt: skip
    return AuditPage(
        events=[AuditOut(**e.__dict__) for e in events],
        next_cursor=events[-1].id if len(events) == limit else None,
    )
