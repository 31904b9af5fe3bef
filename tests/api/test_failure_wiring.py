"""Scratch: failure analysis wired into BuildService/Runtime (not part of the repo)."""

from __future__ import annotations

import httpx

from conveyor.runtime import Runtime
from tests.api.conftest import dispatch_once
from tests.api.test_api import create_job, poll, register, trigger

LOG = b"gcc -c main.c\n\x1b[1mmain.c:7:5: \x1b[31merror: \x1b[0m'y' undeclared\nmake: *** Error 1\n"


async def test_failed_build_gets_a_failure_category(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    build = (await trigger(client, "hello")).json()
    url = f"/api/v1/builds/{build['id']}"
    assert build["failure_category"] is None
    agent = await register(client, "a1", "linux")
    headers = {"X-Agent-Id": str(agent)}
    assert await dispatch_once(runtime) == 1
    [assignment] = (await poll(client, agent))["assignments"]
    base = f"/agent/v1/assignments/{assignment['assignment_id']}"
    assert (await client.post(f"{base}/start", headers=headers)).status_code == 200
    r = await client.post(
        f"{base}/log", params={"seq": 0, "offset": 0}, content=LOG, headers=headers
    )
    assert r.status_code == 200
    step = {"key": "0.0", "state": "failed", "exit_code": 2, "attempt": 1}
    assert (await client.post(f"{base}/steps", json=step, headers=headers)).status_code == 200
    r = await client.post(f"{base}/finish", json={"result": "failed"}, headers=headers)
    assert r.status_code == 200
    await runtime.builds.drain()
    done = (await client.get(url)).json()
    assert done["state"] == "failed"
    assert done["failure_category"] == "compile"
    assert done["cause"] == "compile error in main.c:7: 'y' undeclared"
    listed = (await client.get("/api/v1/builds")).json()["items"]
    assert listed[0]["failure_category"] == "compile"
    text = runtime.metrics.exposition().decode()
    assert 'conveyor_build_failures_total{category="compile"} 1.0' in text
