"""Password login with throttling, and browser sessions (cookies any controller accepts)."""

from __future__ import annotations

import secrets
from datetime import timedelta

from starlette.requests import HTTPConnection
from starlette.responses import Response

from conveyor.core.lockout import after_failure, after_success, is_locked
from conveyor.errors import ConveyorError, Unauthorized
from conveyor.runtime import Runtime
from conveyor.security.audit import audit_request
from conveyor.security.auth import CSRF_COOKIE, SESSION_COOKIE, auth_cache, digest
from conveyor.security.passwords import verify_password
from conveyor.store import security as db
from conveyor.store.security import UserRecord

WRONG = "wrong user name or password"


class TooManyAttempts(ConveyorError):
    status = 429
    title = "Too many failed logins"


async def check_login(
    conn: HTTPConnection, runtime: Runtime, username: str, password: str
) -> UserRecord:
    """The user if the password is right; every attempt goes to the audit log."""
    settings = runtime.settings
    now = runtime.clock()
    user = await db.get_user(runtime.store, username)
    target = f"user:{username[:100]}"
    if user is None or user.disabled:
        await verify_password(None, password)  # as slow as a real check
        await audit_request(
            conn, runtime, "login.failed", 401, security=True, actor=username[:100], target=target
        )
        raise Unauthorized(WRONG)
    if is_locked(user.login, now):
        await audit_request(
            conn, runtime, "login.locked", 429, security=True, actor=user.name, target=target
        )
        assert user.login.locked_until is not None
        wait = max(1, int((user.login.locked_until - now).total_seconds() + 0.999))
        raise TooManyAttempts(f"account locked after repeated failures: try again in {wait} s")
    if not await verify_password(user.password_hash, password):
        state = after_failure(
            user.login, now, settings.login_max_failures, settings.login_lockout_seconds
        )
        await db.save_login_state(runtime.store, user.id, state)
        await audit_request(
            conn, runtime, "login.failed", 401, security=True, actor=user.name, target=target
        )
        if is_locked(state, now):
            await audit_request(
                conn,
                runtime,
                "account.locked",
                429,
                security=True,
                actor=user.name,
                target=target,
                seconds=settings.login_lockout_seconds,
            )
        raise Unauthorized(WRONG)
    if user.login.failures or user.login.locked_until:
        await db.save_login_state(runtime.store, user.id, after_success())
    await audit_request(conn, runtime, "login.succeeded", 200, actor=user.name, target=target)
    return user


async def start_session(
    conn: HTTPConnection, runtime: Runtime, user: UserRecord, response: Response
) -> str:
    """Store a new session and set its cookies; returns the CSRF token."""
    session = secrets.token_urlsafe(32)
    now = runtime.clock()
    hours = runtime.settings.session_hours
    await db.forget_sessions(runtime.store, now)  # expired ones: nothing to keep
    await db.create_session(
        runtime.store, user.id, digest(session), now, now + timedelta(hours=hours)
    )
    secure = conn.url.scheme == "https"
    csrf = conn.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    max_age = int(hours * 3600)
    response.set_cookie(
        SESSION_COOKIE, session, max_age=max_age, httponly=True, samesite="lax", secure=secure
    )
    set_csrf_cookie(conn, response, csrf, max_age)
    return csrf


def set_csrf_cookie(conn: HTTPConnection, response: Response, csrf: str, max_age: int) -> None:
    # Readable by the page's script on purpose (double submit): not HttpOnly.
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=max_age,
        httponly=False,
        samesite="lax",
        secure=conn.url.scheme == "https",
    )


async def end_session(conn: HTTPConnection, runtime: Runtime, response: Response) -> None:
    session = conn.cookies.get(SESSION_COOKIE)
    if session:
        key = digest(session)
        await db.revoke_session(runtime.store, key, runtime.clock())
        auth_cache(runtime).drop("s:" + key)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
