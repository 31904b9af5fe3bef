"""Agent enrollment tokens on the agent protocol (in-process, SQLite and PostgreSQL):
only agent tokens are accepted, a token acts only as the agent(s) it enrolled, an
agent acts only on builds assigned to it, revoking disconnects at once."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI

from conveyor.runtime import Runtime
from conveyor.security.agents import issue_enrollment_token
from tests.api.conftest import dispatch_once
from tests.api.test_api import assert_problem, create_job, trigger


def _agent(app: FastAPI, token: str, agent_id: int | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    if agent_id is not None:
        headers["X-Agent-Id"] = str(agent_id)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test", headers=headers
    )


async def _register(c: httpx.AsyncClient, name: str) -> httpx.Response:
    return await c.post("/agent/v1/register", json={"name": name, "executors": 1})


async def test_only_agent_tokens_reach_the_agent_protocol(app: FastAPI, runtime: Runtime) -> None:
    assert runtime.first_admin_token is not None
    async with _agent(app, runtime.first_admin_token) as admin:
        r = await _register(admin, "a1")
    assert_problem(r, 403, "the agent protocol needs an agent token")
    token = await issue_enrollment_token(runtime.store, pool="linux")
    async with _agent(app, token) as agent:
        assert (await _register(agent, "a1")).status_code == 200
        # ... and agent tokens reach nothing else.
        assert_problem(await agent.get("/api/v1/jobs"), 403, "agent protocol only")


async def test_named_one_time_and_pool_tokens(app: FastAPI, runtime: Runtime) -> None:
    named = await issue_enrollment_token(runtime.store, agent_name="build-01")
    async with _agent(app, named) as c:
        assert_problem(await _register(c, "build-02"), 403, "for agent 'build-01' only")
        assert (await _register(c, "build-01")).status_code == 200
    once = await issue_enrollment_token(runtime.store, pool="ephemeral", one_time=True)
    async with _agent(app, once) as c:
        assert (await _register(c, "eph-1")).status_code == 200
        # The same agent may register again (it does after a reap); no other agent may.
        assert (await _register(c, "eph-1")).status_code == 200
        assert_problem(await _register(c, "eph-2"), 403, "one-time")
    pool = await issue_enrollment_token(runtime.store, pool="linux")
    async with _agent(app, pool) as c:
        # A pool token cannot take over an agent enrolled with another token.
        assert_problem(await _register(c, "build-01"), 403, "enrolled with another token")
    expired = await issue_enrollment_token(
        runtime.store, pool="x", expires_at=runtime.clock() + timedelta(hours=1),
        now=runtime.clock() - timedelta(hours=2),
    )  # fmt: skip
    async with _agent(app, expired) as c:
        r = await _register(c, "late")
    assert r.status_code == 200  # not expired yet by the runtime's clock
    r = await httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test"
    ).post("/agent/v1/register", json={"name": "x", "executors": 1})
    assert r.status_code == 401


async def test_an_agent_acts_only_as_itself_and_on_its_own_builds(
    app: FastAPI, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    await create_job(client)
    await trigger(client, "hello")
    token_a = await issue_enrollment_token(runtime.store, agent_name="a")
    token_b = await issue_enrollment_token(runtime.store, agent_name="b")
    async with _agent(app, token_a) as a, _agent(app, token_b) as b:
        id_a = (await _register(a, "a")).json()["agent_id"]
        assert await dispatch_once(runtime) == 1  # to a, the only agent yet
        id_b = (await _register(b, "b")).json()["agent_id"]
        # b cannot heartbeat or poll as a.
        r = await b.post(f"/agent/v1/agents/{id_a}/heartbeat", json={})
        assert_problem(r, 403, f"not enrolled as agent {id_a}")
        r = await b.post(f"/agent/v1/agents/{id_a}/poll", json={"wait": 0})
        assert_problem(r, 403, f"not enrolled as agent {id_a}")
        inbox = (await a.post(f"/agent/v1/agents/{id_a}/poll", json={"wait": 0})).json()
        [assignment] = inbox["assignments"]
        aid = assignment["assignment_id"]
        # b cannot start, log to, or finish a's build — not even claiming to be a.
        for headers in ({"X-Agent-Id": str(id_b)}, {"X-Agent-Id": str(id_a)}):
            r = await b.post(f"/agent/v1/assignments/{aid}/start", headers=headers)
            assert r.status_code == 403, r.text
            r = await b.post(
                f"/agent/v1/assignments/{aid}/finish", json={"result": "failed"}, headers=headers
            )
            assert r.status_code == 403, r.text
        r = await a.post(f"/agent/v1/assignments/{aid}/start", headers={"X-Agent-Id": str(id_a)})
        assert r.status_code == 200, r.text
        denied = await runtime.store.get_build(assignment["build_id"])
        assert denied.state == "running"


async def test_revoking_an_agent_token_disconnects_at_once(
    app: FastAPI, runtime: Runtime, client: httpx.AsyncClient
) -> None:
    r = await client.post("/api/v1/agent-tokens", json={"agent_name": "gone"})
    assert r.status_code == 201
    created = r.json()
    async with _agent(app, created["token"]) as c:
        agent_id = (await _register(c, "gone")).json()["agent_id"]
        assert (await c.post(f"/agent/v1/agents/{agent_id}/heartbeat", json={})).status_code == 200
        assert (await client.delete(f"/api/v1/agent-tokens/{created['id']}")).status_code == 204
        r = await c.post(f"/agent/v1/agents/{agent_id}/heartbeat", json={})
        assert_problem(r, 401, "revoked")
    listed = {t["id"]: t for t in (await client.get("/api/v1/agent-tokens")).json()}
    assert listed[created["id"]]["revoked_at"] is not None
    assert "token" not in listed[created["id"]]
