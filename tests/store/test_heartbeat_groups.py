"""Heartbeats written in groups (conveyor.store.heartbeats): the same outcome as one
``touch_agent`` per heartbeat, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from conveyor.errors import NotFound
from conveyor.store import Store
from conveyor.store.heartbeats import Beat, HeartbeatGroups, touch_agents
from conveyor.store.schema import agents
from tests.conftest import FakeClock


async def _offline(store: Store, agent_id: int) -> None:
    async with store.write() as conn:
        await conn.execute(update(agents).where(agents.c.id == agent_id).values(online=False))


async def test_one_transaction_records_every_heartbeat(store: Store, clock: FakeClock) -> None:
    a = await store.register_agent("hb-a", ["linux"], 1, "1", clock())
    b = await store.register_agent("hb-b", ["linux"], 1, "1", clock())
    await _offline(store, b.id)
    later = clock() + timedelta(seconds=30)
    result = await touch_agents(
        store,
        [
            Beat(a.id, later, 10, 20, {"load1": 0.5}),
            Beat(b.id, later, None, None, None),
            Beat(999_999, later, None, None, None),
        ],
    )
    assert result == {a.id: False, b.id: True, 999_999: None}
    seen_a = await store.get_agent(a.id)
    seen_b = await store.get_agent(b.id)
    assert seen_a.last_seen_at == later and seen_b.last_seen_at == later
    assert seen_b.online
    assert seen_a.cpu_percent == 10 and seen_a.memory_percent == 20
    assert (await store.agent_system_figures())["hb-a"] == {"load1": 0.5}


async def test_concurrent_heartbeats_each_get_their_answer(store: Store, clock: FakeClock) -> None:
    ids = [(await store.register_agent(f"hb-{i}", [], 1, "1", clock())).id for i in range(30)]
    await _offline(store, ids[0])
    groups = HeartbeatGroups(store)
    later = clock() + timedelta(seconds=5)
    answers = await asyncio.gather(*(groups.touch(agent_id, later, 1, 2, {}) for agent_id in ids))
    assert answers == [True] + [False] * 29  # only the offline one came back
    for agent_id in ids:
        assert (await store.get_agent(agent_id)).last_seen_at == later
    with pytest.raises(NotFound):
        await groups.touch(123_456, later)
    # The writer goes on after a refused heartbeat.
    assert await groups.touch(ids[1], later + timedelta(seconds=1)) is False


async def test_heartbeats_arriving_under_load_share_one_transaction(
    store: Store, clock: FakeClock
) -> None:
    ids = [(await store.register_agent(f"hb-l{i}", [], 1, "1", clock())).id for i in range(6)]
    groups = HeartbeatGroups(store, linger=0.5)
    later = clock() + timedelta(seconds=5)
    # After a quiet spell a heartbeat is written at once, in its own transaction.
    assert await groups.touch(ids[0], later) is False
    assert groups.writes == 1
    # Heartbeats that arrive one after the other right after it wait for the rest of the
    # linger and go together: one more transaction, every one answered and recorded.
    waves = []
    for agent_id in ids[1:]:
        waves.append(asyncio.create_task(groups.touch(agent_id, later, 3, 4, {})))
        await asyncio.sleep(0.02)
    assert await asyncio.gather(*waves) == [False] * 5
    assert groups.writes == 2
    for agent_id in ids:
        assert (await store.get_agent(agent_id)).last_seen_at == later
