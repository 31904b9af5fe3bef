"""Publications and retention through the API, in process, on both stores: agents
report publications (validated, idempotent), users list them; bad input gets a problem
body and stores nothing; the retention preview and run; a job's log_limit and the
controller default land in the build's plan."""

from __future__ import annotations

from typing import Any

import httpx

from conveyor.runtime import Runtime
from tests.api.conftest import dispatch_once
from tests.api.test_api import assert_problem, create_job, poll, register, spec, trigger

REPORT: dict[str, Any] = {
    "step": "0.0",
    "repository": "maven",
    "file": "target/app.jar",
    "url": "http://repo/g/app/1/app-1.jar",
    "size": 12,
    "sha256": "a" * 64,
    "coordinates": "g:app:1:jar",
}


async def _running(client: httpx.AsyncClient, runtime: Runtime) -> tuple[str, int, int]:
    await create_job(client, spec())
    build_id = (await trigger(client, "hello")).json()["id"]
    agent = await register(client, "a1")
    assert await dispatch_once(runtime) == 1
    [item] = (await poll(client, agent, start=True))["assignments"]
    return item["assignment_id"], agent, build_id


async def test_publications_are_recorded_and_listed(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    aid, agent, build_id = await _running(client, runtime)
    headers = {"X-Agent-Id": str(agent)}
    url = f"/agent/v1/assignments/{aid}/publications"
    assert (await client.get(f"/api/v1/builds/{build_id}/publications")).json() == []
    for _ in range(2):  # a resend (its answer was lost) is harmless
        r = await client.post(url, json=REPORT, headers=headers)
        assert r.status_code == 200, r.text
    second = {**REPORT, "url": "http://repo/g/app/1/app-1.pom", "file": "", "coordinates": None}
    assert (await client.post(url, json=second, headers=headers)).status_code == 200
    rows = (await client.get(f"/api/v1/builds/{build_id}/publications")).json()
    assert [(r["file"], r["url"], r["coordinates"]) for r in rows] == [
        ("target/app.jar", REPORT["url"], "g:app:1:jar"),
        ("", second["url"], None),
    ]
    assert rows[0]["step_key"] == "0.0" and rows[0]["build_id"] == build_id


async def test_bad_reports_and_unknown_builds_get_problems(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    aid, agent, build_id = await _running(client, runtime)
    headers = {"X-Agent-Id": str(agent)}
    url = f"/agent/v1/assignments/{aid}/publications"
    for bad in (
        {**REPORT, "sha256": "not-hex"},
        {**REPORT, "url": "file:///etc/passwd"},
        {**REPORT, "repository": "ftp"},
        {**REPORT, "size": -1},
    ):
        assert_problem(await client.post(url, json=bad, headers=headers), 400)
    assert (await client.get(f"/api/v1/builds/{build_id}/publications")).json() == []
    assert_problem(
        await client.post("/agent/v1/assignments/nope/publications", json=REPORT, headers=headers),
        404,
    )
    assert_problem(await client.get("/api/v1/builds/999999/publications"), 404, "999999")


async def test_retention_preview_and_run(client: httpx.AsyncClient, runtime: Runtime) -> None:
    r = await client.get("/api/v1/retention/preview")
    assert r.status_code == 200
    assert r.json() == {"builds": [], "artifacts": [], "bytes_freed": 0, "partial": False}
    # Not the leader yet (no loops run in process): only the leader deletes.
    assert_problem(await client.post("/api/v1/retention/run"), 409, "not the leader")
    assert await runtime.lease.run_once()
    r = await client.post("/api/v1/retention/run")
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes_freed": 0, "history_bytes_freed": 0, "artifact_bytes_freed": 0}


async def test_log_limit_lands_in_the_plan(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await create_job(client, spec())
    limited = spec("limited").replace("stages:", "log_limit: 2MB\nstages:")
    await create_job(client, limited)
    default = (await trigger(client, "hello")).json()["id"]
    own = (await trigger(client, "limited")).json()["id"]
    plan = (await runtime.store.get_build(default)).plan
    assert (plan["log_limit"], plan["log_limit_source"]) == (
        1024 * 1024 * 1024,
        "controller log_limit_mb",
    )
    plan = (await runtime.store.get_build(own)).plan
    assert (plan["log_limit"], plan["log_limit_source"]) == (2 * 1024 * 1024, "job log_limit")
    bad = spec("bad").replace("stages:", "log_limit: huge\nstages:")
    r = await client.post("/api/v1/jobs", json={"spec": bad})
    assert_problem(r, 400, "invalid size 'huge'")


async def test_controller_cuts_the_log_of_an_agent_that_does_not(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """An agent that ignores plan.log_limit: the controller keeps limit + 4 KB slack,
    ends the log with the truncation line, and acknowledges (drops) the rest."""
    await create_job(client, spec("chatty").replace("stages:", "log_limit: 1KB\nstages:"))
    build_id = (await trigger(client, "chatty")).json()["id"]
    agent = await register(client, "a1")
    assert await dispatch_once(runtime) == 1
    [item] = (await poll(client, agent, start=True))["assignments"]
    headers = {"X-Agent-Id": str(agent)}
    url = f"/agent/v1/assignments/{item['assignment_id']}/log"
    chunk = b"x" * 8192
    for seq in range(3):
        for _ in range(2):  # a resend is harmless, also past the limit
            r = await client.post(
                url, params={"seq": seq, "offset": seq * 8192}, content=chunk, headers=headers
            )
            assert r.status_code == 200, r.text
    log = (await client.get(f"/api/v1/builds/{build_id}/log")).content
    line = b"[conveyor] log truncated at 1 KB (limit 1 KB, job log_limit)"
    assert log.startswith(b"x" * (1024 + 4096) + b"\n" + line)
    assert log.count(b"x") == 1024 + 4096
    assert log.count(b"[conveyor]") == 1
