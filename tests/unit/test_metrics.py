"""Prometheus metrics after a scripted sequence of builds, in process (SQLite, fake clock).

Builds are driven through the real API and agent protocol (httpx ASGITransport);
the loops are not running, so the test steps the lease, the dispatcher and the
metrics updater itself and reads exact values from the runtime's own registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from conveyor.api.app import create_app
from conveyor.errors import StoreUnavailable
from conveyor.metrics import ANY_AGENT, RESULTS, Metrics
from conveyor.runtime import Runtime
from conveyor.security.agents import issue_enrollment_token
from conveyor.settings import Settings
from tests.auth_helpers import SplitAuth
from tests.conftest import FakeClock, _truncate

LINUX_JOB = "name: app\nagent: linux\nstages:\n  - name: s\n    steps:\n      - echo: hi\n"
ANY_JOB = "name: anywhere\nstages:\n  - name: s\n    steps:\n      - echo: hi\n"


async def _runtime(
    tmp_path: Path, clock: FakeClock, url: str | None = None, **settings: Any
) -> Runtime:
    url = url or f"sqlite:///{tmp_path / 'conveyor.db'}"
    rt = Runtime.build(
        Settings(home=tmp_path / "home", database_url=url, controller_id="ctl-1", **settings),
        clock,
    )
    if rt.store.dialect == "postgresql":
        await _truncate(rt.store)  # prepare() creates the admin token only when none exist
    await rt.prepare()
    return rt


@pytest.fixture(params=["sqlite", "postgresql"])
async def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Runtime]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    rt = await _runtime(tmp_path, clock, url)
    try:
        yield rt
    finally:
        await rt.stop()


def _client(app: FastAPI, token: str | None) -> httpx.AsyncClient:
    runtime = app.state.runtime

    async def agent_token() -> str:
        return await issue_enrollment_token(runtime.store, pool="test")

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.test",
        auth=SplitAuth(token, None, agent_token),
    )


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(runtime, run_loops=False), runtime.first_admin_token) as c:
        yield c


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def samples(metrics: Metrics, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric family, keyed by its sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in metrics.registry.collect():
        if metric.name == family:
            for s in metric.samples:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def register(client: httpx.AsyncClient, name: str, labels: list[str], executors: int) -> int:
    body = {"name": name, "labels": labels, "executors": executors}
    return int((await ok(await client.post("/agent/v1/register", json=body)))["agent_id"])


async def trigger(client: httpx.AsyncClient, job: str) -> int:
    return int((await ok(await client.post(f"/api/v1/jobs/{job}/builds", json={}), 201))["id"])


async def poll_and_start(client: httpx.AsyncClient, agent: int) -> dict[int, str]:
    """Poll once; start every offered assignment. Returns build id -> assignment id."""
    inbox = await ok(await client.post(f"/agent/v1/agents/{agent}/poll", json={"wait": 0}))
    started: dict[int, str] = {}
    for item in inbox["assignments"]:
        aid = item["assignment_id"]
        r = await client.post(
            f"/agent/v1/assignments/{aid}/start", headers={"X-Agent-Id": str(agent)}
        )
        await ok(r)
        started[item["build_id"]] = aid
    return started


async def finish(client: httpx.AsyncClient, agent: int, assignment: str, result: str) -> None:
    r = await client.post(
        f"/agent/v1/assignments/{assignment}/finish",
        json={"result": result},
        headers={"X-Agent-Id": str(agent)},
    )
    await ok(r)


async def dispatch_once(runtime: Runtime) -> int:
    assert await runtime.lease.run_once()
    return await runtime.dispatcher.run_once()


async def test_metric_values_after_a_scripted_sequence_of_builds(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    m = runtime.metrics
    await ok(await client.post("/api/v1/jobs", json={"spec": LINUX_JOB}), 201)
    await ok(await client.post("/api/v1/jobs", json={"spec": ANY_JOB}), 201)
    a1 = await register(client, "a1", ["linux"], 2)
    a2 = await register(client, "a2", [], 1)

    app_builds = [await trigger(client, "app") for _ in range(3)]
    any_build = await trigger(client, "anywhere")
    # Triggering creates the job's counter series at 0 (so increase() sees the first end).
    for result in RESULTS:
        assert value(m, "conveyor_builds_total", job_name="app", result=result) == 0

    # Queue: 3 builds need "linux", 1 runs anywhere. Only the leader publishes it.
    await runtime.metrics_updater.run_once()
    assert samples(m, "conveyor_queue_length") == {}
    assert value(m, "conveyor_leader", controller="ctl-1") == 0
    assert await runtime.lease.run_once()
    await runtime.metrics_updater.run_once()
    assert samples(m, "conveyor_queue_length") == {
        (("label_expression", "linux"),): 3,
        (("label_expression", ANY_AGENT),): 1,
    }
    assert value(m, "conveyor_builds_running") == 0
    assert value(m, "conveyor_leader", controller="ctl-1") == 1
    assert value(m, "conveyor_lease_epoch") == runtime.lease.epoch

    # 10 s later: a1 takes two "linux" builds, a2 the "anywhere" one; one waits.
    clock.advance(10)
    assert await dispatch_once(runtime) == 3
    assert value(m, "conveyor_dispatch_latency_seconds_count") == 1
    assert value(m, "conveyor_queue_wait_seconds_count") == 3
    assert value(m, "conveyor_queue_wait_seconds_sum") == 30
    started = await poll_and_start(client, a1)
    assert sorted(started) == app_builds[:2]
    started_a2 = await poll_and_start(client, a2)
    assert list(started_a2) == [any_build]
    await runtime.metrics_updater.run_once()
    assert samples(m, "conveyor_queue_length") == {(("label_expression", "linux"),): 1}
    assert value(m, "conveyor_builds_running") == 3
    assert value(m, "conveyor_executors", pool="default", state="total") == 3
    assert value(m, "conveyor_executors", pool="default", state="busy") == 3

    # 30 s of work: one succeeds, one fails on a1; the "anywhere" build succeeds.
    clock.advance(30)
    await finish(client, a1, started[app_builds[0]], "succeeded")
    await finish(client, a1, started[app_builds[1]], "failed")
    await finish(client, a2, started_a2[any_build], "succeeded")
    await finish(client, a2, started_a2[any_build], "succeeded")  # a re-sent finish counts once
    assert value(m, "conveyor_builds_total", job_name="app", result="succeeded") == 1
    assert value(m, "conveyor_builds_total", job_name="app", result="failed") == 1
    assert value(m, "conveyor_builds_total", job_name="app", result="cancelled") == 0
    assert value(m, "conveyor_builds_total", job_name="anywhere", result="succeeded") == 1
    assert value(m, "conveyor_builds_total", job_name="anywhere", result="failed") == 0
    assert value(m, "conveyor_build_duration_seconds_count", job_name="app") == 2
    assert value(m, "conveyor_build_duration_seconds_sum", job_name="app") == 60
    assert value(m, "conveyor_build_duration_seconds_count", job_name="anywhere") == 1
    assert value(m, "conveyor_build_duration_seconds_bucket", job_name="anywhere", le="30.0") == 1
    assert value(m, "conveyor_build_duration_seconds_bucket", job_name="anywhere", le="10.0") == 0

    # 5 s later the waiting build goes to a1's freed executor (waited 45 s) and starts.
    clock.advance(5)
    assert await dispatch_once(runtime) == 1
    assert value(m, "conveyor_queue_wait_seconds_count") == 4
    assert value(m, "conveyor_queue_wait_seconds_sum") == 75
    assert value(m, "conveyor_dispatch_latency_seconds_count") == 2
    assert list(await poll_and_start(client, a1)) == [app_builds[2]]

    # Agents: a2 drains, a3 stops heartbeating and goes offline, a1 reports figures.
    a3 = await register(client, "a3", ["linux"], 4)
    await ok(await client.post(f"/api/v1/agents/{a2}/drain"))
    clock.advance(100)
    figures = {
        "cpu_percent": 50,
        "memory_percent": 60,
        "metrics": {
            "disk_percent": 70.5,
            "load1": 1.25,
            "net_sent_bytes": 1000,
            "net_recv_bytes": 2000,
        },
    }
    await ok(await client.post(f"/agent/v1/agents/{a1}/heartbeat", json=figures))
    await ok(await client.post(f"/agent/v1/agents/{a2}/heartbeat", json={}))
    now = clock()
    await runtime.store.reap_agents(now - timedelta(seconds=15), None, now)
    await trigger(client, "anywhere")  # queued: no dispatch pass runs now

    assert await runtime.lease.run_once()
    await runtime.metrics_updater.run_once()
    assert samples(m, "conveyor_queue_length") == {(("label_expression", ANY_AGENT),): 1}
    assert value(m, "conveyor_builds_running") == 1
    assert samples(m, "conveyor_agents") == {
        (("state", "online"),): 1,
        (("state", "draining"),): 1,
        (("state", "offline"),): 1,
    }
    # Executors of online agents (a1: 2, draining a2: 1; offline a3 does not count).
    assert value(m, "conveyor_executors", pool="default", state="total") == 3
    assert value(m, "conveyor_executors", pool="default", state="busy") == 1
    assert value(m, "conveyor_agent_cpu_percent", agent="a1") == 50
    assert value(m, "conveyor_agent_memory_percent", agent="a1") == 60
    assert value(m, "conveyor_agent_disk_percent", agent="a1") == 70.5
    assert value(m, "conveyor_agent_load1", agent="a1") == 1.25
    assert value(m, "conveyor_agent_network_bytes", agent="a1", direction="sent") == 1000
    assert value(m, "conveyor_agent_network_bytes", agent="a1", direction="received") == 2000
    assert samples(m, "conveyor_agent_cpu_percent") == {(("agent", "a1"),): 50}
    assert value(m, "conveyor_agent_disk_percent", agent=f"a{a3}") is None
    assert value(m, "conveyor_store_up") == 1
    assert value(m, "conveyor_db_pool_in_use") == 0
    assert value(m, "conveyor_build_info", version="0.1.0", controller="ctl-1") == 1
    assert samples(m, "conveyor_backup_last_success_timestamp_seconds") == {}

    # HTTP: by route template, never the raw path.
    finished = samples(m, "conveyor_http_request_duration_seconds")
    routes = {dict(k)["route"] for k in finished}
    assert "/agent/v1/assignments/{assignment_id}/finish" in routes
    assert "/api/v1/jobs/{name}/builds" in routes
    assert not any(started[app_builds[0]] in r for r in routes)
    assert (
        value(
            m,
            "conveyor_http_request_duration_seconds_count",
            method="POST",
            route="/agent/v1/assignments/{assignment_id}/finish",
            status="200",
        )
        == 4
    )

    # The endpoint (no token needed), under both names.
    async with _client(create_app(runtime, run_loops=False), None) as anon:
        page = await anon.get("/metrics")
        same = await anon.get("/prometheus")
    assert page.status_code == 200 and same.status_code == 200
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    for text in (page.text, same.text):
        assert 'conveyor_builds_total{job_name="app",result="succeeded"} 1.0' in text
        assert 'conveyor_queue_length{label_expression="*"} 1.0' in text
        assert 'conveyor_leader{controller="ctl-1"} 1.0' in text
        assert 'conveyor_agents{state="offline"} 1.0' in text

    # Losing the lease clears every cluster-wide gauge at once (at the next scrape).
    await runtime.lease.release()
    text = (await client.get("/metrics")).text
    assert 'conveyor_leader{controller="ctl-1"} 0.0' in text
    for cluster_wide in (
        "conveyor_queue_length{",
        "conveyor_builds_running ",
        "conveyor_executors{",
        "conveyor_agents{",
        "conveyor_agent_cpu_percent{",
        "conveyor_lease_epoch ",
    ):
        assert cluster_wide not in text, cluster_wide
    assert 'conveyor_builds_total{job_name="app",result="succeeded"} 1.0' in text  # per controller


async def test_lost_builds_are_counted_by_the_leader(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await ok(await client.post("/api/v1/jobs", json={"spec": ANY_JOB}), 201)
    agent = await register(client, "a1", [], 1)
    await trigger(client, "anywhere")
    assert await dispatch_once(runtime) == 1
    await poll_and_start(client, agent)
    lost = 0
    for _ in range(10):  # the agent stays silent; the lease is renewed within its TTL
        clock.advance(4)
        assert await runtime.lease.run_once()
        lost += await runtime.reaper.run_once()
    assert lost == 1
    assert value(runtime.metrics, "conveyor_builds_total", job_name="anywhere", result="lost") == 1


async def test_store_down_is_reported(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unreachable(*_: Any) -> Any:
        raise StoreUnavailable("database unreachable: test")

    await runtime.metrics_updater.run_once()
    assert value(runtime.metrics, "conveyor_store_up") == 1
    with monkeypatch.context() as patch:  # a follower pings
        patch.setattr(runtime.store, "ping", unreachable)
        await runtime.metrics_updater.run_once()
    assert value(runtime.metrics, "conveyor_store_up") == 0
    await runtime.metrics_updater.run_once()
    assert value(runtime.metrics, "conveyor_store_up") == 1
    assert await runtime.lease.run_once()

    def no_reads(*_: Any) -> Any:
        raise StoreUnavailable("database unreachable: test")

    with monkeypatch.context() as patch:  # the leader reads its snapshot
        patch.setattr(runtime.store, "read", no_reads)
        await runtime.metrics_updater.run_once()
    assert value(runtime.metrics, "conveyor_store_up") == 0


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "abc-123.X"})
    assert r.headers["x-request-id"] == "abc-123.X"
    r = await client.get("/healthz", headers={"X-Request-ID": "not sane; at all"})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    r = await client.get("/api/v1/builds/999999")
    assert r.status_code == 404 and len(r.headers["x-request-id"]) == 32
    assert r.headers["x-request-id"] != made


async def test_slow_requests_are_logged_with_their_request_id_but_long_polls_are_not(
    tmp_path: Path, clock: FakeClock
) -> None:
    rt = await _runtime(tmp_path, clock, slow_request_seconds=1e-9)
    try:
        async with _client(create_app(rt, run_loops=False), rt.first_admin_token) as c:
            agent = await register(c, "a1", [], 1)
            with structlog.testing.capture_logs(
                processors=[structlog.contextvars.merge_contextvars]
            ) as logs:
                await c.get("/api/v1/jobs", headers={"X-Request-ID": "req-1"})
                await c.post(f"/agent/v1/agents/{agent}/poll", json={"wait": 0.2})
        slow = [e for e in logs if e["event"] == "request.slow"]
        assert [(e["route"], e["request_id"], e["controller"]) for e in slow] == [
            ("/api/v1/jobs", "req-1", "ctl-1")
        ]
        assert structlog.contextvars.get_contextvars() == {}
    finally:
        await rt.stop()


async def test_a_standby_serves_its_metrics_before_it_leads(
    tmp_path: Path, clock: FakeClock
) -> None:
    rt = await _runtime(tmp_path, clock, role="standby")
    try:
        async with _client(create_app(rt, run_loops=False), None) as anon:
            refused = await anon.get("/api/v1/jobs")
            assert refused.status_code == 503 and len(refused.headers["x-request-id"]) == 32
            for path in ("/metrics", "/prometheus"):
                r = await anon.get(path)
                assert r.status_code == 200, path
                assert 'conveyor_leader{controller="ctl-1"} 0.0' in r.text
                assert "conveyor_queue_length{" not in r.text
    finally:
        await rt.stop()
