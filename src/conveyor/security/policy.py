"""The one place that decides whether a request may reach its route.

Every API route is listed in :data:`ROUTE_RULES` (method, path template) -> Rule. The
gate :func:`authorize` runs before every route (it is an application-wide dependency)
and refuses a route that has no rule, so a new route cannot be reachable by mistake;
``tests/security/test_permission_matrix.py`` fails for a route without a rule.

Job-scoped rules name where the job comes from: the ``name`` path parameter, or the
job of the ``build_id`` path parameter. Listing routes (no job) need the permission on
at least one job and filter their answer with :meth:`Principal.can`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from conveyor.core.permissions import Permission
from conveyor.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from conveyor.runtime import Runtime
from conveyor.security.auth import (
    PRINCIPAL_KEY,
    LoginRequired,
    Principal,
    agent_principal_with,
    authenticate,
    digest,
    wants_html,
)
from conveyor.store import security as db

P = Permission


@dataclass(frozen=True)
class Rule:
    """``public``: anyone; ``user``: any signed-in user; ``agent``: an enrolled agent;
    ``permission``: a user holding ``permission`` (on the job named by ``job``)."""

    kind: Literal["public", "user", "agent", "permission"]
    permission: Permission | None = None
    job: Literal["name", "build", "job"] | None = None


PUBLIC = Rule("public")
USER = Rule("user")
AGENT = Rule("agent")


def need(permission: Permission, job: Literal["name", "build", "job"] | None = None) -> Rule:
    return Rule("permission", permission, job)


ROUTE_RULES: dict[tuple[str, str], Rule] = {
    # health, metrics and the API description
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/prometheus"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # jobs
    ("GET", "/api/v1/jobs"): need(P.JOB_READ),
    ("POST", "/api/v1/jobs"): need(P.JOB_WRITE),  # the route checks the job in the body
    ("GET", "/api/v1/jobs/{name:path}"): need(P.JOB_READ, "name"),
    ("PUT", "/api/v1/jobs/{name:path}"): need(P.JOB_WRITE, "name"),
    ("DELETE", "/api/v1/jobs/{name:path}"): need(P.JOB_WRITE, "name"),
    ("POST", "/api/v1/jobs/{name:path}/disable"): need(P.JOB_WRITE, "name"),
    ("POST", "/api/v1/jobs/{name:path}/enable"): need(P.JOB_WRITE, "name"),
    ("GET", "/api/v1/jobs/{name:path}/versions"): need(P.JOB_READ, "name"),
    ("GET", "/api/v1/jobs/{name:path}/versions/{version}"): need(P.JOB_READ, "name"),
    # builds
    ("POST", "/api/v1/jobs/{name:path}/builds"): need(P.BUILD_TRIGGER, "name"),
    ("GET", "/api/v1/jobs/{name:path}/builds"): need(P.JOB_READ, "name"),
    ("GET", "/api/v1/jobs/{name:path}/builds/{number}"): need(P.JOB_READ, "name"),
    ("GET", "/api/v1/builds"): need(P.JOB_READ),
    ("GET", "/api/v1/queue"): need(P.JOB_READ),
    ("GET", "/api/v1/builds/{build_id}"): need(P.JOB_READ, "build"),
    ("POST", "/api/v1/builds/{build_id}/cancel"): need(P.BUILD_CANCEL, "build"),
    # deleting a finished build: as deleting its job (pinned/released: admins, forced)
    ("DELETE", "/api/v1/builds/{build_id}"): need(P.JOB_WRITE, "build"),
    ("GET", "/api/v1/builds/{build_id}/log"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/log/stream"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/notifications"): need(P.JOB_READ, "build"),
    # artifacts
    ("GET", "/api/v1/builds/{build_id}/artifacts"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/artifacts/{path:path}"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/artifacts.zip"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/artifacts.tar.gz"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/builds/{build_id}/artifacts-url/{path:path}"): need(P.JOB_READ, "build"),
    ("POST", "/api/v1/builds/{build_id}/pin"): need(P.BUILD_PIN, "build"),
    ("POST", "/api/v1/builds/{build_id}/unpin"): need(P.BUILD_PIN, "build"),
    # agents and the cluster
    ("GET", "/api/v1/agents"): need(P.AGENT_READ),
    ("GET", "/api/v1/agents/{agent_id}"): need(P.AGENT_READ),
    ("POST", "/api/v1/agents/{agent_id}/drain"): need(P.AGENT_MANAGE),
    ("POST", "/api/v1/agents/{agent_id}/resume"): need(P.AGENT_MANAGE),
    ("GET", "/api/v1/cluster"): need(P.CLUSTER_READ),
    # security: sessions, users, tokens, grants, enrollment tokens, audit
    ("POST", "/api/v1/session"): PUBLIC,
    ("DELETE", "/api/v1/session"): USER,
    ("GET", "/api/v1/whoami"): USER,
    ("GET", "/api/v1/users"): need(P.USER_MANAGE),
    ("POST", "/api/v1/users"): need(P.USER_MANAGE),
    ("POST", "/api/v1/users/{name}/disable"): need(P.USER_MANAGE),
    ("POST", "/api/v1/users/{name}/enable"): need(P.USER_MANAGE),
    ("PUT", "/api/v1/users/{name}/password"): need(P.USER_MANAGE),
    ("GET", "/api/v1/tokens"): USER,  # own tokens; others' need user.manage (checked there)
    ("POST", "/api/v1/tokens"): USER,
    ("DELETE", "/api/v1/tokens/{token_id}"): USER,
    ("GET", "/api/v1/grants"): need(P.USER_MANAGE),
    ("POST", "/api/v1/grants"): need(P.USER_MANAGE),
    ("POST", "/api/v1/grants/revoke"): need(P.USER_MANAGE),
    ("GET", "/api/v1/agent-tokens"): need(P.AGENT_MANAGE),
    ("POST", "/api/v1/agent-tokens"): need(P.AGENT_MANAGE),
    ("DELETE", "/api/v1/agent-tokens/{token_id}"): need(P.AGENT_MANAGE),
    ("GET", "/api/v1/audit"): need(P.AUDIT_READ),
    # web UI pages (listings filter what the caller may read)
    ("GET", "/"): PUBLIC,  # a redirect to /ui/
    ("GET", "/ui/static/{name}"): PUBLIC,  # CSS and JS, also for the sign-in page
    ("GET", "/ui/events"): need(P.JOB_READ),
    ("GET", "/ui/"): need(P.JOB_READ),
    ("GET", "/ui/jobs"): need(P.JOB_READ),
    ("GET", "/ui/jobs/{name:path}"): need(P.JOB_READ, "name"),
    ("GET", "/ui/builds/{build_id}"): need(P.JOB_READ, "build"),
    ("GET", "/ui/builds/{build_id}/log-window"): need(P.JOB_READ, "build"),
    ("GET", "/ui/agents"): need(P.AGENT_READ),
    ("GET", "/ui/pools"): need(P.AGENT_READ),
    ("GET", "/ui/pools/{name}"): need(P.AGENT_READ),
    ("GET", "/ui/cluster"): need(P.CLUSTER_READ),
    # Jenkins-compatible API (conveyor.jenkins): any signed-in user reaches it; each
    # handler checks the permission on the job it resolves from the /job/A/job/B path.
    ("GET", "/api/json"): USER,
    ("GET", "/crumbIssuer/api/json"): USER,
    ("GET", "/whoAmI/api/json"): USER,
    ("GET", "/me/api/json"): USER,
    ("GET", "/queue/api/json"): USER,
    ("GET", "/queue/item/{item}/api/json"): USER,
    ("POST", "/queue/cancelItem"): USER,
    ("GET", "/computer/api/json"): need(P.AGENT_READ),
    ("GET", "/job/{path:path}"): USER,
    ("POST", "/job/{path:path}"): USER,
    ("POST", "/createItem"): USER,
    # browser login
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,  # checks its own CSRF token
    ("POST", "/logout"): USER,
    # credentials (values are never returned)
    ("GET", "/api/v1/credentials"): need(P.CREDENTIAL_READ),
    ("POST", "/api/v1/credentials"): need(P.CREDENTIAL_MANAGE),
    ("GET", "/api/v1/credentials/{cred_id:path}"): need(P.CREDENTIAL_READ),
    ("PUT", "/api/v1/credentials/{cred_id:path}"): need(P.CREDENTIAL_MANAGE),
    ("DELETE", "/api/v1/credentials/{cred_id:path}"): need(P.CREDENTIAL_MANAGE),
    # publications and retention
    ("GET", "/api/v1/builds/{build_id}/publications"): need(P.JOB_READ, "build"),
    ("GET", "/api/v1/retention/preview"): need(P.CLUSTER_READ),
    ("POST", "/api/v1/retention/run"): need(P.MAINTENANCE),
    # config as code, SCM, webhooks (deliveries verify their own HMAC or token)
    ("POST", "/api/v1/config/apply"): need(P.CONFIG_MANAGE),
    ("GET", "/api/v1/config/export"): need(P.CONFIG_MANAGE),
    ("GET", "/api/v1/config/applies"): need(P.JOB_READ),
    ("GET", "/api/v1/config/instance"): need(P.CLUSTER_READ),
    ("GET", "/api/v1/jobs/{name:path}/commits"): need(P.JOB_READ, "name"),
    ("GET", "/api/v1/jobs/{name:path}/scm-heads"): need(P.JOB_READ, "name"),
    ("GET", "/api/v1/jobs/{name:path}/scm-poll"): need(P.JOB_READ, "name"),
    ("POST", "/api/v1/jobs/{name:path}/rollback"): need(P.JOB_WRITE, "name"),
    ("POST", "/api/v1/webhooks/{provider}"): PUBLIC,
    ("GET", "/api/v1/webhooks/deliveries"): need(P.JOB_READ),
    ("PUT", "/api/v1/webhooks/secrets/{job:path}"): need(P.JOB_WRITE, "job"),
    ("DELETE", "/api/v1/webhooks/secrets/{job:path}"): need(P.JOB_WRITE, "job"),
    # agent pools and scaling
    ("GET", "/api/v1/pools"): need(P.AGENT_READ),
    ("POST", "/api/v1/pools"): need(P.AGENT_MANAGE),
    ("GET", "/api/v1/pools/{name}"): need(P.AGENT_READ),
    ("PATCH", "/api/v1/pools/{name}"): need(P.AGENT_MANAGE),
    ("DELETE", "/api/v1/pools/{name}"): need(P.AGENT_MANAGE),
    ("GET", "/api/v1/pools/{name}/decisions"): need(P.AGENT_READ),
    ("GET", "/api/v1/scaling/workload"): need(P.AGENT_READ),
    # the agent protocol
    ("POST", "/agent/v1/agents/{agent_id}/drain"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/publications"): AGENT,
    ("POST", "/agent/v1/register"): AGENT,
    ("POST", "/agent/v1/agents/{agent_id}/heartbeat"): AGENT,
    ("POST", "/agent/v1/agents/{agent_id}/poll"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/start"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/log"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/steps"): AGENT,
    ("PUT", "/agent/v1/assignments/{assignment_id}/artifacts"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/finish"): AGENT,
    ("POST", "/agent/v1/assignments/{assignment_id}/events"): AGENT,
}


def rule_for(method: str, path: str) -> Rule | None:
    return ROUTE_RULES.get((method.upper(), path))


async def authorize(request: Request) -> None:
    """The gate every route runs first (see the module docstring)."""
    runtime: Runtime = request.app.state.runtime
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    _check_integer_ranges(request)
    rule = rule_for(request.method, template)
    if rule is None:
        # Deny by default: a route someone forgot to list is not reachable.
        raise Forbidden(f"no permission rule for {request.method} {template}")
    if rule.kind == "public":
        try:  # a public route still knows a signed-in caller (for the audit, /login)
            principal = await authenticate(request, runtime)
        except Unauthorized:
            principal = None
        if principal is not None:
            request.scope[PRINCIPAL_KEY] = principal
        return
    principal = await authenticate(request, runtime)
    if principal is None:
        if wants_html(request):  # a browser on a page: to the sign-in form
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginRequired(request.url.path + query)
        raise Unauthorized(
            "missing bearer token: send 'Authorization: Bearer <token>'"
            " (or sign in for a session cookie)"
        )
    request.scope[PRINCIPAL_KEY] = principal
    if rule.kind == "agent":
        await _check_agent(request, runtime, principal)
        return
    if principal.kind == "agent":
        await _deny(request, runtime, principal, "agent tokens may call the agent protocol only")
    if rule.kind == "user":
        return
    assert rule.permission is not None
    job: str | None = None
    if rule.job in ("name", "job"):
        job = request.path_params.get(rule.job)
    elif rule.job == "build":
        build_id = _int(request.path_params.get("build_id"))
        job = None if build_id is None else await db.job_of_build(runtime.store, build_id)
    if job is None:
        # No job (a listing, or the build does not exist: the route answers 404).
        # Fleet, user and audit permissions come from global grants only.
        if not principal.can_somewhere(rule.permission):
            await _deny(request, runtime, principal, f"missing permission {rule.permission}")
    elif not principal.can(rule.permission, job):
        await _deny(
            request, runtime, principal, f"missing permission {rule.permission} on job {job!r}"
        )


#: Integer parameters that reach the database: beyond 64 bits they cannot name anything.
INTEGER_PARAMS = frozenset(
    {"agent_id", "build_id", "token_id", "number", "version", "cursor", "offset", "seq"}
)
INT64_MAX = 2**63 - 1


def _check_integer_ranges(request: Request) -> None:
    """A 4xx, not a database overflow (a 500), for ids no table can hold."""
    for where, params in (("path", request.path_params), ("query", request.query_params)):
        for name in INTEGER_PARAMS & set(params.keys()):
            value = _int(params[name])
            if value is not None and not -INT64_MAX <= value <= INT64_MAX:
                if where == "path":
                    raise NotFound(f"{name} {value} does not exist")
                raise InvalidInput(f"{name}: out of range")
    agent = _int(request.headers.get("x-agent-id", ""))
    if agent is not None and not -INT64_MAX <= agent <= INT64_MAX:
        raise InvalidInput("X-Agent-Id: out of range")


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


async def _check_agent(request: Request, runtime: Runtime, principal: Principal) -> None:
    """An agent acts only as the agent(s) it enrolled, and only on builds assigned to it."""
    if principal.kind != "agent":
        await _deny(request, runtime, principal, "the agent protocol needs an agent token")
    if request.url.path.endswith("/register"):
        return
    claimed = _int(request.path_params.get("agent_id", request.headers.get("x-agent-id", "")))
    if claimed is None:
        return  # FastAPI answers 400 for the missing/malformed X-Agent-Id
    if claimed not in principal.agent_ids:
        # The binding may be newer than this controller's cache: look once more.
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        principal = await agent_principal_with(runtime, digest(token), principal, claimed)
        request.scope[PRINCIPAL_KEY] = principal
        if claimed not in principal.agent_ids and await db.agent_exists(runtime.store, claimed):
            await _deny(request, runtime, principal, f"not enrolled as agent {claimed}")
    assignment = request.path_params.get("assignment_id")
    if assignment is not None:
        owner = await db.agent_of_assignment(runtime.store, str(assignment))
        if owner is not None and owner != claimed:
            await _deny(request, runtime, principal, "this build is not assigned to this agent")


async def _deny(request: Request, runtime: Runtime, principal: Principal, reason: str) -> None:
    from conveyor.security.audit import audit_request

    await audit_request(request, runtime, "permission.denied", 403, security=True, reason=reason)
    raise Forbidden(reason)
