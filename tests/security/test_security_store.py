"""The security store functions, the same on SQLite and PostgreSQL (contract style)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.core.lockout import LoginState
from conveyor.core.permissions import Grant, Role
from conveyor.errors import Conflict, NotFound
from conveyor.store import Store
from conveyor.store import security as db
from tests.conftest import FakeClock


async def test_users_grants_and_login_state(store: Store, clock: FakeClock) -> None:
    user = await db.create_user(store, "ann", "hash", clock(), Role.DEVELOPER)
    with pytest.raises(Conflict):
        await db.create_user(store, "ann", None, clock())
    await db.add_grant(store, "ann", Role.VIEWER, "team-a/*", clock())
    await db.add_grant(store, "ann", Role.VIEWER, "team-a/*", clock())  # idempotent
    assert await db.grants_of(store, user.id) == [
        Grant(Role.DEVELOPER, "*"),
        Grant(Role.VIEWER, "team-a/*"),
    ]
    assert await db.remove_grant(store, "ann", Role.VIEWER, "team-a/*")
    assert not await db.remove_grant(store, "ann", Role.VIEWER, "team-a/*")
    with pytest.raises(NotFound):
        await db.add_grant(store, "nobody", Role.VIEWER, "*", clock())
    locked = LoginState(0, clock() + timedelta(seconds=60))
    await db.save_login_state(store, user.id, locked)
    again = await db.get_user(store, "ann")
    assert again is not None and again.login == locked
    await db.set_password(store, "ann", "new-hash")  # also unlocks
    again = await db.get_user(store, "ann")
    assert again is not None and again.password_hash == "new-hash"
    assert again.login == LoginState(0, None)
    assert [u.name for u in await db.list_users(store)] == ["ann"]


async def test_tokens_sessions_and_disable(store: Store, clock: FakeClock) -> None:
    user = await db.create_user(store, "ben", None, clock())
    token = await db.create_user_token(store, user.id, "ci", "d" * 64, "trigger", clock())
    found = await db.find_user_token(store, "d" * 64)
    assert found is not None and (found.user, found.scope) == ("ben", "trigger")
    assert await db.revoke_user_token(store, token.id, clock()) == "d" * 64
    found = await db.find_user_token(store, "d" * 64)
    assert found is not None and found.revoked_at == clock()
    with pytest.raises(NotFound):
        await db.revoke_user_token(store, 999, clock())
    await db.create_session(store, user.id, "s" * 64, clock(), clock() + timedelta(hours=1))
    await db.set_disabled(store, "ben", True, clock())
    session = await db.find_session(store, "s" * 64)
    assert session is not None and session.revoked_at == clock()  # disabling ends sessions


async def test_agent_token_binding_and_audit_paging(store: Store, clock: FakeClock) -> None:
    once = await db.create_agent_token(
        store, name="eph", token_hash="a" * 64, now=clock(), pool="p", one_time=True
    )
    assert await db.bind_agent(store, once, "eph-1", clock()) is None
    used = await db.find_agent_token(store, "a" * 64)
    assert used is not None and used.used_at == clock()
    assert "used already" in (await db.bind_agent(store, used, "eph-2", clock()) or "")
    agent = await store.register_agent("eph-1", [], 1, "t", clock())
    await db.record_binding(store, agent.id, once.id, clock())
    assert await db.agents_of_token(store, once.id) == {agent.id}
    assert await db.bind_agent(store, used, "eph-1", clock()) is None  # same agent again
    other = await db.create_agent_token(store, name="pool", token_hash="b" * 64, now=clock())
    assert "another token" in (await db.bind_agent(store, other, "eph-1", clock()) or "")
    await db.revoke_agent_token(store, once.id, clock())
    assert await db.bind_agent(store, other, "eph-1", clock()) is None  # old token revoked

    for i in range(5):
        await db.insert_audit(
            store, at=clock() + timedelta(seconds=i), actor="x" if i % 2 else "y",
            action="login.failed" if i < 3 else "grant.added", target="t", outcome="denied",
            source="127.0.0.1", security=i != 4, detail={"i": i},
        )  # fmt: skip
    first = await db.list_audit(store, limit=2)
    assert [e.detail for e in first] == [{"i": 4}, {"i": 3}]
    rest = await db.list_audit(store, limit=10, before_id=first[-1].id)
    assert [e.detail for e in rest] == [{"i": 2}, {"i": 1}, {"i": 0}]
    assert len(await db.list_audit(store, actor="x")) == 2
    assert len(await db.list_audit(store, action="login")) == 3
    assert len(await db.list_audit(store, security_only=True)) == 4
    assert len(await db.list_audit(store, since=clock() + timedelta(seconds=3))) == 2
