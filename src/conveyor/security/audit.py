"""The audit log: who did what to which target, when, from where, and how it ended.

Every mutating API request is recorded by :class:`~conveyor.security.middleware.
SecurityMiddleware` (unless its route recorded a more precise event itself); security
events (login failure, lockout, permission denied, token and grant changes) are
flagged. Each event is also a structlog ``audit`` event. Other modules call
:func:`record_audit`."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import HTTPConnection

from conveyor.runtime import Runtime
from conveyor.security.auth import PRINCIPAL_KEY, current_principal
from conveyor.store import Store
from conveyor.store import security as db

log = structlog.get_logger("conveyor.audit")

#: Set on a request whose route recorded its own audit event (the middleware skips it).
AUDITED_KEY = "conveyor.audited"


async def record_audit(
    store: Store,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source: str,
    security: bool = False,
    detail: dict[str, Any] | None = None,
    now: Any = None,
) -> None:
    """Store one audit event and log it. Never raises: an audit write that fails is
    logged (audit.write_failed) rather than failing the action it describes."""
    from conveyor.controller.clock import utcnow

    at = now or utcnow()
    event = log.warning if security else log.info
    event(
        "audit",
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        source=source,
        security=security,
        **({"detail": detail} if detail else {}),
    )
    try:
        await db.insert_audit(
            store,
            at=at,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            source=source,
            security=security,
            detail=detail,
        )
    except Exception as exc:
        log.error("audit.write_failed", action=action, error=repr(exc))


def source_of(conn: HTTPConnection) -> str:
    client = conn.scope.get("client")
    return str(client[0]) if client else "unknown"


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403, 429):
        return "denied"
    return "failed"


async def audit_request(
    conn: HTTPConnection,
    runtime: Runtime,
    action: str,
    status: int,
    *,
    security: bool = False,
    actor: str | None = None,
    target: str | None = None,
    **detail: Any,
) -> None:
    """Record an event about this request and mark it audited."""
    principal = current_principal(conn)
    conn.scope[AUDITED_KEY] = True
    await record_audit(
        runtime.store,
        actor=actor or (principal.name if principal is not None else "anonymous"),
        action=action,
        target=target if target is not None else conn.url.path,
        outcome=outcome_of(status),
        source=source_of(conn),
        security=security,
        detail={"status": status, "method": conn.scope.get("method"), **detail},
        now=runtime.clock(),
    )


__all__ = ["AUDITED_KEY", "PRINCIPAL_KEY", "audit_request", "record_audit", "source_of"]
