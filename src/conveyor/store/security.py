"""Users, grants, API tokens, sessions, agent enrollment tokens and the audit log.

Tables on the shared :data:`conveyor.store.schema.metadata` (migration 0006).
Secrets are never stored: tokens and session ids are kept as SHA-256 digests (they
are long random strings, so a fast hash is enough), passwords as argon2id hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from conveyor.core.lockout import LoginState
from conveyor.core.permissions import Grant, Role
from conveyor.errors import Conflict, NotFound
from conveyor.store.schema import Id, agents, builds, metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=True),  # None: token-only user
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

user_grants = Table(
    "user_grants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(20), nullable=False),
    Column("pattern", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("user_id", "role", "pattern", name="uq_user_grants"),
)

user_tokens = Table(
    "user_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scope", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("session_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

agent_tokens = Table(
    "agent_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("pool", String(200), nullable=True),
    Column("agent_name", String(200), nullable=True),
    Column("one_time", Boolean, nullable=False, default=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_by", String(100), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

#: Which enrollment token each agent registered with (what it may act as).
agent_bindings = Table(
    "agent_bindings",
    metadata,
    Column("agent_id", Id, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("token_id", Id, ForeignKey("agent_tokens.id", ondelete="CASCADE"), nullable=False),
    Column("bound_at", UTCDateTime, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(200), nullable=False),
    Column("target", String(1000), nullable=False),
    Column("outcome", String(50), nullable=False),
    Column("source", String(200), nullable=False),
    Column("security", Boolean, nullable=False, default=False),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_events_at", "at"),
)


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    password_hash: str | None
    disabled: bool
    login: LoginState
    created_at: datetime


@dataclass(frozen=True)
class GrantRecord:
    id: int
    user: str
    role: Role
    pattern: str

    @property
    def grant(self) -> Grant:
        return Grant(self.role, self.pattern)


@dataclass(frozen=True)
class UserTokenRecord:
    id: int
    user_id: int
    user: str
    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class SessionRecord:
    id: int
    user_id: int
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AgentTokenRecord:
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

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    source: str
    security: bool
    detail: dict[str, Any] | None


# ---------------------------------------------------------------------- users
def _user(row: Row[Any]) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        password_hash=row.password_hash,
        disabled=bool(row.disabled),
        login=LoginState(int(row.failed_logins or 0), row.locked_until),
        created_at=row.created_at,
    )


async def create_user(
    store: Store, name: str, password_hash: str | None, now: datetime, role: Role | None = None
) -> UserRecord:
    """A new user, with an optional global role grant, in one transaction."""
    async with store.write() as conn:
        try:
            user_id = await conn.scalar(
                insert(users)
                .values(
                    name=name,
                    password_hash=password_hash,
                    disabled=False,
                    failed_logins=0,
                    created_at=now,
                )
                .returning(users.c.id)
            )
        except IntegrityError as exc:
            raise Conflict(f"user {name!r} exists already") from exc
        if role is not None:
            await conn.execute(
                insert(user_grants).values(
                    user_id=user_id, role=role.value, pattern="*", created_at=now
                )
            )
        row = (await conn.execute(select(users).where(users.c.id == user_id))).one()
    return _user(row)


async def get_user(store: Store, name: str) -> UserRecord | None:
    async with store.read() as conn:
        row = (await conn.execute(select(users).where(users.c.name == name))).one_or_none()
    return None if row is None else _user(row)


async def get_user_by_id(store: Store, user_id: int) -> UserRecord | None:
    async with store.read() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).one_or_none()
    return None if row is None else _user(row)


async def list_users(store: Store) -> list[UserRecord]:
    async with store.read() as conn:
        rows = (await conn.execute(select(users).order_by(users.c.name))).all()
    return [_user(r) for r in rows]


async def count_users(store: Store) -> int:
    async with store.read() as conn:
        return len((await conn.execute(select(users.c.id).limit(1))).all())


async def _require_user_id(conn: Any, name: str) -> int:
    user_id = await conn.scalar(select(users.c.id).where(users.c.name == name))
    if user_id is None:
        raise NotFound(f"no user {name!r}")
    return int(user_id)


async def set_password(store: Store, name: str, password_hash: str) -> None:
    async with store.write() as conn:
        user_id = await _require_user_id(conn, name)
        await conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(password_hash=password_hash, failed_logins=0, locked_until=None)
        )


async def set_disabled(store: Store, name: str, disabled: bool, now: datetime) -> None:
    """Disabling also ends the user's sessions (tokens are refused while disabled)."""
    async with store.write() as conn:
        user_id = await _require_user_id(conn, name)
        await conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))
        if disabled:
            await conn.execute(
                update(user_sessions)
                .where(user_sessions.c.user_id == user_id, user_sessions.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )


async def save_login_state(store: Store, user_id: int, state: LoginState) -> None:
    async with store.write() as conn:
        await conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(failed_logins=state.failures, locked_until=state.locked_until)
        )


# --------------------------------------------------------------------- grants
async def add_grant(store: Store, user: str, role: Role, pattern: str, now: datetime) -> None:
    async with store.write() as conn:
        user_id = await _require_user_id(conn, user)
        exists = await conn.scalar(
            select(user_grants.c.id).where(
                user_grants.c.user_id == user_id,
                user_grants.c.role == role.value,
                user_grants.c.pattern == pattern,
            )
        )
        if exists is None:
            await conn.execute(
                insert(user_grants).values(
                    user_id=user_id, role=role.value, pattern=pattern, created_at=now
                )
            )


async def remove_grant(store: Store, user: str, role: Role, pattern: str) -> bool:
    async with store.write() as conn:
        user_id = await _require_user_id(conn, user)
        result = await conn.execute(
            delete(user_grants).where(
                user_grants.c.user_id == user_id,
                user_grants.c.role == role.value,
                user_grants.c.pattern == pattern,
            )
        )
    return bool(result.rowcount)


async def grants_of(store: Store, user_id: int) -> list[Grant]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(user_grants.c.role, user_grants.c.pattern)
                .where(user_grants.c.user_id == user_id)
                .order_by(user_grants.c.id)
            )
        ).all()
    return [Grant(Role(r.role), r.pattern) for r in rows]


async def list_grants(store: Store, user: str | None = None) -> list[GrantRecord]:
    query = (
        select(user_grants.c.id, users.c.name, user_grants.c.role, user_grants.c.pattern)
        .join(users, users.c.id == user_grants.c.user_id)
        .order_by(users.c.name, user_grants.c.id)
    )
    if user is not None:
        query = query.where(users.c.name == user)
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [GrantRecord(r.id, r.name, Role(r.role), r.pattern) for r in rows]


# ---------------------------------------------------------------- user tokens
def _user_token(row: Row[Any]) -> UserTokenRecord:
    return UserTokenRecord(
        id=row.id,
        user_id=row.user_id,
        user=row.user_name,
        name=row.name,
        scope=row.scope,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


_TOKEN_COLUMNS = (*user_tokens.c, users.c.name.label("user_name"))


async def create_user_token(
    store: Store,
    user_id: int,
    name: str,
    token_hash: str,
    scope: str,
    now: datetime,
    expires_at: datetime | None = None,
) -> UserTokenRecord:
    async with store.write() as conn:
        token_id = await conn.scalar(
            insert(user_tokens)
            .values(
                user_id=user_id,
                name=name,
                token_hash=token_hash,
                scope=scope,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(user_tokens.c.id)
        )
        row = (
            await conn.execute(
                select(*_TOKEN_COLUMNS)
                .join(users, users.c.id == user_tokens.c.user_id)
                .where(user_tokens.c.id == token_id)
            )
        ).one()
    return _user_token(row)


async def find_user_token(store: Store, token_hash: str) -> UserTokenRecord | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(*_TOKEN_COLUMNS)
                .join(users, users.c.id == user_tokens.c.user_id)
                .where(user_tokens.c.token_hash == token_hash)
            )
        ).one_or_none()
    return None if row is None else _user_token(row)


async def list_user_tokens(store: Store, user: str | None = None) -> list[UserTokenRecord]:
    query = (
        select(*_TOKEN_COLUMNS)
        .join(users, users.c.id == user_tokens.c.user_id)
        .order_by(user_tokens.c.id)
    )
    if user is not None:
        query = query.where(users.c.name == user)
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [_user_token(r) for r in rows]


async def get_user_token(store: Store, token_id: int) -> UserTokenRecord:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(*_TOKEN_COLUMNS)
                .join(users, users.c.id == user_tokens.c.user_id)
                .where(user_tokens.c.id == token_id)
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"no token {token_id}")
    return _user_token(row)


async def revoke_user_token(store: Store, token_id: int, now: datetime) -> str:
    """Revoke; returns the token's digest (to drop it from caches)."""
    async with store.write() as conn:
        digest = await conn.scalar(
            select(user_tokens.c.token_hash).where(user_tokens.c.id == token_id)
        )
        if digest is None:
            raise NotFound(f"no token {token_id}")
        await conn.execute(
            update(user_tokens)
            .where(user_tokens.c.id == token_id, user_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return str(digest)


# ------------------------------------------------------------------- sessions
async def create_session(
    store: Store, user_id: int, session_hash: str, now: datetime, expires_at: datetime
) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(user_sessions).values(
                user_id=user_id, session_hash=session_hash, created_at=now, expires_at=expires_at
            )
        )


async def find_session(store: Store, session_hash: str) -> SessionRecord | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(user_sessions).where(user_sessions.c.session_hash == session_hash)
            )
        ).one_or_none()
    if row is None:
        return None
    return SessionRecord(row.id, row.user_id, row.expires_at, row.revoked_at)


async def revoke_session(store: Store, session_hash: str, now: datetime) -> None:
    async with store.write() as conn:
        await conn.execute(
            update(user_sessions)
            .where(
                user_sessions.c.session_hash == session_hash, user_sessions.c.revoked_at.is_(None)
            )
            .values(revoked_at=now)
        )


async def forget_sessions(store: Store, before: datetime) -> None:
    async with store.write() as conn:
        await conn.execute(delete(user_sessions).where(user_sessions.c.expires_at < before))


# --------------------------------------------------------------- agent tokens
def _agent_token(row: Row[Any]) -> AgentTokenRecord:
    return AgentTokenRecord(
        id=row.id,
        name=row.name,
        pool=row.pool,
        agent_name=row.agent_name,
        one_time=bool(row.one_time),
        used_at=row.used_at,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def create_agent_token(
    store: Store,
    *,
    name: str,
    token_hash: str,
    now: datetime,
    pool: str | None = None,
    agent_name: str | None = None,
    one_time: bool = False,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> AgentTokenRecord:
    async with store.write() as conn:
        token_id = await conn.scalar(
            insert(agent_tokens)
            .values(
                name=name,
                token_hash=token_hash,
                pool=pool,
                agent_name=agent_name,
                one_time=one_time,
                created_by=created_by,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(agent_tokens.c.id)
        )
        row = (await conn.execute(select(agent_tokens).where(agent_tokens.c.id == token_id))).one()
    return _agent_token(row)


async def find_agent_token(store: Store, token_hash: str) -> AgentTokenRecord | None:
    async with store.read() as conn:
        row = (
            await conn.execute(select(agent_tokens).where(agent_tokens.c.token_hash == token_hash))
        ).one_or_none()
    return None if row is None else _agent_token(row)


async def list_agent_tokens(store: Store) -> list[AgentTokenRecord]:
    async with store.read() as conn:
        rows = (await conn.execute(select(agent_tokens).order_by(agent_tokens.c.id))).all()
    return [_agent_token(r) for r in rows]


async def revoke_agent_token(store: Store, token_id: int, now: datetime) -> str:
    async with store.write() as conn:
        digest = await conn.scalar(
            select(agent_tokens.c.token_hash).where(agent_tokens.c.id == token_id)
        )
        if digest is None:
            raise NotFound(f"no agent token {token_id}")
        await conn.execute(
            update(agent_tokens)
            .where(agent_tokens.c.id == token_id, agent_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return str(digest)


async def bind_agent(
    store: Store, token: AgentTokenRecord, agent_name: str, now: datetime
) -> str | None:
    """Check that ``token`` may register ``agent_name``; returns a refusal reason or None.

    A name already bound to another usable token stays with it (a pool token must not
    take over another agent's identity); a one-time token registers one agent only.

    Only a one-time token is written here (claimed); for the others this is a read, and
    takes no turn at SQLite's single writer (2,000 agents registering at once)."""
    async with store.write() if token.one_time else store.read() as conn:
        agent_id = await conn.scalar(select(agents.c.id).where(agents.c.name == agent_name))
        if agent_id is not None:
            other = (
                await conn.execute(
                    select(agent_tokens)
                    .join(agent_bindings, agent_bindings.c.token_id == agent_tokens.c.id)
                    .where(agent_bindings.c.agent_id == agent_id)
                )
            ).one_or_none()
            if other is not None and other.id != token.id and _agent_token(other).usable(now):
                return f"agent {agent_name!r} is enrolled with another token"
        if token.one_time and token.used_at is not None:
            first = await conn.scalar(
                select(agent_bindings.c.agent_id).where(agent_bindings.c.token_id == token.id)
            )
            if first is None or first != agent_id:
                return "this one-time enrollment token was used already"
        if token.one_time and token.used_at is None:
            claimed = await conn.execute(
                update(agent_tokens)
                .where(agent_tokens.c.id == token.id, agent_tokens.c.used_at.is_(None))
                .values(used_at=now)
            )
            if claimed.rowcount == 0:
                return "this one-time enrollment token was used already"
    return None


async def record_binding(store: Store, agent_id: int, token_id: int, now: datetime) -> None:
    async with store.write() as conn:
        await conn.execute(delete(agent_bindings).where(agent_bindings.c.agent_id == agent_id))
        await conn.execute(
            insert(agent_bindings).values(agent_id=agent_id, token_id=token_id, bound_at=now)
        )


async def agents_of_token(store: Store, token_id: int) -> set[int]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(agent_bindings.c.agent_id).where(agent_bindings.c.token_id == token_id)
            )
        ).all()
    return {int(r.agent_id) for r in rows}


async def is_bound(store: Store, agent_id: int, token_id: int) -> bool:
    """Is ``agent_id`` enrolled with the token ``token_id``? (One row, by primary key.)"""
    async with store.read() as conn:
        value = await conn.scalar(
            select(agent_bindings.c.agent_id).where(
                agent_bindings.c.agent_id == agent_id, agent_bindings.c.token_id == token_id
            )
        )
    return value is not None


async def agent_exists(store: Store, agent_id: int) -> bool:
    async with store.read() as conn:
        return (await conn.scalar(select(agents.c.id).where(agents.c.id == agent_id))) is not None


async def agent_of_assignment(store: Store, assignment_id: str) -> int | None:
    """The agent a build was assigned to (None: no such assignment or unassigned)."""
    async with store.read() as conn:
        value = await conn.scalar(
            select(builds.c.agent_id).where(builds.c.assignment_id == assignment_id)
        )
    return None if value is None else int(value)


async def job_of_build(store: Store, build_id: int) -> str | None:
    from conveyor.store.schema import jobs

    async with store.read() as conn:
        value = await conn.scalar(
            select(jobs.c.name)
            .select_from(builds.join(jobs, jobs.c.id == builds.c.job_id))
            .where(builds.c.id == build_id)
        )
    return None if value is None else str(value)


# ---------------------------------------------------------------------- audit
async def insert_audit(
    store: Store,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source: str,
    security: bool,
    detail: dict[str, Any] | None,
) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(audit_events).values(
                at=at,
                actor=actor[:200],
                action=action[:200],
                target=target[:1000],
                outcome=outcome[:50],
                source=source[:200],
                security=security,
                detail=detail,
            )
        )


async def list_audit(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    security_only: bool = False,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Newest first; ``before_id`` is the paging cursor (the last id of the previous page)."""
    conditions: list[Any] = []
    if actor is not None:
        conditions.append(audit_events.c.actor == actor)
    if action is not None:
        conditions.append(
            or_(audit_events.c.action == action, audit_events.c.action.startswith(action + "."))
        )
    if since is not None:
        conditions.append(audit_events.c.at >= since)
    if security_only:
        conditions.append(audit_events.c.security.is_(True))
    if before_id is not None:
        conditions.append(audit_events.c.id < before_id)
    query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
    if conditions:
        query = query.where(and_(*conditions))
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [
        AuditRecord(
            id=r.id,
            at=r.at,
            actor=r.actor,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            source=r.source,
            security=bool(r.security),
            detail=r.detail,
        )
        for r in rows
    ]
