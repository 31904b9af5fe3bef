"""The agent protocol's fast paths, in process, on both stores: a poll that starts
its assignments (``"start": true``) and ``POST …/events`` (several step results and
the finish in one request). The one-request-per-thing endpoints keep working."""

from __future__ import annotations

from typing import Any

import httpx

from conveyor.runtime import Runtime
from tests.api.conftest import dispatch_once
from tests.api.test_api import (
    EMPTY_INBOX,
    assert_problem,
    create_job,
    poll,
    register,
    spec,
    trigger,
)
from tests.conftest import FakeClock

TWO_STEPS = """\
name: two
stages:
  - {name: build, steps: [{sh: make}, {sh: make test}]}
"""


async def build_of(client: httpx.AsyncClient, build_id: int) -> dict[str, Any]:
    r = await client.get(f"/api/v1/builds/{build_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def assigned(
    client: httpx.AsyncClient, runtime: Runtime, job: str = "hello"
) -> tuple[int, int]:
    """A build of ``job`` assigned to a new agent: (agent id, build id)."""
    build_id = (await trigger(client, job)).json()["id"]
    agent = await register(client, "a1")
    assert await dispatch_once(runtime) == 1
    return agent, build_id


async def test_registration_tells_the_features(client: httpx.AsyncClient) -> None:
    r = await client.post("/agent/v1/register", json={"name": "a1", "executors": 1})
    assert set(r.json()["features"]) >= {"poll_start", "events"}


async def test_a_poll_that_starts_answers_what_start_answers(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await create_job(client)
    agent, build_id = await assigned(client, runtime)
    headers = {"X-Agent-Id": str(agent)}
    clock.advance(1)
    [item] = (await poll(client, agent, start=True))["assignments"]
    aid = item["assignment_id"]
    assert item["build_id"] == build_id and item["job"] == "hello" and item["number"] == 1
    assert item["parameters"] == {} and item["plan"]["stages"]
    build = await build_of(client, build_id)
    assert build["state"] == "running" and build["started_at"] is not None

    # The answer was lost: the agent asks again without it in `running` and gets it again.
    [again] = (await poll(client, agent, start=True))["assignments"]
    assert again == item
    # Once the agent runs it, it is not offered again; nor to a poll that does not start.
    assert await poll(client, agent, start=True, running=[aid]) == EMPTY_INBOX
    assert await poll(client, agent) == EMPTY_INBOX
    # /start stays (older agents, an assignment queued on the agent): idempotent.
    r = await client.post(f"/agent/v1/assignments/{aid}/start", headers=headers)
    assert r.status_code == 200 and r.json()["plan"] == item["plan"]
    assert (await build_of(client, build_id))["started_at"] == build["started_at"]
    # Another agent never gets it.
    other = await register(client, "a2")
    assert await poll(client, other, start=True) == EMPTY_INBOX


async def test_a_poll_without_start_is_unchanged(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    agent, build_id = await assigned(client, runtime)
    [item] = (await poll(client, agent))["assignments"]
    assert item == {"assignment_id": item["assignment_id"], "build_id": build_id}
    assert (await build_of(client, build_id))["state"] == "assigned"
    # A later poll that starts gets it started, with its plan.
    [started] = (await poll(client, agent, start=True))["assignments"]
    assert started["assignment_id"] == item["assignment_id"] and started["plan"]
    assert (await build_of(client, build_id))["state"] == "running"


async def test_a_poll_writes_nothing_and_refuses_an_unknown_agent(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    agent = await register(client, "a1")
    seen = (await runtime.store.get_agent(agent)).last_seen_at
    clock.advance(5)
    assert await poll(client, agent, start=True) == EMPTY_INBOX
    assert (await runtime.store.get_agent(agent)).last_seen_at == seen  # heartbeats do that
    r = await client.post(f"/agent/v1/agents/{agent}/heartbeat", json={})
    assert r.status_code == 200
    assert (await runtime.store.get_agent(agent)).last_seen_at == clock()
    r = await client.post("/agent/v1/agents/999/poll", json={"wait": 0, "start": True})
    assert_problem(r, 404, "agent 999 not found")


async def test_an_agent_back_from_offline_is_dispatched_to_again(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await create_job(client)
    agent = await register(client, "a1")
    clock.advance(3600)
    assert await runtime.store.reap_agents(clock(), None, clock()) == []
    assert not (await runtime.store.get_agent(agent)).online
    build_id = (await trigger(client, "hello")).json()["id"]
    assert await dispatch_once(runtime) == 0
    # A poll alone does not bring it back; its next heartbeat does.
    assert await poll(client, agent, start=True) == EMPTY_INBOX
    assert not (await runtime.store.get_agent(agent)).online
    waiter = runtime.wakeups.waiter("dispatch")
    r = await client.post(f"/agent/v1/agents/{agent}/heartbeat", json={})
    assert r.status_code == 200 and waiter.is_set()
    assert (await runtime.store.get_agent(agent)).online
    assert await dispatch_once(runtime) == 1
    [item] = (await poll(client, agent, start=True))["assignments"]
    assert item["build_id"] == build_id


async def test_a_cancelled_assignment_is_not_started_by_a_poll(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    agent, build_id = await assigned(client, runtime)
    r = await client.post(f"/api/v1/builds/{build_id}/cancel")
    assert r.json()["state"] == "cancelled"
    assert await poll(client, agent, start=True) == EMPTY_INBOX
    assert (await build_of(client, build_id))["state"] == "cancelled"


async def test_a_cancel_reaches_a_build_started_by_a_poll(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    agent, build_id = await assigned(client, runtime)
    [item] = (await poll(client, agent, start=True))["assignments"]
    aid = item["assignment_id"]
    await client.post(f"/api/v1/builds/{build_id}/cancel")
    assert (await poll(client, agent, start=True, running=[aid]))["cancel"] == [aid]
    assert await poll(client, agent, start=True, running=[aid], cancelling=[aid]) == EMPTY_INBOX
    events = [{"kind": "step", "key": "0.0", "state": "running", "attempt": 1}]
    headers = {"X-Agent-Id": str(agent)}
    r = await client.post(
        f"/agent/v1/assignments/{aid}/events", json={"events": events}, headers=headers
    )
    assert r.status_code == 200 and r.json() == {"cancel": True}
    events = [{"kind": "finish", "result": "cancelled"}]
    r = await client.post(
        f"/agent/v1/assignments/{aid}/events", json={"events": events}, headers=headers
    )
    assert r.status_code == 200 and r.json() == {"cancel": False}
    build = await build_of(client, build_id)
    assert build["state"] == "cancelled" and build["steps"][0]["state"] == "cancelled"


async def test_events_carry_steps_and_the_finish_in_one_request(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client, TWO_STEPS)
    agent, build_id = await assigned(client, runtime, "two")
    headers = {"X-Agent-Id": str(agent)}
    [item] = (await poll(client, agent, start=True))["assignments"]
    base = f"/agent/v1/assignments/{item['assignment_id']}"
    steps = [s["key"] for s in (await build_of(client, build_id))["steps"]]
    first = [
        {"kind": "step", "key": steps[0], "state": "running", "attempt": 1},
        {"kind": "step", "key": steps[0], "state": "succeeded", "exit_code": 0, "attempt": 1},
        {"kind": "step", "key": steps[1], "state": "running", "attempt": 1},
    ]
    r = await client.post(f"{base}/events", json={"events": first}, headers=headers)
    assert r.status_code == 200 and r.json() == {"cancel": False}
    build = await build_of(client, build_id)
    assert [s["state"] for s in build["steps"]] == ["succeeded", "running"]
    assert build["state"] == "running"

    last = [
        {"kind": "step", "key": steps[1], "state": "failed", "exit_code": 2, "attempt": 1},
        {"kind": "finish", "result": "failed"},
    ]
    for _ in range(2):  # a resent batch (its answer was lost) changes nothing
        r = await client.post(f"{base}/events", json={"events": last}, headers=headers)
        assert r.status_code == 200 and r.json() == {"cancel": False}
        build = await build_of(client, build_id)
        assert build["state"] == "failed" and build["finished_at"] is not None
        assert build["cause"] == "step 'sh: make test' in stage build failed with exit code 2"
        assert [s["state"] for s in build["steps"]] == ["succeeded", "failed"]
    # The first result stays, also through the single-event endpoint.
    r = await client.post(f"{base}/finish", json={"result": "succeeded"}, headers=headers)
    assert r.status_code == 200
    assert (await build_of(client, build_id))["state"] == "failed"
    assert (await client.get(f"/api/v1/agents/{agent}")).json()["busy"] == 0


async def test_bad_event_batches_are_refused_and_store_nothing(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client, spec())
    agent, build_id = await assigned(client, runtime)
    headers = {"X-Agent-Id": str(agent)}
    [item] = (await poll(client, agent, start=True))["assignments"]
    base = f"/agent/v1/assignments/{item['assignment_id']}"
    step = {"kind": "step", "key": "0.0", "state": "succeeded", "exit_code": 0, "attempt": 1}
    finish = {"kind": "finish", "result": "succeeded"}
    for body, fragment in [
        ({"events": []}, "events"),
        ({"events": [finish, step]}, "finish event must be the last one"),
        ({"events": [{**step, "state": "done"}]}, "state"),
        ({"events": [{"kind": "artifact", "path": "x"}]}, "events"),
        ({"events": [{"kind": "finish", "result": "queued"}]}, "result"),
    ]:
        r = await client.post(f"{base}/events", json=body, headers=headers)
        assert_problem(r, 400, fragment)
    assert_problem(await client.post(f"{base}/events", json={"events": [step]}), 400, "X-Agent-Id")
    other = {"X-Agent-Id": str(await register(client, "a2"))}
    r = await client.post(f"{base}/events", json={"events": [step, finish]}, headers=other)
    # Another agent may not touch this build (the gate refuses before the store looks).
    assert_problem(r, 403, "not assigned to this agent")
    r = await client.post(
        "/agent/v1/assignments/unknown/events", json={"events": [finish]}, headers=headers
    )
    assert_problem(r, 404, "assignment unknown not found")
    build = await build_of(client, build_id)
    assert build["state"] == "running" and [s["state"] for s in build["steps"]] == ["pending"]
