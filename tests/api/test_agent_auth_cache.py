"""Agent tokens are looked up once per cache period, however many agents share one:
when a pool token's cache entry expires, the requests that miss it all wait for one
load (thousands of agents heartbeating with one pool token used to reload it each,
every five seconds, and exhaust the database pool). In process, on both stores."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from conveyor.runtime import Runtime
from conveyor.security.auth import auth_cache
from conveyor.store import security as db
from tests.api.test_api import register


async def test_concurrent_misses_share_one_token_load(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [await register(client, f"herd-{i}") for i in range(20)]
    loads: list[str] = []
    real = db.find_agent_token

    async def counted(store: Any, token_hash: str) -> Any:
        loads.append(token_hash)
        await asyncio.sleep(0.05)  # a slow store: every request arrives during the load
        return await real(store, token_hash)

    monkeypatch.setattr(db, "find_agent_token", counted)
    auth_cache(runtime).clear()  # the entry expired

    async def beat(agent_id: int) -> int:
        r = await client.post(
            f"/agent/v1/agents/{agent_id}/heartbeat",
            json={"running": []},
            headers={"X-Agent-Id": str(agent_id)},
        )
        return r.status_code

    assert await asyncio.gather(*(beat(i) for i in ids * 3)) == [200] * 60
    assert len(loads) == 1
    # Cached afterwards: no more loads.
    assert await beat(ids[0]) == 200 and len(loads) == 1


async def test_a_load_that_began_before_a_revocation_is_not_cached(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await register(client, "late")
    cache = auth_cache(runtime)
    release = asyncio.Event()
    real = db.find_agent_token

    async def slow(store: Any, token_hash: str) -> Any:
        record = await real(store, token_hash)
        await release.wait()
        return record

    monkeypatch.setattr(db, "find_agent_token", slow)
    cache.clear()
    pending = asyncio.create_task(
        client.post(
            f"/agent/v1/agents/{agent}/heartbeat",
            json={"running": []},
            headers={"X-Agent-Id": str(agent)},
        )
    )
    while not cache.loading:
        await asyncio.sleep(0.01)
    cache.clear()  # what a revocation does, while the load is under way
    release.set()
    assert (await pending).status_code == 200  # that request was already past the check
    assert not cache.loading
    assert all(not key.startswith("a:") for key in cache._entries)  # nothing stale kept


async def test_an_agent_enrolled_on_another_controller_costs_one_binding_check(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await register(client, "here")
    cache = auth_cache(runtime)
    [key] = [k for k in cache._entries if k.startswith("a:")]
    cached = cache.get(key)
    assert cached is not None and cached.token_id is not None
    # Another controller registers an agent with the same pool token: this controller's
    # cached principal does not know it yet.
    other = await runtime.store.register_agent("there", [], 1, "1", runtime.clock())
    await db.record_binding(runtime.store, other.id, cached.token_id, runtime.clock())
    loads: list[str] = []
    real = db.agents_of_token

    async def counted(store: Any, token_id: int) -> Any:
        loads.append("agents_of_token")
        return await real(store, token_id)

    monkeypatch.setattr(db, "agents_of_token", counted)
    for agent_id in (other.id, other.id, first):
        r = await client.post(
            f"/agent/v1/agents/{agent_id}/heartbeat",
            json={"running": []},
            headers={"X-Agent-Id": str(agent_id)},
        )
        assert r.status_code == 200, r.text
    assert loads == []  # no reload of all the token's agents
    grown = cache.get(key)
    assert grown is not None and {first, other.id} <= grown.agent_ids
    # An agent that is not enrolled with this token is still refused.
    stranger = await runtime.store.register_agent("stranger", [], 1, "1", runtime.clock())
    r = await client.post(
        f"/agent/v1/agents/{stranger.id}/heartbeat",
        json={"running": []},
        headers={"X-Agent-Id": str(stranger.id)},
    )
    assert r.status_code == 403
