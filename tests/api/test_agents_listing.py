"""GET /api/v1/agents, built from plain rows (conveyor.store.agent_rows), answers
exactly what the record-and-model path answered: same agents, order, fields, values
and bytes. In process, SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
from pydantic import TypeAdapter

from conveyor.api.schemas import AgentOut
from conveyor.runtime import Runtime
from conveyor.store.pools import set_agent_pool
from tests.api.conftest import dispatch_once
from tests.api.test_api import create_job, register, trigger
from tests.conftest import FakeClock


async def test_the_listing_is_the_models_answer(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await create_job(client)
    gone = await register(client, "zz-gone", "linux")
    clock.advance(3600)
    await runtime.store.reap_agents(clock(), None, clock())  # offline
    busy = await register(client, "b-busy", "linux", "x64")
    drained = await register(client, "a-drained")
    await client.post(f"/api/v1/agents/{drained}/drain")
    elastic = await register(client, "c-elastic", "gpu")
    await set_agent_pool(runtime.store, elastic, None, True)
    clock.advance(1.5)  # microseconds in the datetimes
    r = await client.post(
        f"/agent/v1/agents/{busy}/heartbeat", json={"cpu_percent": 42.4, "memory_percent": 7}
    )
    assert r.status_code == 200
    await trigger(client, "hello")
    assert await dispatch_once(runtime) == 1

    r = await client.get("/api/v1/agents")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    expected = [AgentOut.of(a) for a in await runtime.store.list_agents()]
    assert r.content == TypeAdapter(list[AgentOut]).dump_json(expected)
    listed = r.json()
    assert [a["name"] for a in listed] == ["a-drained", "b-busy", "c-elastic", "zz-gone"]
    by_name = {a["name"]: a for a in listed}
    assert by_name["a-drained"]["state"] == "draining"
    assert by_name["zz-gone"]["state"] == "offline" and by_name["zz-gone"]["id"] == gone
    assert by_name["c-elastic"]["ephemeral"] is True
    assert sum(a["busy"] for a in listed) == 1
    assert by_name["b-busy"]["cpu_percent"] == 42 and by_name["b-busy"]["labels"] == [
        "linux",
        "x64",
    ]
    assert listed[0]["last_seen_at"].endswith("Z")


async def test_an_empty_fleet(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/agents")
    assert r.status_code == 200 and r.json() == []
