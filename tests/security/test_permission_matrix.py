"""Every role × every route → the expected answer, from ONE table.

ROUTE_FAMILIES names, for every route the app serves, the family it belongs to and a
concrete request for it; FAMILY_ACCESS says which callers a family admits. The test
enumerates ``app.routes``: a route missing from ROUTE_FAMILIES fails it, so a new
route cannot ship without a decision about who may call it.

Expected: anonymous → 401 (public routes: anything but 401/403); a caller the family
does not admit → 403 with a problem body naming the missing permission; an admitted
caller → neither 401 nor 403, and never a 5xx."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor.core.permissions import Role
from conveyor.runtime import Runtime
from tests.api.conftest import dispatch_once
from tests.auth_helpers import user_token

# The callers, least privileged first (so nothing a later caller changes matters).
ANON, VIEWER, OPERATOR, DEV_A, DEVELOPER, ADMIN = (
    "anonymous", "viewer", "operator", "dev-team-a", "developer", "admin",
)  # fmt: skip
CALLERS = [ANON, VIEWER, OPERATOR, DEV_A, DEVELOPER, ADMIN]
USERS = [VIEWER, OPERATOR, DEV_A, DEVELOPER, ADMIN]
EVERYONE = {*CALLERS}

# family -> callers it admits. "own"/"other": the request names a team-a / team-b job.
FAMILY_ACCESS: dict[str, set[str]] = {
    "public": EVERYONE,
    "self": set(USERS),
    "job.read:list": set(USERS),  # listings: everyone signed in, filtered
    "job.read:own": set(USERS),
    "job.read:other": {VIEWER, OPERATOR, DEVELOPER, ADMIN},
    "job.write:own": {DEV_A, DEVELOPER, ADMIN},
    "job.write:other": {DEVELOPER, ADMIN},
    "build.trigger:own": {DEV_A, DEVELOPER, ADMIN},
    "build.trigger:other": {DEVELOPER, ADMIN},
    "build.cancel:own": {DEV_A, DEVELOPER, ADMIN},
    "build.cancel:other": {DEVELOPER, ADMIN},
    "build.pin:own": {DEV_A, DEVELOPER, ADMIN},
    "build.pin:other": {DEVELOPER, ADMIN},
    "fleet.read": {VIEWER, OPERATOR, DEVELOPER, ADMIN},
    "fleet.manage": {OPERATOR, ADMIN},
    "users": {ADMIN},
    "audit": {ADMIN},
    "agent-protocol": set(),  # agent tokens only: every user is refused
    "credential.read": {OPERATOR, DEVELOPER, ADMIN},
    "credential.manage": {ADMIN},
    "config.manage": {ADMIN},
    "maintenance": {OPERATOR, ADMIN},
}

OWN, OTHER = "team-a/app", "team-b/app"
SPEC = "name: {name}\nstages:\n  - name: greet\n    steps:\n      - echo: hi\n"


@dataclass(frozen=True)
class Call:
    family: str
    path: str  # with {own}, {other}, {own_build}, {other_build}, {agent} placeholders
    body: Any = None
    headers: dict[str, str] | None = None
    #: An endless event stream: admitted when it is still open after a moment (a
    #: refusal answers at once, before any streaming starts).
    endless: bool = False


def own_other(family: str, path: str, body: Any = None) -> list[Call]:
    """The call on a team-a job (own for dev-team-a) and on a team-b one (other)."""
    return [
        Call(
            f"{family}:{team}",
            path.replace("JOB", f"{{{team}}}")
            .replace("BUILD", f"{{{team}_build}}")
            .replace("DONE", f"{{{team}_done}}"),
            body,
        )
        for team in ("own", "other")
    ]


AGENT_HEADERS = {"X-Agent-Id": "{agent}"}
STEP = {"key": "s", "state": "running"}

# (method, route path) -> the calls that exercise it. THE table.
ROUTE_FAMILIES: dict[tuple[str, str], list[Call]] = {
    ("GET", "/healthz"): [Call("public", "/healthz")],
    ("GET", "/readyz"): [Call("public", "/readyz")],
    ("GET", "/metrics"): [Call("public", "/metrics")],
    ("GET", "/prometheus"): [Call("public", "/prometheus")],
    ("GET", "/openapi.json"): [Call("public", "/openapi.json")],
    ("GET", "/docs"): [Call("public", "/docs")],
    ("GET", "/docs/oauth2-redirect"): [Call("public", "/docs/oauth2-redirect")],
    ("GET", "/redoc"): [Call("public", "/redoc")],
    ("GET", "/login"): [Call("public", "/login")],
    ("POST", "/login"): [Call("public", "/login", {"form": {"username": "x", "password": "y"}})],
    ("POST", "/api/v1/session"): [
        Call("public", "/api/v1/session", {"username": "nobody", "password": "wrong-one"})
    ],
    ("DELETE", "/api/v1/session"): [Call("self", "/api/v1/session")],
    ("POST", "/logout"): [Call("self", "/logout")],
    ("GET", "/api/v1/whoami"): [Call("self", "/api/v1/whoami")],
    # Jenkins-compatible API: the handlers check the job's permission themselves.
    ("GET", "/api/json"): [Call("job.read:list", "/api/json")],
    ("GET", "/crumbIssuer/api/json"): [Call("self", "/crumbIssuer/api/json")],
    ("GET", "/whoAmI/api/json"): [Call("self", "/whoAmI/api/json")],
    ("GET", "/me/api/json"): [Call("self", "/me/api/json")],
    ("GET", "/queue/api/json"): [Call("job.read:list", "/queue/api/json")],
    ("GET", "/queue/item/{item}/api/json"): own_other("job.read", "/queue/item/BUILD/api/json"),
    ("POST", "/queue/cancelItem"): own_other("build.cancel", "/queue/cancelItem?id=BUILD"),
    ("GET", "/computer/api/json"): [Call("fleet.read", "/computer/api/json")],
    ("GET", "/job/{path:path}"): [
        Call("job.read:own", "/job/team-a/job/app/api/json"),
        Call("job.read:other", "/job/team-b/job/app/1/consoleText"),
    ],
    ("POST", "/job/{path:path}"): [
        Call("build.trigger:own", "/job/team-a/job/app/build"),
        Call("build.cancel:other", "/job/team-b/job/app/1/stop"),
        Call("job.write:own", "/job/team-a/job/ghost/disable"),
        Call("job.write:other", "/job/team-b/job/ghost/enable"),
        Call("job.write:other", "/job/team-b/job/app/999/doDelete"),
    ],
    ("POST", "/createItem"): [Call("job.write:other", "/createItem?name=app")],
    ("GET", "/api/v1/tokens"): [Call("self", "/api/v1/tokens")],
    ("POST", "/api/v1/tokens"): [Call("self", "/api/v1/tokens", {"name": "t", "scope": "read"})],
    ("DELETE", "/api/v1/tokens/{token_id}"): [Call("self", "/api/v1/tokens/999999")],
    # jobs
    ("GET", "/api/v1/jobs"): [Call("job.read:list", "/api/v1/jobs")],
    ("POST", "/api/v1/jobs"): [
        Call("job.write:own", "/api/v1/jobs", {"spec": SPEC.format(name="team-a/new")}),
        Call("job.write:other", "/api/v1/jobs", {"spec": SPEC.format(name="team-b/new")}),
    ],
    ("GET", "/api/v1/jobs/{name:path}"): own_other("job.read", "/api/v1/jobs/JOB"),
    ("PUT", "/api/v1/jobs/{name:path}"): own_other(
        "job.write", "/api/v1/jobs/JOB", {"spec": "name: [broken"}
    ),
    ("DELETE", "/api/v1/jobs/{name:path}"): own_other("job.write", "/api/v1/jobs/JOB-ghost"),
    ("POST", "/api/v1/jobs/{name:path}/disable"): own_other(
        "job.write", "/api/v1/jobs/JOB-ghost/disable"
    ),
    ("POST", "/api/v1/jobs/{name:path}/enable"): own_other(
        "job.write", "/api/v1/jobs/JOB-ghost/enable"
    ),
    # A finished build: the first admitted caller deletes it, later ones get 404.
    ("DELETE", "/api/v1/builds/{build_id}"): own_other("job.write", "/api/v1/builds/DONE"),
    ("GET", "/api/v1/jobs/{name:path}/versions"): own_other(
        "job.read", "/api/v1/jobs/JOB/versions"
    ),
    ("GET", "/api/v1/jobs/{name:path}/versions/{version}"): own_other(
        "job.read", "/api/v1/jobs/JOB/versions/1"
    ),
    # builds
    ("POST", "/api/v1/jobs/{name:path}/builds"): own_other(
        "build.trigger", "/api/v1/jobs/JOB/builds", {}
    ),
    ("GET", "/api/v1/jobs/{name:path}/builds"): own_other("job.read", "/api/v1/jobs/JOB/builds"),
    ("GET", "/api/v1/jobs/{name:path}/builds/{number}"): own_other(
        "job.read", "/api/v1/jobs/JOB/builds/1"
    ),
    ("GET", "/api/v1/builds"): [Call("job.read:list", "/api/v1/builds")],
    ("GET", "/api/v1/queue"): [Call("job.read:list", "/api/v1/queue")],
    ("GET", "/api/v1/builds/{build_id}"): own_other("job.read", "/api/v1/builds/BUILD"),
    ("POST", "/api/v1/builds/{build_id}/cancel"): own_other(
        "build.cancel", "/api/v1/builds/BUILD/cancel"
    ),
    ("GET", "/api/v1/builds/{build_id}/log"): own_other("job.read", "/api/v1/builds/BUILD/log"),
    ("GET", "/api/v1/builds/{build_id}/log/stream"): own_other(
        "job.read", "/api/v1/builds/DONE/log/stream"
    ),
    ("GET", "/api/v1/builds/{build_id}/notifications"): own_other(
        "job.read", "/api/v1/builds/BUILD/notifications"
    ),
    ("GET", "/api/v1/builds/{build_id}/artifacts"): own_other(
        "job.read", "/api/v1/builds/BUILD/artifacts"
    ),
    ("GET", "/api/v1/builds/{build_id}/artifacts/{path:path}"): own_other(
        "job.read", "/api/v1/builds/BUILD/artifacts/x.txt"
    ),
    ("GET", "/api/v1/builds/{build_id}/artifacts.zip"): own_other(
        "job.read", "/api/v1/builds/BUILD/artifacts.zip"
    ),
    ("GET", "/api/v1/builds/{build_id}/artifacts.tar.gz"): own_other(
        "job.read", "/api/v1/builds/BUILD/artifacts.tar.gz"
    ),
    ("GET", "/api/v1/builds/{build_id}/artifacts-url/{path:path}"): own_other(
        "job.read", "/api/v1/builds/BUILD/artifacts-url/x.txt"
    ),
    ("POST", "/api/v1/builds/{build_id}/pin"): own_other("build.pin", "/api/v1/builds/BUILD/pin"),
    ("POST", "/api/v1/builds/{build_id}/unpin"): own_other(
        "build.pin", "/api/v1/builds/BUILD/unpin"
    ),
    # fleet
    ("GET", "/api/v1/agents"): [Call("fleet.read", "/api/v1/agents")],
    ("GET", "/api/v1/agents/{agent_id}"): [Call("fleet.read", "/api/v1/agents/{agent}")],
    ("POST", "/api/v1/agents/{agent_id}/drain"): [
        Call("fleet.manage", "/api/v1/agents/999999/drain")
    ],
    ("POST", "/api/v1/agents/{agent_id}/resume"): [
        Call("fleet.manage", "/api/v1/agents/999999/resume")
    ],
    ("GET", "/api/v1/cluster"): [Call("fleet.read", "/api/v1/cluster")],
    ("GET", "/api/v1/agent-tokens"): [Call("fleet.manage", "/api/v1/agent-tokens")],
    ("POST", "/api/v1/agent-tokens"): [
        Call("fleet.manage", "/api/v1/agent-tokens", {"pool": "matrix"})
    ],
    ("DELETE", "/api/v1/agent-tokens/{token_id}"): [
        Call("fleet.manage", "/api/v1/agent-tokens/999999")
    ],
    # users, grants, audit
    ("GET", "/api/v1/users"): [Call("users", "/api/v1/users")],
    ("POST", "/api/v1/users"): [Call("users", "/api/v1/users", {"name": "matrix-user"})],
    ("POST", "/api/v1/users/{name}/disable"): [Call("users", "/api/v1/users/nobody/disable")],
    ("POST", "/api/v1/users/{name}/enable"): [Call("users", "/api/v1/users/nobody/enable")],
    ("PUT", "/api/v1/users/{name}/password"): [
        Call("users", "/api/v1/users/nobody/password", {"password": "long-enough-1"})
    ],
    ("GET", "/api/v1/grants"): [Call("users", "/api/v1/grants")],
    ("POST", "/api/v1/grants"): [
        Call("users", "/api/v1/grants", {"user": "nobody", "role": "viewer"})
    ],
    ("POST", "/api/v1/grants/revoke"): [
        Call("users", "/api/v1/grants/revoke", {"user": "nobody", "role": "viewer"})
    ],
    ("GET", "/api/v1/audit"): [Call("audit", "/api/v1/audit")],
    # web UI pages
    ("GET", "/"): [Call("public", "/")],
    ("GET", "/ui/static/{name}"): [Call("public", "/ui/static/app.css")],
    ("GET", "/ui/events"): [Call("job.read:list", "/ui/events", endless=True)],
    ("GET", "/ui/"): [Call("job.read:list", "/ui/")],
    ("GET", "/ui/jobs"): [Call("job.read:list", "/ui/jobs")],
    ("GET", "/ui/jobs/{name:path}"): own_other("job.read", "/ui/jobs/JOB"),
    ("GET", "/ui/builds/{build_id}"): own_other("job.read", "/ui/builds/BUILD"),
    ("GET", "/ui/builds/{build_id}/log-window"): own_other(
        "job.read", "/ui/builds/BUILD/log-window"
    ),
    ("GET", "/ui/agents"): [Call("fleet.read", "/ui/agents")],
    ("GET", "/ui/pools"): [Call("fleet.read", "/ui/pools")],
    ("GET", "/ui/pools/{name}"): [Call("fleet.read", "/ui/pools/none")],
    ("GET", "/ui/cluster"): [Call("fleet.read", "/ui/cluster")],
    # credentials
    ("GET", "/api/v1/credentials"): [Call("credential.read", "/api/v1/credentials")],
    ("POST", "/api/v1/credentials"): [
        Call(
            "credential.manage", "/api/v1/credentials", {"id": "m/x", "kind": "text", "value": "v"}
        )
    ],
    ("GET", "/api/v1/credentials/{cred_id:path}"): [
        Call("credential.read", "/api/v1/credentials/m/none")
    ],
    ("PUT", "/api/v1/credentials/{cred_id:path}"): [
        Call("credential.manage", "/api/v1/credentials/m/none", {"value": "v"})
    ],
    ("DELETE", "/api/v1/credentials/{cred_id:path}"): [
        Call("credential.manage", "/api/v1/credentials/m/none")
    ],
    # publications and retention
    ("GET", "/api/v1/builds/{build_id}/publications"): own_other(
        "job.read", "/api/v1/builds/BUILD/publications"
    ),
    ("GET", "/api/v1/retention/preview"): [Call("fleet.read", "/api/v1/retention/preview")],
    ("POST", "/api/v1/retention/run"): [Call("maintenance", "/api/v1/retention/run")],
    # config as code, SCM and webhooks
    ("POST", "/api/v1/config/apply"): [Call("config.manage", "/api/v1/config/apply", {})],
    ("GET", "/api/v1/config/export"): [Call("config.manage", "/api/v1/config/export")],
    ("GET", "/api/v1/config/applies"): [Call("job.read:list", "/api/v1/config/applies")],
    ("GET", "/api/v1/config/instance"): [Call("fleet.read", "/api/v1/config/instance")],
    ("GET", "/api/v1/jobs/{name:path}/commits"): own_other("job.read", "/api/v1/jobs/JOB/commits"),
    ("GET", "/api/v1/jobs/{name:path}/scm-heads"): own_other(
        "job.read", "/api/v1/jobs/JOB/scm-heads"
    ),
    ("GET", "/api/v1/jobs/{name:path}/scm-poll"): own_other(
        "job.read", "/api/v1/jobs/JOB/scm-poll"
    ),
    ("POST", "/api/v1/jobs/{name:path}/rollback"): own_other(
        "job.write", "/api/v1/jobs/JOB/rollback", {"to": 99}
    ),
    ("POST", "/api/v1/webhooks/{provider}"): [
        Call("public", "/api/v1/webhooks/no-such-provider", {})
    ],
    ("GET", "/api/v1/webhooks/deliveries"): [Call("job.read:list", "/api/v1/webhooks/deliveries")],
    ("PUT", "/api/v1/webhooks/secrets/{job:path}"): own_other(
        "job.write", "/api/v1/webhooks/secrets/JOB", {"secret": "long-enough-secret"}
    ),
    ("DELETE", "/api/v1/webhooks/secrets/{job:path}"): own_other(
        "job.write", "/api/v1/webhooks/secrets/JOB"
    ),
    # agent pools and scaling
    ("GET", "/api/v1/pools"): [Call("fleet.read", "/api/v1/pools")],
    ("POST", "/api/v1/pools"): [
        Call("fleet.manage", "/api/v1/pools", {"name": "m", "provider": "nope"})
    ],
    ("GET", "/api/v1/pools/{name}"): [Call("fleet.read", "/api/v1/pools/none")],
    ("PATCH", "/api/v1/pools/{name}"): [Call("fleet.manage", "/api/v1/pools/none", {})],
    ("DELETE", "/api/v1/pools/{name}"): [Call("fleet.manage", "/api/v1/pools/none")],
    ("GET", "/api/v1/pools/{name}/decisions"): [Call("fleet.read", "/api/v1/pools/none/decisions")],
    ("GET", "/api/v1/scaling/workload"): [Call("fleet.read", "/api/v1/scaling/workload")],
    # the agent protocol
    ("POST", "/agent/v1/agents/{agent_id}/drain"): [
        Call("agent-protocol", "/agent/v1/agents/{agent}/drain", {})
    ],
    ("POST", "/agent/v1/assignments/{assignment_id}/publications"): [
        Call("agent-protocol", "/agent/v1/assignments/nope/publications", {}, AGENT_HEADERS)
    ],
    ("POST", "/agent/v1/register"): [
        Call("agent-protocol", "/agent/v1/register", {"name": "x", "executors": 1})
    ],
    ("POST", "/agent/v1/agents/{agent_id}/heartbeat"): [
        Call("agent-protocol", "/agent/v1/agents/{agent}/heartbeat", {})
    ],
    ("POST", "/agent/v1/agents/{agent_id}/poll"): [
        Call("agent-protocol", "/agent/v1/agents/{agent}/poll", {"wait": 0})
    ],
    **{
        (method, f"/agent/v1/assignments/{{assignment_id}}/{what}"): [
            Call("agent-protocol", f"/agent/v1/assignments/nope/{what}{query}", body, AGENT_HEADERS)
        ]
        for method, what, query, body in [
            ("POST", "start", "", None),
            ("POST", "log", "?seq=0&offset=0", None),
            ("POST", "steps", "", STEP),
            ("PUT", "artifacts", "?path=a.txt", None),
            ("POST", "finish", "", {"result": "succeeded"}),
            ("POST", "events", "", {"events": [{"kind": "step", **STEP}]}),
        ]
    },
}


def served_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = []
    for top in app.routes:
        # FastAPI includes routers lazily: expand them to the routes they serve.
        expand = getattr(top, "effective_route_contexts", None)
        for route in expand() if expand else [top]:
            methods = getattr(route, "methods", None) or ()
            found += [(m, str(route.path)) for m in sorted(methods) if m != "HEAD"]
    return found


def test_every_route_has_a_rule_in_the_table(app: FastAPI) -> None:
    missing = [r for r in served_routes(app) if r not in ROUTE_FAMILIES]
    assert not missing, f"routes without a row in ROUTE_FAMILIES: {missing}"
    stale = [r for r in ROUTE_FAMILIES if r not in served_routes(app)]
    assert not stale, f"rows for routes that do not exist: {stale}"
    unknown = {c.family for calls in ROUTE_FAMILIES.values() for c in calls} - set(FAMILY_ACCESS)
    assert not unknown


@pytest.fixture
async def world(runtime: Runtime, client: httpx.AsyncClient) -> dict[str, Any]:
    """Two teams' jobs with a build each, an agent, and a token per caller."""
    for name in (OWN, OTHER):
        r = await client.post("/api/v1/jobs", json={"spec": SPEC.format(name=name)})
        assert r.status_code == 201, r.text
    builds = {}
    for name in (OWN, OTHER):
        r = await client.post(f"/api/v1/jobs/{name}/builds", json={})
        assert r.status_code == 201, r.text
        builds[name] = r.json()["id"]
    r = await client.post("/agent/v1/register", json={"name": "a1", "executors": 1})
    agent = r.json()["agent_id"]
    await dispatch_once(runtime)
    done = {}
    for name in (OWN, OTHER):  # a finished build each: its log stream ends at once
        r = await client.post(f"/api/v1/jobs/{name}/builds", json={})
        done[name] = r.json()["id"]
        r = await client.post(f"/api/v1/builds/{done[name]}/cancel")
        assert r.json()["state"] == "cancelled", r.text
    tokens = {ADMIN: runtime.first_admin_token}
    roles = {VIEWER: Role.VIEWER, OPERATOR: Role.OPERATOR, DEVELOPER: Role.DEVELOPER}
    for caller, role in roles.items():
        tokens[caller] = await user_token(runtime.store, caller, role)
    tokens[DEV_A] = await user_token(runtime.store, DEV_A, Role.DEVELOPER, "team-a/*")
    return {
        "own": OWN, "other": OTHER, "own_build": builds[OWN], "other_build": builds[OTHER],
        "own_done": done[OWN], "other_done": done[OTHER], "agent": agent, "tokens": tokens,
    }  # fmt: skip


async def _send(app: FastAPI, caller: str, call: Call, world: dict[str, Any]) -> httpx.Response:
    token = world["tokens"].get(caller)
    headers = {k: v.format(**world) for k, v in (call.headers or {}).items()}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    path = call.path.format(**world)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test"
    ) as c:
        kwargs: dict[str, Any] = {"headers": headers}
        if isinstance(call.body, dict) and "form" in call.body:
            kwargs["data"] = call.body["form"]
        elif call.body is not None:
            kwargs["json"] = call.body
        request = c.request(world["method"], path, **kwargs)
        if not call.endless:
            return await request
        try:
            return await asyncio.wait_for(request, timeout=3.0)
        except TimeoutError:
            return httpx.Response(200)  # streaming: the gate let it through


def path_is_page(call: Call) -> bool:
    """Web UI pages send an anonymous browser to the sign-in form instead of a 401."""
    return call.path.startswith("/ui/")


async def test_permission_matrix(app: FastAPI, world: dict[str, Any]) -> None:
    failures = []
    for caller in CALLERS:
        for (method, _route), calls in ROUTE_FAMILIES.items():
            for call in calls:
                world["method"] = method
                r = await _send(app, caller, call, world)
                allowed = caller in FAMILY_ACCESS[call.family]
                where = f"{caller:>10} {method} {call.path.format(**world)} ({call.family})"
                if r.status_code >= 500:
                    failures.append(f"{where}: {r.status_code} {r.text[:200]}")
                elif call.family == "public":
                    # (a wrong password or form token is the route's answer, not the gate's)
                    if r.status_code in (401, 403) and "missing" in r.text:
                        failures.append(f"{where}: the gate refused a public route: {r.text}")
                elif caller == ANON:
                    if path_is_page(call) and r.status_code == 303:
                        if not r.headers["location"].startswith("/login?next="):
                            failures.append(f"{where}: redirected to {r.headers['location']}")
                    elif r.status_code != 401:
                        failures.append(f"{where}: expected 401, got {r.status_code}")
                elif allowed and r.status_code in (401, 403):
                    failures.append(f"{where}: expected access, got {r.status_code} {r.text}")
                elif not allowed:
                    if r.status_code != 403:
                        failures.append(f"{where}: expected 403, got {r.status_code}")
                    elif "permission" not in r.text and "agent" not in r.text:
                        # (the JSON problem's detail, or the HTML error page of a UI page)
                        failures.append(f"{where}: 403 without the missing permission: {r.text}")
    assert not failures, "\n".join(failures)


async def test_listings_show_only_what_the_caller_may_read(
    app: FastAPI, world: dict[str, Any]
) -> None:
    world["method"] = "GET"
    for path, key in (("/api/v1/jobs", "name"), ("/api/v1/builds", "job")):
        r = await _send(app, DEV_A, Call("job.read:list", path), world)
        items = r.json() if path.endswith("jobs") else r.json()["items"]
        assert {i[key] for i in items} == {OWN}
        r = await _send(app, VIEWER, Call("job.read:list", path), world)
        items = r.json() if path.endswith("jobs") else r.json()["items"]
        assert {i[key] for i in items} == {OWN, OTHER}
    r = await _send(app, DEV_A, Call("job.read:list", "/api/v1/queue"), world)
    assert all(q["job"] == OWN for q in r.json())


async def test_a_refusal_names_the_missing_permission(app: FastAPI, world: dict[str, Any]) -> None:
    world["method"] = "POST"
    r = await _send(app, DEV_A, Call("x", "/api/v1/jobs/{other}/builds", {}), world)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "missing permission build.trigger on job 'team-b/app'"
    world["method"] = "GET"
    r = await _send(app, VIEWER, Call("x", "/api/v1/audit"), world)
    assert r.json()["detail"] == "missing permission audit.read"
