"""Passwords, throttling and lockout, sessions (cookies), CSRF, logout, whoami, token
scopes and revocation — in-process on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from conveyor.core.permissions import Role, Scope
from conveyor.runtime import Runtime
from conveyor.security.passwords import hash_password
from conveyor.store import security as db
from tests.auth_helpers import user_token
from tests.conftest import FakeClock

PASSWORD = "correct horse battery"


def _client(app: FastAPI, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://conveyor.test"
    )


@pytest.fixture
async def alice(runtime: Runtime, clock: FakeClock) -> str:
    await db.create_user(
        runtime.store, "alice", await hash_password(PASSWORD), clock(), Role.VIEWER
    )
    return "alice"


async def _audit(runtime: Runtime, actor: str) -> list[db.AuditRecord]:
    return list(reversed(await db.list_audit(runtime.store, actor=actor, limit=500)))


async def test_lockout_after_n_failures_each_attempt_audited_then_the_password_works(
    app: FastAPI, runtime: Runtime, clock: FakeClock, alice: str
) -> None:
    limit = runtime.settings.login_max_failures
    async with _client(app) as c:
        for _ in range(limit):
            r = await c.post("/api/v1/session", json={"username": alice, "password": "nope-nope"})
            assert r.status_code == 401
            assert r.json()["detail"] == "wrong user name or password"
        # Locked: even the right password is refused until the lockout ends.
        r = await c.post("/api/v1/session", json={"username": alice, "password": PASSWORD})
        assert r.status_code == 429, r.text
        assert "locked" in r.json()["detail"]
        actions = [e.action for e in await _audit(runtime, alice)]
        assert actions == ["login.failed"] * limit + ["account.locked", "login.locked"]
        assert all(e.security for e in await _audit(runtime, alice))
        clock.advance(runtime.settings.login_lockout_seconds + 1)
        r = await c.post("/api/v1/session", json={"username": alice, "password": PASSWORD})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == alice
        assert (await _audit(runtime, alice))[-1].action == "login.succeeded"
        # The counter started over: one more failure does not lock again.
        r = await c.post("/api/v1/session", json={"username": alice, "password": "nope-nope"})
        assert r.status_code == 401
    user = await db.get_user(runtime.store, alice)
    assert user is not None and user.login.failures == 1 and user.login.locked_until is None


async def test_unknown_users_fail_like_wrong_passwords_and_are_audited(
    app: FastAPI, runtime: Runtime
) -> None:
    async with _client(app) as c:
        r = await c.post("/api/v1/session", json={"username": "ghost", "password": "whatever1"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    [event] = await _audit(runtime, "ghost")
    assert (event.action, event.outcome, event.security) == ("login.failed", "denied", True)
    assert event.source == "127.0.0.1"


async def test_session_cookies_csrf_and_logout(app: FastAPI, runtime: Runtime, alice: str) -> None:
    await db.add_grant(runtime.store, alice, Role.DEVELOPER, "*", runtime.clock())
    async with _client(app) as c:
        r = await c.post("/api/v1/session", json={"username": alice, "password": PASSWORD})
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        session = next(h for h in cookies if h.startswith("conveyor_session="))
        csrf_header = next(h for h in cookies if h.startswith("conveyor_csrf="))
        assert "HttpOnly" in session and "SameSite=lax" in session and "Secure" not in session
        assert "HttpOnly" not in csrf_header
        r = await c.get("/api/v1/whoami")
        assert r.status_code == 200
        me = r.json()
        assert (me["user"], me["via"]) == (alice, "session")
        assert "build.trigger" in me["permissions"] and "user.manage" not in me["permissions"]
        # A cookie-signed unsafe request without the CSRF token is refused...
        spec = "name: web\nstages:\n  - name: a\n    steps:\n      - echo: hi\n"
        r = await c.post("/api/v1/jobs", json={"spec": spec})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        # ... with it, it works.
        token = c.cookies["conveyor_csrf"]
        r = await c.post("/api/v1/jobs", json={"spec": spec}, headers={"X-CSRF-Token": token})
        assert r.status_code == 201, r.text
        csrf_events = await db.list_audit(runtime.store, action="csrf.refused")
        assert len(csrf_events) == 1 and csrf_events[0].security
        # Logout revokes the session in the store: the old cookie is refused.
        old = c.cookies["conveyor_session"]
        r = await c.delete("/api/v1/session", headers={"X-CSRF-Token": token})
        assert r.status_code == 204
    async with _client(app) as c:
        c.cookies.set("conveyor_session", old)
        r = await c.get("/api/v1/whoami")
        assert r.status_code == 401 and "session ended" in r.json()["detail"]


async def test_secure_cookies_over_tls(app: FastAPI, alice: str) -> None:
    async with _client(app, "https") as c:
        r = await c.post("/api/v1/session", json={"username": alice, "password": PASSWORD})
    assert all("Secure" in h for h in r.headers.get_list("set-cookie"))


async def test_html_login_form_and_logout(app: FastAPI, runtime: Runtime, alice: str) -> None:
    async with _client(app) as c:
        r = await c.get("/login", params={"next": "/jobs/x"})
        assert r.status_code == 200
        html = r.text
        assert '<label for="username">' in html and '<label for="password">' in html
        assert 'href="/ui/static/app.css"' in html and "<style" not in html
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert csrf is not None and csrf.group(1) == c.cookies["conveyor_csrf"]
        form = {"username": alice, "password": PASSWORD, "next": "/jobs/x"}
        # Without the form token (e.g. posted from another site): refused.
        r = await c.post("/login", data={**form, "csrf_token": "forged"})
        assert r.status_code == 403
        r = await c.post("/login", data={**form, "csrf_token": csrf.group(1)})
        assert r.status_code == 303 and r.headers["location"] == "/jobs/x"
        assert (await c.get("/api/v1/whoami")).json()["user"] == alice
        # An open redirect is not possible.
        r = await c.post(
            "/login", data={**form, "csrf_token": csrf.group(1), "next": "//evil.example"}
        )
        assert r.headers["location"] == "/"
        r = await c.post("/logout", data={"csrf_token": "wrong"})
        assert r.status_code == 403
        r = await c.post("/logout", data={"csrf_token": c.cookies["conveyor_csrf"]})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await c.get("/api/v1/whoami")).status_code == 401


async def test_token_scope_narrows_the_role_and_revocation_is_immediate(
    app: FastAPI, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await client.post(
        "/api/v1/jobs",
        json={"spec": "name: j\nstages:\n  - name: a\n    steps:\n      - echo: hi\n"},
    )
    read_only = await user_token(runtime.store, "dev", Role.DEVELOPER, scope=Scope.READ)
    async with _client(app) as c:
        c.headers["Authorization"] = f"Bearer {read_only}"
        assert (await c.get("/api/v1/jobs/j")).status_code == 200
        r = await c.post("/api/v1/jobs/j/builds", json={})
        assert r.status_code == 403 and "build.trigger" in r.json()["detail"]
        # A read token cannot mint a wider one.
        r = await c.post("/api/v1/tokens", json={"name": "up", "scope": "admin"})
        assert r.status_code == 403
        r = await c.post("/api/v1/tokens", json={"name": "same", "scope": "read"})
        assert r.status_code == 201
        created = r.json()
        assert created["token"].startswith("cvy_")
        # Shown once: listing never shows it.
        listed = (await c.get("/api/v1/tokens")).json()
        assert all("token" not in t for t in listed)
        assert {t["name"] for t in listed} == {"dev-token", "same"}
        # Revoke the new one; this controller refuses it at once (no cache delay).
        c.headers["Authorization"] = f"Bearer {created['token']}"
        assert (await c.get("/api/v1/whoami")).status_code == 200  # now cached
        assert (await client.delete(f"/api/v1/tokens/{created['id']}")).status_code == 204
        r = await c.get("/api/v1/whoami")
        assert r.status_code == 401
    stored = await db.find_user_token(runtime.store, created["token"])
    assert stored is None  # only the digest is stored


async def test_users_grants_and_disable_through_the_api(
    app: FastAPI, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    r = await client.post("/api/v1/users", json={"name": "bob", "password": "short"})
    assert r.status_code == 400
    r = await client.post("/api/v1/users", json={"name": "bob", "password": PASSWORD})
    assert r.status_code == 201 and r.json()["grants"] == []
    assert (await client.post("/api/v1/users", json={"name": "bob"})).status_code == 409
    r = await client.post(
        "/api/v1/grants", json={"user": "bob", "role": "developer", "pattern": "x*y"}
    )
    assert r.status_code == 400
    r = await client.post(
        "/api/v1/grants", json={"user": "bob", "role": "developer", "pattern": "team-a/*"}
    )
    assert r.status_code == 201
    token = await user_token(runtime.store, "bob", None)
    async with _client(app) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        me = (await c.get("/api/v1/whoami")).json()
        assert me["grants"] == [{"role": "developer", "pattern": "team-a/*"}]
        assert me["permissions"] == [] and "build.trigger" in me["permissions_somewhere"]
        assert (await client.post("/api/v1/users/bob/disable")).status_code == 200
        assert (await c.get("/api/v1/whoami")).status_code == 401
    grants = await db.list_audit(runtime.store, action="grant", security_only=True)
    assert [e.action for e in grants] == ["grant.added"]
    r = await client.post(
        "/api/v1/grants/revoke", json={"user": "bob", "role": "developer", "pattern": "team-a/*"}
    )
    assert r.status_code == 200
    r = await client.post(
        "/api/v1/grants/revoke", json={"user": "bob", "role": "developer", "pattern": "team-a/*"}
    )
    assert r.status_code == 404


async def test_security_headers_and_body_limit(app: FastAPI, runtime: Runtime) -> None:
    async with _client(app) as c:
        r = await c.get("/healthz")
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        big = b"x" * (runtime.settings.max_request_body_bytes + 1)
        r = await c.post(
            "/api/v1/session", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


async def test_audit_endpoint_filters_and_pages(
    runtime: Runtime, client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await anon.post("/api/v1/session", json={"username": "eve", "password": "guessing1"})
    await client.post("/api/v1/users", json={"name": "carol"})
    r = await client.get("/api/v1/audit", params={"actor": "eve", "limit": 2})
    page = r.json()
    assert [e["action"] for e in page["events"]] == ["login.failed"] * 2
    assert page["next_cursor"] is not None
    r = await client.get(
        "/api/v1/audit", params={"actor": "eve", "limit": 2, "cursor": page["next_cursor"]}
    )
    assert len(r.json()["events"]) == 1
    r = await client.get("/api/v1/audit", params={"action": "user"})
    [event] = r.json()["events"]
    assert (event["action"], event["actor"], event["outcome"]) == (
        "user.created",
        "admin",
        "success",
    )
    assert event["target"] == "user:carol" and event["detail"]["password"] is False
    await client.get("/api/v1/jobs/nope")  # reads are not audited
    await client.delete("/api/v1/jobs/nope")  # a mutation is, whatever its outcome
    r = await client.get("/api/v1/audit", params={"action": "delete_job"})
    [event] = r.json()["events"]
    assert (event["outcome"], event["target"], event["security"]) == (
        "failed", "/api/v1/jobs/nope", False,
    )  # fmt: skip
    r = await client.get("/api/v1/audit", params={"security_only": True})
    # (the client fixture made an agent enrollment token: a security event too)
    assert {e["action"] for e in r.json()["events"]} == {
        "login.failed", "agent_token.created", "user.created",
    }  # fmt: skip
    r = await client.get("/api/v1/audit", params={"since": "2020-01-01T00:00:00"})
    assert r.status_code == 400


async def test_a_browser_without_a_session_is_sent_to_the_login_form(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.responses import HTMLResponse

    from conveyor.security import policy

    @app.get("/pages/home", response_class=HTMLResponse)
    async def home() -> str:
        return "<p>home</p>"

    monkeypatch.setitem(policy.ROUTE_RULES, ("GET", "/pages/home"), policy.USER)
    async with _client(app) as c:
        r = await c.get("/pages/home", params={"tab": "1"}, headers={"accept": "text/html"})
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=/pages/home%3Ftab%3D1"
        r = await c.get("/pages/home")  # not a browser: a plain 401
        assert r.status_code == 401


async def test_error_bodies_never_echo_secrets(
    app: FastAPI, client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    secret = "S3cret-" + "x" * 1100
    r = await anon.post("/api/v1/session", json={"username": "a", "password": secret})
    assert r.status_code == 400 and "S3cret" not in r.text
    r = await client.post("/api/v1/users", json={"name": "zed", "password": "S3cret"})
    assert r.status_code == 400 and "S3cret" not in r.text
    r = await anon.get("/api/v1/jobs", headers={"Authorization": "Bearer cvy_S3cretToken"})
    assert r.status_code == 401 and "S3cret" not in r.text
    openapi = (await anon.get("/openapi.json")).text
    assert "cvy_" not in openapi and "cva_" not in openapi
