"""Agent enrollment tokens: per agent (``agent_name``) or per pool, optionally one-time
(ephemeral agents) and expiring. An agent registers with one; from then on the token
acts only as the agent(s) it registered. Revoking it disconnects them: their next
call is refused with 401 and the agent process stops."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from starlette.requests import HTTPConnection

from conveyor.errors import Forbidden, InvalidInput
from conveyor.runtime import Runtime
from conveyor.security.audit import audit_request, record_audit
from conveyor.security.auth import (
    AGENT_TOKEN_PREFIX,
    auth_cache,
    bearer_token,
    current_principal,
    digest,
    new_secret,
)
from conveyor.store import Store
from conveyor.store import security as db


async def issue_enrollment_token(
    store: Store,
    *,
    pool: str | None = None,
    agent_name: str | None = None,
    one_time: bool = False,
    expires_at: datetime | None = None,
    name: str | None = None,
    created_by: str = "system",
    now: datetime | None = None,
) -> str:
    """A new enrollment token (returned once; only its digest is stored).

    ``agent_name``: only an agent of that name may register with it; ``pool``: any
    agent of the pool; ``one_time``: it registers one agent, then no other."""
    from conveyor.controller.clock import utcnow

    if pool is not None and not pool.strip():
        raise InvalidInput("pool: must not be empty")
    if agent_name is not None and not agent_name.strip():
        raise InvalidInput("agent_name: must not be empty")
    at = now or utcnow()
    if expires_at is not None and expires_at <= at:
        raise InvalidInput("expires_at: must be in the future")
    token = new_secret(AGENT_TOKEN_PREFIX)
    label = name or agent_name or (f"pool:{pool}" if pool else "agents")
    record = await db.create_agent_token(
        store,
        name=label,
        token_hash=digest(token),
        now=at,
        pool=pool,
        agent_name=agent_name,
        one_time=one_time,
        expires_at=expires_at,
        created_by=created_by,
    )
    await record_audit(
        store,
        actor=created_by,
        action="agent_token.created",
        target=f"agent-token:{record.id}",
        outcome="success",
        source="controller",
        security=True,
        detail={"name": label, "pool": pool, "agent_name": agent_name, "one_time": one_time},
        now=at,
    )
    return token


async def admit_agent(request: HTTPConnection, runtime: Runtime, agent_name: str) -> None:
    """Before registering ``agent_name``: may this enrollment token do it?"""
    principal = current_principal(request)
    token = None if principal is None else principal.agent_token
    if token is None:
        raise Forbidden("the agent protocol needs an agent token")
    refusal = None
    if token.agent_name is not None and token.agent_name != agent_name:
        refusal = f"this enrollment token is for agent {token.agent_name!r} only"
    else:
        refusal = await db.bind_agent(runtime.store, token, agent_name, runtime.clock())
    if refusal is not None:
        await audit_request(
            request, runtime, "agent.register_refused", 403, security=True,
            target=f"agent:{agent_name}", reason=refusal,
        )  # fmt: skip
        raise Forbidden(refusal)


async def bind_registered_agent(request: HTTPConnection, runtime: Runtime, agent_id: int) -> None:
    """After registering: the token now acts as this agent (on every controller)."""
    principal = current_principal(request)
    assert principal is not None and principal.token_id is not None
    await db.record_binding(runtime.store, agent_id, principal.token_id, runtime.clock())
    token = bearer_token(request) or ""
    key = "a:" + digest(token)
    cache = auth_cache(runtime)
    cached = cache.get(key)
    if (
        cached is not None
        and principal.agent_token is not None
        and not (principal.agent_token.one_time)
    ):
        # A pool token shared by many agents: add this agent to the cached principal.
        # Dropping it made every other agent of the pool authenticate again, each
        # loading all the token's agents (2,000 agents: registrations stall).
        cache.put(key, replace(cached, agent_ids=cached.agent_ids | {agent_id}))
    else:
        cache.drop(key)
    await audit_request(
        request, runtime, "agent.registered", 200, target=f"agent:{agent_id}",
        token=principal.name,
    )  # fmt: skip
