"""The heartbeat fast path (conveyor.api.fast_heartbeat) answers exactly what the
FastAPI route answers, with the same gate and side effects, and is measured and
tagged like every request. Each case goes to the real app twice: with the fast path
(the default) and without it (``create_app(fast_heartbeats=False)``, the route).
In process, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor.api import agent_protocol
from conveyor.api.app import create_app
from conveyor.api.fast_heartbeat import EMPTY_ANSWER
from conveyor.runtime import Runtime
from conveyor.security.agents import issue_enrollment_token
from tests.api.conftest import dispatch_once
from tests.api.test_api import assert_problem, create_job, trigger
from tests.auth_helpers import user_token
from tests.conftest import FakeClock

HEARTBEAT_ROUTE = "/agent/v1/agents/{agent_id}/heartbeat"
#: Headers whose value differs between two answers by nature.
VARYING = {"x-request-id"}


@pytest.fixture
def route_app(runtime: Runtime) -> FastAPI:
    return create_app(runtime, run_loops=False, fast_heartbeats=False)


@pytest.fixture
async def fleet(runtime: Runtime) -> dict[str, Any]:
    """Agent ``a`` enrolled with token ``a``, agent ``b`` with token ``b``."""
    tokens = {
        name: await issue_enrollment_token(runtime.store, agent_name=name) for name in ("a", "b")
    }
    app = create_app(runtime, run_loops=False)
    ids = {}
    for name, token in tokens.items():
        async with _client(app, token) as c:
            r = await c.post("/agent/v1/register", json={"name": name, "executors": 1})
            assert r.status_code == 200, r.text
            ids[name] = r.json()["agent_id"]
    return {"tokens": tokens, "ids": ids}


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Agent ids of the heartbeats that reached the FastAPI route."""
    calls: list[int] = []
    real = agent_protocol.record_heartbeat

    async def counted(runtime: Any, agent_id: int, body: Any) -> list[str]:
        calls.append(agent_id)
        return await real(runtime, agent_id, body)

    monkeypatch.setattr(agent_protocol, "record_heartbeat", counted)
    return calls


def _client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test", headers=headers
    )


async def _both(
    app: FastAPI, route_app: FastAPI, token: str | None, path: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    answers = []
    for target in (app, route_app):
        async with _client(target, token) as c:
            answers.append(await c.post(path, **kwargs))
    return answers[0], answers[1]


def _same(fast: httpx.Response, route: httpx.Response) -> None:
    assert fast.status_code == route.status_code, (fast.text, route.text)
    assert fast.content == route.content
    assert [(k, v) for k, v in fast.headers.multi_items() if k not in VARYING] == [
        (k, v) for k, v in route.headers.multi_items() if k not in VARYING
    ]


Case = Callable[[dict[str, Any]], tuple[str | None, str, dict[str, Any]]]

CASES: dict[str, Case] = {
    "ok": lambda f: (f["tokens"]["a"], f["ids"]["a"], {"json": {}}),
    "ok with metrics": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"json": {"cpu_percent": 12.6, "memory_percent": 40, "metrics": {"disk": 3}}},
    ),
    "abort unknown assignment": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"json": {"running": ["gone", "élan"]}},
    ),
    "no token": lambda f: (None, f["ids"]["a"], {"json": {}}),
    "invalid token": lambda f: ("cva_not-a-real-token", f["ids"]["a"], {"json": {}}),
    "malformed authorization": lambda f: (
        None,
        f["ids"]["a"],
        {"json": {}, "headers": {"Authorization": "Bearer"}},
    ),
    "another agent's token": lambda f: (f["tokens"]["b"], f["ids"]["a"], {"json": {}}),
    "user token": lambda f: (f["user"], f["ids"]["a"], {"json": {}}),
    "unknown agent": lambda f: (f["tokens"]["a"], 999_999, {"json": {}}),
    "agent id beyond 64 bits": lambda f: (f["tokens"]["a"], 2**70, {"json": {}}),
    "malformed json": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"content": b'{"running": [', "headers": {"Content-Type": "application/json"}},
    ),
    "malformed json, no token": lambda f: (
        None,
        f["ids"]["a"],
        {"content": b"{nope", "headers": {"Content-Type": "application/json"}},
    ),
    "wrong field types": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"json": {"running": "x", "cpu_percent": "lots"}},
    ),
    "wrong field types, no token": lambda f: (None, f["ids"]["a"], {"json": {"running": 3}}),
    "not an object": lambda f: (f["tokens"]["a"], f["ids"]["a"], {"json": [1, 2]}),
    "empty body": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"content": b"", "headers": {"Content-Type": "application/json"}},
    ),
    "no content type": lambda f: (f["tokens"]["a"], f["ids"]["a"], {"content": b"{}"}),
    "text content type": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"content": b"{}", "headers": {"Content-Type": "text/plain"}},
    ),
    "json with charset": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"content": b"{}", "headers": {"Content-Type": "application/json; charset=utf-8"}},
    ),
    "oversized body": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {"json": {"running": ["x" * 100] * 20_000}},
    ),
    "oversized body, chunked": lambda f: (
        f["tokens"]["a"],
        f["ids"]["a"],
        {
            "content": _chunks([b'{"running": [', b'"xxxxxxxxxx",' * 200_000, b'"y"]}']),
            "headers": {"Content-Type": "application/json"},
        },
    ),
}


def _chunks(parts: list[bytes]) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return gen


@pytest.mark.parametrize("case", list(CASES))
async def test_the_fast_path_answers_as_the_route_does(
    case: str,
    app: FastAPI,
    route_app: FastAPI,
    runtime: Runtime,
    fleet: dict[str, Any],
    route_calls: list[int],
) -> None:
    runtime.settings.max_request_body_bytes = 1_000_000
    fleet["user"] = await user_token(runtime.store, "viewer")
    token, agent_id, kwargs = CASES[case](fleet)
    if callable(kwargs.get("content")):  # a stream is read once: one per request
        fast, route = await _both_streams(app, route_app, token, agent_id, kwargs)
    else:
        fast, route = await _both(
            app, route_app, token, f"/agent/v1/agents/{agent_id}/heartbeat", **kwargs
        )
    _same(fast, route)
    if fast.status_code == 200:
        assert route_calls == [agent_id]  # the route answered only for route_app


async def _both_streams(
    app: FastAPI, route_app: FastAPI, token: str | None, agent_id: int, kwargs: dict[str, Any]
) -> tuple[httpx.Response, httpx.Response]:
    answers = []
    for target in (app, route_app):
        async with _client(target, token) as c:
            answers.append(
                await c.post(
                    f"/agent/v1/agents/{agent_id}/heartbeat",
                    content=kwargs["content"](),
                    headers=kwargs["headers"],
                )
            )
    return answers[0], answers[1]


async def test_each_refusal_is_the_documented_problem(
    app: FastAPI, runtime: Runtime, fleet: dict[str, Any], route_calls: list[int]
) -> None:
    a, tokens = fleet["ids"]["a"], fleet["tokens"]
    path = f"/agent/v1/agents/{a}/heartbeat"
    async with _client(app) as c:
        r = await c.post(path, json={})
        assert_problem(r, 401, "missing bearer token")
        assert r.headers["www-authenticate"] == "Bearer"
    async with _client(app, "cva_forged") as c:
        assert_problem(await c.post(path, json={}), 401, "invalid, expired or revoked")
    async with _client(app, tokens["b"]) as c:
        assert_problem(await c.post(path, json={}), 403, f"not enrolled as agent {a}")
    async with _client(app, await user_token(runtime.store, "viewer")) as c:
        assert_problem(await c.post(path, json={}), 403, "needs an agent token")
    async with _client(app, tokens["a"]) as c:
        r = await c.post("/agent/v1/agents/424242/heartbeat", json={})
        assert_problem(r, 404, "agent 424242 not found")  # the agent registers again
        r = await c.post(path, json={"cpu_percent": "lots"})
        assert_problem(r, 400, "cpu_percent")
        r = await c.post(path, content=b"{", headers={"Content-Type": "application/json"})
        assert_problem(r, 400, "not valid JSON")
        runtime.settings.max_request_body_bytes = 1000
        r = await c.post(path, json={"running": ["x" * 2000]})
        assert_problem(r, 413, "over the limit")
    assert route_calls == []  # none of these reached the route's handler


async def test_side_effects_are_the_routes(
    app: FastAPI,
    runtime: Runtime,
    client: httpx.AsyncClient,
    clock: FakeClock,
    fleet: dict[str, Any],
    route_calls: list[int],
) -> None:
    a = fleet["ids"]["a"]
    await create_job(client)
    clock.advance(3600)
    await runtime.store.reap_agents(clock(), None, clock())
    assert not (await runtime.store.get_agent(a)).online
    await trigger(client, "hello")
    assert await dispatch_once(runtime) == 0
    waiter = runtime.wakeups.waiter("dispatch")
    async with _client(app, fleet["tokens"]["a"]) as c:
        r = await c.post(
            f"/agent/v1/agents/{a}/heartbeat",
            json={"running": ["stale"], "cpu_percent": 12.6, "metrics": {"load": 1}},
        )
        assert r.status_code == 200
        assert r.json() == {"assignments": [], "cancel": [], "abort": ["stale"]}
        assert waiter.is_set()  # came back: the dispatcher is woken
        agent = await runtime.store.get_agent(a)
        assert agent.online and agent.last_seen_at == clock() and agent.cpu_percent == 13
        assert await dispatch_once(runtime) == 1
        # The common answer is the pre-built one.
        r = await c.post(f"/agent/v1/agents/{a}/heartbeat", json={})
        assert r.content == EMPTY_ANSWER
        assert r.headers["content-type"] == "application/json"
    assert route_calls == []


async def test_measured_and_tagged_like_every_request(
    app: FastAPI, runtime: Runtime, fleet: dict[str, Any], route_calls: list[int]
) -> None:
    a, token = fleet["ids"]["a"], fleet["tokens"]["a"]

    def count(status: str) -> float:
        value = runtime.metrics.registry.get_sample_value(
            "conveyor_http_request_duration_seconds_count",
            {"method": "POST", "route": HEARTBEAT_ROUTE, "status": status},
        )
        return value or 0.0

    before_ok, before_denied = count("200"), count("401")
    async with _client(app, token) as c:
        r = await c.post(
            f"/agent/v1/agents/{a}/heartbeat", json={}, headers={"X-Request-ID": "beat-1"}
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "beat-1"
        r = await c.post(f"/agent/v1/agents/{a}/heartbeat", json={})
        assert len(r.headers["x-request-id"]) == 32  # made up when not sent
        # The other middlewares' headers too.
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "x-jenkins" in r.headers
    async with _client(app) as c:
        r = await c.post(f"/agent/v1/agents/{a}/heartbeat", json={})
        assert r.status_code == 401 and r.headers["x-request-id"]
    assert count("200") == before_ok + 2
    assert count("401") == before_denied + 1
    assert route_calls == []
