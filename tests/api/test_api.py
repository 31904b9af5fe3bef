"""The REST API (/api/v1) and the agent protocol (/agent/v1), in process, on both stores.

Every refusal is checked for its status, its problem body (RFC 9457) and for
having stored nothing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from conveyor.runtime import Runtime
from conveyor.store.migrate import head_revision
from tests.api.conftest import dispatch_once

PROBLEM = "application/problem+json"
JSON = {"Content-Type": "application/json"}
EMPTY_INBOX: dict[str, list[Any]] = {"assignments": [], "cancel": [], "abort": []}

OPS = """\
name: ops
agent: gpu
parameters:
  - {name: OPERATION, type: choice, choices: [deploy, backup]}
  - {name: TICKET, required: true}
stages:
  - {name: work, steps: [{sh: 'echo "$OPERATION"'}]}
  - name: backup
    when: {parameter: OPERATION, equals: backup}
    steps: [{echo: backing up}]
"""


def spec(name: str = "hello", *, description: str = "says hi") -> str:
    return (
        f"name: {name}\ndescription: {description}\n"
        "stages:\n  - name: greet\n    steps:\n      - echo: hi\n"
    )


def assert_problem(r: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """A problem+json answer with this status whose detail contains every fragment."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body)
    return body


async def create_job(client: httpx.AsyncClient, text: str = spec()) -> dict[str, Any]:
    r = await client.post("/api/v1/jobs", json={"spec": text})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def trigger(
    client: httpx.AsyncClient, job: str, **parameters: str | bool | int
) -> httpx.Response:
    return await client.post(f"/api/v1/jobs/{job}/builds", json={"parameters": parameters})


async def job_names(client: httpx.AsyncClient) -> list[str]:
    return [j["name"] for j in (await client.get("/api/v1/jobs")).json()]


async def build_ids(client: httpx.AsyncClient) -> list[int]:
    return [b["id"] for b in (await client.get("/api/v1/builds")).json()["items"]]


async def poll(client: httpx.AsyncClient, agent: int, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/agent/v1/agents/{agent}/poll", json={"wait": 0, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def register(client: httpx.AsyncClient, name: str, *labels: str) -> int:
    r = await client.post(
        "/agent/v1/register", json={"name": name, "labels": list(labels), "executors": 2}
    )
    assert r.status_code == 200, r.text
    return int(r.json()["agent_id"])


# ------------------------------------------------------------------ auth, health


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "missing bearer token"),
        ("Bearer cvy_not-a-real-token", "invalid, expired or revoked token"),
        # Basic auth (Jenkins clients) takes user:apitoken, never a password.
        ("Basic dXNlcjpwYXNz", "invalid Basic credentials"),
        ("Basic bm90LWJhc2U2NA=", "malformed Basic credentials"),
        ("Bearer", "malformed Authorization header"),
    ],
)
async def test_requests_without_a_valid_token_are_refused(
    anon: httpx.AsyncClient, client: httpx.AsyncClient, authorization: str | None, detail: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await anon.get("/api/v1/jobs", headers=headers)
    assert_problem(r, 401, detail)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await anon.post("/api/v1/jobs", json={"spec": spec()}, headers=headers)
    assert_problem(r, 401, detail)
    r = await anon.post("/agent/v1/register", json={"name": "a", "executors": 1}, headers=headers)
    assert_problem(r, 401, detail)
    assert await job_names(client) == []
    assert (await client.get("/api/v1/agents")).json() == []


async def test_health_and_openapi_need_no_token(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = await anon.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "schema": head_revision()}
    r = await anon.get("/openapi.json")
    assert r.status_code == 200
    assert {"/api/v1/jobs", "/agent/v1/register"} <= set(r.json()["paths"])


# ---------------------------------------------------------------------- jobs


async def test_invalid_job_specs_are_refused_storing_nothing(client: httpx.AsyncClient) -> None:
    bad_yaml = "name: x\nstages:\n  - name: a\n    steps:\n      - sh: echo a: b\n"
    shh = "name: x\nstages:\n  - name: a\n    steps:\n      - shh: secret\n"
    not_an_object = "body: Input should be a valid dictionary"
    cases: list[tuple[Any, tuple[str, ...]]] = [  # (JSON body or raw bytes, detail fragments)
        ({"spec": bad_yaml}, ("conveyor.yml:5:", "invalid YAML")),
        ({"spec": shh}, ("conveyor.yml:5:", "stages[0].steps[0]", "unknown step type 'shh'")),
        ({"spec": "name: x\n"}, ("conveyor.yml:1:", "missing required field 'stages'")),
        ({"spec": ""}, ("the file is empty",)),
        ({}, ("spec: Field required",)),
        ({"spec": 3}, ("spec: Input should be a valid string",)),
        (["not", "an", "object"], (not_an_object,)),
        ({"spec": "x" * 1_100_000}, ("spec:", "1000000 characters")),
        ({"spec": "é" * 600_000}, ("larger than 1024 KiB",)),
        (b"name: x\n", ("body: not valid JSON",)),
    ]
    for payload, fragments in cases:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        for method, url in (("POST", "/api/v1/jobs"), ("PUT", "/api/v1/jobs/x")):
            r = await client.request(method, url, content=content, headers=JSON)
            body = assert_problem(r, 400, *fragments)
            if body["title"] == "Invalid pipeline spec":
                assert body["errors"] and all(e.startswith("conveyor.yml:") for e in body["errors"])
    yaml_body = {"Content-Type": "application/yaml"}
    r = await client.post("/api/v1/jobs", content=spec().encode(), headers=yaml_body)
    assert_problem(r, 400, not_an_object)
    assert await job_names(client) == []


async def test_job_create_update_versions_delete(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/jobs", json={"spec": spec()})
    assert r.status_code == 201
    assert r.headers["ETag"] == '"1"' and r.headers["Location"] == "/api/v1/jobs/hello"
    assert r.json()["version"] == 1 and r.json()["description"] == "says hi"

    r = await client.post("/api/v1/jobs", json={"spec": spec(description="other")})
    assert_problem(r, 409, "job 'hello' already exists")

    r = await client.put("/api/v1/jobs/other", json={"spec": spec()})
    assert_problem(r, 400, "the spec names job 'hello' but the URL names 'other'")
    assert await job_names(client) == ["hello"]

    stale = {"If-Match": '"0"'}
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec(description="v2")}, headers=stale)
    assert_problem(r, 409, "changed by someone else", "version 1", "you sent 0")
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec(description="v2"), "version": 7})
    assert_problem(r, 409, "you sent 7")
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec()}, headers={"If-Match": "one"})
    assert_problem(r, 400, "If-Match must be a job version ETag", "'one'")
    r = await client.get("/api/v1/jobs/hello")
    assert r.json()["version"] == 1 and r.json()["spec"] == spec()
    assert r.headers["ETag"] == '"1"'

    good = {"If-Match": r.headers["ETag"]}
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec(description="v2")}, headers=good)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["description"] == "v2"
    assert r.headers["ETag"] == '"2"'
    # Without a version the update is unconditional; a weak ETag is accepted too.
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec(description="v3")})
    assert r.status_code == 200 and r.json()["version"] == 3
    weak = {"If-Match": 'W/"3"'}
    r = await client.put("/api/v1/jobs/hello", json={"spec": spec(description="v4")}, headers=weak)
    assert r.status_code == 200 and r.json()["version"] == 4

    r = await client.get("/api/v1/jobs/hello/versions")
    assert r.status_code == 200
    assert [v["version"] for v in r.json()] == [4, 3, 2, 1]
    assert r.json()[-1]["author"] == "admin"
    r = await client.get("/api/v1/jobs/hello/versions/1")
    assert r.status_code == 200 and r.json()["spec"] == spec()
    assert_problem(await client.get("/api/v1/jobs/hello/versions/9"), 404, "no version 9")

    r = await client.put("/api/v1/jobs/new/job", json={"spec": spec("new/job")})
    assert r.status_code == 201 and r.headers["ETag"] == '"1"'
    r = await client.put("/api/v1/jobs/absent", json={"spec": spec("absent")}, headers=good)
    assert_problem(r, 404, "job 'absent' not found")
    assert await job_names(client) == ["hello", "new/job"]
    assert [j["name"] for j in (await client.get("/api/v1/jobs?prefix=new/")).json()] == ["new/job"]

    assert_problem(await client.get("/api/v1/jobs/nope"), 404, "job 'nope' not found")
    r = await client.delete("/api/v1/jobs/new/job")
    assert r.status_code == 204 and r.content == b""
    assert_problem(await client.get("/api/v1/jobs/new/job"), 404, "job 'new/job' not found")
    assert_problem(await client.delete("/api/v1/jobs/new/job"), 404, "not found")


async def test_concurrent_writes_to_one_job(client: httpx.AsyncClient) -> None:
    """Racing creates: one 201, the rest 409 (not 500); racing unconditional PUTs all
    apply; racing PUTs with the same If-Match: exactly one wins."""
    answers = await asyncio.gather(
        *(client.post("/api/v1/jobs", json={"spec": spec()}) for _ in range(4))
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409]
    for r in (r for r in answers if r.status_code == 409):
        assert_problem(r, 409, "job 'hello' already exists")
    answers = await asyncio.gather(
        *(
            client.put("/api/v1/jobs/two", json={"spec": spec("two", description=f"v{i}")})
            for i in range(4)
        )
    )
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert (await client.get("/api/v1/jobs/two")).json()["version"] == 4
    # Re-applying the very same spec is not a change: no new version.
    current = (await client.get("/api/v1/jobs/two")).json()["spec"]
    same = await client.put("/api/v1/jobs/two", json={"spec": current})
    assert same.status_code == 200 and same.json()["version"] == 4
    assert len((await client.get("/api/v1/jobs/two/versions")).json()) == 4

    headers = {"If-Match": '"1"'}
    put = [{"spec": spec(description=d)} for d in ("first", "second")]
    answers = await asyncio.gather(
        *(client.put("/api/v1/jobs/hello", json=body, headers=headers) for body in put)
    )
    assert sorted(r.status_code for r in answers) == [200, 409]
    winner = next(r for r in answers if r.status_code == 200)
    assert_problem(next(r for r in answers if r.status_code == 409), 409, "changed by someone")
    job = (await client.get("/api/v1/jobs/hello")).json()
    assert job["version"] == 2 and job["description"] == winner.json()["description"]
    assert len((await client.get("/api/v1/jobs/hello/versions")).json()) == 2


# -------------------------------------------------------------------- builds


async def test_trigger_validates_parameters(client: httpx.AsyncClient) -> None:
    assert_problem(await trigger(client, "nope"), 404, "job 'nope' not found")
    await create_job(client, OPS)
    body = assert_problem(await trigger(client, "ops"), 400, "parameter 'TICKET' is required")
    assert body["errors"] == ["parameter 'TICKET' is required"]
    r = await trigger(client, "ops", TICKET="T-1", OPERATION="destroy")
    assert_problem(r, 400, "parameter 'OPERATION': 'destroy' is not one of [deploy, backup]")
    assert_problem(await trigger(client, "ops", TICKET="T-1", COLOR="red"), 400, "'COLOR'")
    r = await client.post("/api/v1/jobs/ops/builds", json={"parameters": {"TICKET": [1]}})
    assert_problem(r, 400, "parameters.TICKET")
    assert await build_ids(client) == []

    r = await trigger(client, "ops", TICKET="T-1")
    assert r.status_code == 201, r.text
    build = r.json()
    assert build["number"] == 1 and build["state"] == "queued" and build["result"] is None
    assert r.headers["Location"] == f"/api/v1/builds/{build['id']}" == build["url"]
    assert build["parameters"] == {"OPERATION": "deploy", "TICKET": "T-1"}
    assert build["trigger"] == "api:admin" and build["artifacts"] == []
    assert [(s["key"], s["stage"], s["kind"], s["state"]) for s in build["steps"]] == [
        ("0.0", "work", "sh", "pending"),
        ("1.0", "backup", "echo", "skipped"),
    ]
    second = await trigger(client, "ops", TICKET="T-2", OPERATION="backup")
    assert second.status_code == 201 and second.json()["number"] == 2
    assert [s["state"] for s in second.json()["steps"]] == ["pending", "pending"]
    r = await client.get("/api/v1/jobs/ops/builds/2")
    assert r.status_code == 200 and r.json()["id"] == second.json()["id"]
    assert_problem(await client.get("/api/v1/jobs/ops/builds/3"), 404, "build ops #3 not found")


async def test_build_list_pages_with_a_cursor_and_filters(client: httpx.AsyncClient) -> None:
    await create_job(client)
    await create_job(client, spec("other"))
    created = [(await trigger(client, "hello")).json()["id"] for _ in range(5)]
    seen: list[int] = []
    cursor: int | None = None
    for _ in range(3):
        params: dict[str, str | int] = {"limit": 2, "job": "hello"}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/builds", params=params)).json()
        seen += [b["id"] for b in page["items"]]
        assert all(b["steps"] is None for b in page["items"])  # lists omit the details
        cursor = page["next_cursor"]
    assert cursor is None and seen == sorted(created, reverse=True)

    other = (await trigger(client, "other")).json()["id"]
    r = await client.post(f"/api/v1/builds/{created[0]}/cancel")
    assert r.status_code == 202
    r = await client.get("/api/v1/builds", params={"state": "cancelled"})
    assert [b["id"] for b in r.json()["items"]] == [created[0]]
    r = await client.get("/api/v1/builds", params=[("state", "queued"), ("state", "cancelled")])
    assert len(r.json()["items"]) == 6
    r = await client.get("/api/v1/jobs/other/builds")
    assert [b["id"] for b in r.json()["items"]] == [other]
    assert_problem(await client.get("/api/v1/jobs/nope/builds"), 404, "job 'nope' not found")

    r = await client.get("/api/v1/builds", params={"state": "bogus"})
    assert_problem(r, 400, "unknown build state", "queued")
    assert_problem(await client.get("/api/v1/builds?limit=0"), 400, "limit")
    assert_problem(await client.get("/api/v1/builds?limit=501"), 400, "limit")
    assert_problem(await client.get("/api/v1/builds?cursor=abc"), 400, "cursor")


async def test_build_get_cancel_log_and_artifacts(client: httpx.AsyncClient) -> None:
    for method, suffix in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/log"),
        ("GET", "/artifacts"),
    ]:
        r = await client.request(method, f"/api/v1/builds/999{suffix}")
        assert_problem(r, 404, "build 999 not found")
    assert_problem(await client.get("/api/v1/builds/999/log/stream"), 404, "build 999 not found")
    await create_job(client)
    build_id = (await trigger(client, "hello")).json()["id"]

    r = await client.get(f"/api/v1/builds/{build_id}/log")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["X-More-Data"] == "true" and r.headers["X-Next-Offset"] == "0"
    assert r.headers["X-Log-Size"] == "0" and r.headers["X-Build-State"] == "queued"
    assert_problem(await client.get(f"/api/v1/builds/{build_id}/log?offset=-1"), 400, "offset")
    r = await client.get(f"/api/v1/builds/{build_id}/artifacts")
    assert r.status_code == 200 and r.json() == []
    r = await client.get(f"/api/v1/builds/{build_id}/artifacts/dist/app.tar.gz")
    assert_problem(r, 404, f"build {build_id} has no artifact 'dist/app.tar.gz'")

    r = await client.post(f"/api/v1/builds/{build_id}/cancel")
    assert r.status_code == 202
    assert r.json()["state"] == "cancelled" and r.json()["cause"] == "cancelled by admin"
    build = (await client.get(f"/api/v1/builds/{build_id}")).json()
    assert build["result"] == "cancelled" and build["finished_at"] is not None
    assert [s["state"] for s in build["steps"]] == ["skipped"]
    r = await client.get(f"/api/v1/builds/{build_id}/log")
    assert r.headers["X-More-Data"] == "false"
    r = await client.get(f"/api/v1/builds/{build_id}/log/stream")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    end = {"state": "cancelled", "offset": 0, "cause": "cancelled by admin"}
    assert r.text == f"event: end\ndata: {json.dumps(end)}\n\n"
    # A finished build's job can be deleted; an active one's cannot (see the run test).
    assert (await client.delete("/api/v1/jobs/hello")).status_code == 204
    assert await build_ids(client) == []


async def test_queue_explains_why_builds_wait(client: httpx.AsyncClient) -> None:
    await create_job(client, OPS)
    build_id = (await trigger(client, "ops", TICKET="T-1")).json()["id"]
    r = await client.get("/api/v1/queue")
    assert r.status_code == 200
    [item] = r.json()
    assert item["build_id"] == build_id and item["job"] == "ops"
    assert item["reason"] == "no agents online"

    linux = await register(client, "linux-1", "linux")
    [item] = (await client.get("/api/v1/queue")).json()
    assert item["reason"] == "no online agent matches `gpu`"

    gpu = await register(client, "gpu-1", "gpu", "linux")
    [item] = (await client.get("/api/v1/queue")).json()
    assert item["reason"] == "about to be assigned"

    r = await client.post(f"/api/v1/agents/{gpu}/drain")
    assert r.status_code == 200 and r.json()["state"] == "draining"
    [item] = (await client.get("/api/v1/queue")).json()
    assert item["reason"] == "1 agent matches `gpu` but is offline or draining"
    r = await client.post(f"/api/v1/agents/{gpu}/resume")
    assert r.status_code == 200 and r.json()["state"] == "online"

    agents = (await client.get("/api/v1/agents")).json()
    assert [(a["name"], a["labels"], a["busy"]) for a in agents] == [
        ("gpu-1", ["gpu", "linux"], 0),
        ("linux-1", ["linux"], 0),
    ]
    assert (await client.get(f"/api/v1/agents/{linux}")).json()["executors"] == 2
    assert_problem(await client.get("/api/v1/agents/999"), 404, "agent 999 not found")
    assert_problem(await client.post("/api/v1/agents/999/drain"), 404, "agent 999 not found")


# ------------------------------------------------------------ agent protocol


async def test_agent_protocol_refusals(client: httpx.AsyncClient) -> None:
    for body, fragment in [
        ({"name": "bad name", "executors": 1}, "name:"),
        ({"name": "", "executors": 1}, "name:"),
        ({"name": "a1", "executors": 0}, "executors:"),
        ({"name": "a1"}, "executors: Field required"),
        ({"name": "a1", "executors": 1, "labels": ["ok", "no way"]}, "invalid label(s): no way"),
    ]:
        assert_problem(await client.post("/agent/v1/register", json=body), 400, fragment)
    assert (await client.get("/api/v1/agents")).json() == []

    agent = await register(client, "a1", "linux")
    headers = {"X-Agent-Id": str(agent)}
    started = time.monotonic()
    assert await poll(client, agent) == EMPTY_INBOX
    assert time.monotonic() - started < 2
    r = await client.post(f"/agent/v1/agents/{agent}/heartbeat", json={"running": ["gone"]})
    assert r.status_code == 200 and r.json()["abort"] == ["gone"]
    r = await client.post(f"/agent/v1/agents/{agent}/poll", json={"wait": 121})
    assert_problem(r, 400, "wait")
    assert_problem(await client.post("/agent/v1/agents/999/poll", json={"wait": 0}), 404, "999")
    r = await client.post("/agent/v1/agents/999/heartbeat", json={})
    assert_problem(r, 404, "agent 999 not found; register again")

    base = "/agent/v1/assignments/unknown"
    r = await client.post(f"{base}/start", headers=headers)
    assert_problem(r, 404, "assignment unknown not found")
    assert_problem(await client.post(f"{base}/start"), 400, "X-Agent-Id")
    r = await client.post(f"{base}/log?seq=0&offset=0", content=b"hi\n", headers=headers)
    assert_problem(r, 404, "assignment unknown not found")
    r = await client.post(f"{base}/log?seq=-1&offset=0", content=b"hi\n", headers=headers)
    assert_problem(r, 400, "seq")
    r = await client.post(f"{base}/steps", json={"key": "0.0", "state": "done"}, headers=headers)
    assert_problem(r, 400, "state")
    r = await client.post(f"{base}/finish", json={"result": "exploded"}, headers=headers)
    assert_problem(r, 400, "result")
    r = await client.post(f"{base}/finish", json={"result": "queued"}, headers=headers)
    assert_problem(r, 400, "result")
    r = await client.post(f"{base}/finish", json={"result": "succeeded"}, headers=headers)
    assert_problem(r, 404, "assignment unknown not found")
    r = await client.put(f"{base}/artifacts?path=../etc/passwd", content=b"x", headers=headers)
    assert_problem(r, 400, "must stay inside the workspace")


async def test_a_build_runs_through_the_agent_protocol(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    build = (await trigger(client, "hello")).json()
    url = f"/api/v1/builds/{build['id']}"
    agent = await register(client, "a1", "linux")
    headers = {"X-Agent-Id": str(agent)}
    assert await dispatch_once(runtime) == 1
    [assignment] = (await poll(client, agent))["assignments"]
    assert assignment["build_id"] == build["id"]
    aid = assignment["assignment_id"]
    base = f"/agent/v1/assignments/{aid}"
    # An assignment the agent already runs is not offered again.
    assert await poll(client, agent, running=[aid]) == EMPTY_INBOX

    other = {"X-Agent-Id": str(await register(client, "a2"))}
    assert_problem(
        await client.post(f"{base}/start", headers=other), 403, "not assigned to this agent"
    )
    for _ in range(2):  # starting is idempotent
        r = await client.post(f"{base}/start", headers=headers)
        assert r.status_code == 200 and r.json()["build_id"] == build["id"]
        assert r.json()["number"] == 1 and r.json()["plan"]["stages"]
    assert_problem(await client.delete("/api/v1/jobs/hello"), 409, "running build")

    for seq, offset, data in [(0, 0, b"hello\n"), (0, 0, b"hello\n"), (1, 6, b"world\n")]:
        params = {"seq": seq, "offset": offset}
        r = await client.post(f"{base}/log", params=params, content=data)
        assert_problem(r, 400, "X-Agent-Id")
        r = await client.post(f"{base}/log", params=params, content=data, headers=headers)
        assert r.status_code == 200 and r.json() == {"cancel": False}
    r = await client.get(f"{url}/log", params={"offset": 3, "limit": 5})
    assert r.content == b"lo\nwo"
    assert r.headers["X-Next-Offset"] == "8" and r.headers["X-Log-Size"] == "12"
    assert r.headers["X-More-Data"] == "true" and r.headers["X-Build-State"] == "running"

    step = {"key": "0.0", "state": "succeeded", "exit_code": 0, "attempt": 1}
    assert (await client.post(f"{base}/steps", json=step, headers=headers)).status_code == 200
    for path in ("./out//report.txt", "résumé 日本.txt"):
        r = await client.put(
            f"{base}/artifacts", params={"path": path}, content=b"ok\n", headers=headers
        )
        assert r.status_code == 200 and r.json()["size"] == 3
    assert r.json()["path"] == "résumé 日本.txt"

    for result in ("succeeded", "succeeded", "failed"):  # the first report wins
        r = await client.post(f"{base}/finish", json={"result": result}, headers=headers)
        assert r.status_code == 200 and r.json() == {"cancel": False}
    done = (await client.get(url)).json()
    assert done["state"] == done["result"] == "succeeded" and done["agent_id"] == agent
    assert [s["state"] for s in done["steps"]] == ["succeeded"]
    assert [a["path"] for a in done["artifacts"]] == ["out/report.txt", "résumé 日本.txt"]
    # A late resend after the log was compacted is still harmless.
    r = await client.post(f"{base}/log?seq=1&offset=6", content=b"world\n", headers=headers)
    assert r.status_code == 200

    r = await client.get(f"{url}/log")
    assert r.content == b"hello\nworld\n" and r.headers["X-More-Data"] == "false"
    r = await client.get(f"{url}/log/stream", params={"offset": 6})
    assert r.text.split("\n\n") == [
        'event: log\ndata: {"offset": 6, "next_offset": 12, "text": "world\\n"}',
        'event: end\ndata: {"state": "succeeded", "offset": 12, "cause": null}',
        "",
    ]
    r = await client.get(f"{url}/artifacts/out/report.txt")
    assert r.status_code == 200 and r.content == b"ok\n"
    assert r.headers["content-disposition"] == 'attachment; filename="report.txt"'
    assert r.headers["X-Checksum-Sha256"] == done["artifacts"][0]["sha256"]
    r = await client.get(done["artifacts"][1]["url"])  # a name HTTP headers cannot carry
    assert r.status_code == 200 and r.content == b"ok\n"
    assert r.headers["content-disposition"] == (
        'attachment; filename="r_sum_ __.txt"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC.txt"
    )


async def test_cancelling_a_running_build_reaches_the_agent(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    build_id = (await trigger(client, "hello")).json()["id"]
    agent = await register(client, "a1")
    headers = {"X-Agent-Id": str(agent)}
    await dispatch_once(runtime)
    aid = (await poll(client, agent))["assignments"][0]["assignment_id"]
    base = f"/agent/v1/assignments/{aid}"
    assert (await client.post(f"{base}/start", headers=headers)).status_code == 200

    r = await client.post(f"/api/v1/builds/{build_id}/cancel")
    assert r.status_code == 202
    assert r.json()["state"] == "running" and r.json()["cancel_requested"] is True
    assert (await poll(client, agent, running=[aid]))["cancel"] == [aid]
    assert await poll(client, agent, running=[aid], cancelling=[aid]) == EMPTY_INBOX
    r = await client.post(f"{base}/log?seq=0&offset=0", content=b"bye\n", headers=headers)
    assert r.json() == {"cancel": True}
    r = await client.post(f"{base}/finish", json={"result": "cancelled"}, headers=headers)
    assert r.status_code == 200
    build = (await client.get(f"/api/v1/builds/{build_id}")).json()
    assert build["state"] == "cancelled" and build["cause"] == "cancelled by admin"
    assert build["steps"][0]["state"] == "skipped"
    r = await client.post(f"/agent/v1/agents/{agent}/heartbeat", json={"running": [aid]})
    assert r.json()["abort"] == [aid]


async def test_cancelling_an_assigned_build_ends_it_at_once(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Not started yet: the build ends at once and frees its executor and its job's
    concurrency slot, whether or not the agent has polled it already."""
    await create_job(client, "name: one\nconcurrency: 1\nstages: [{name: a, steps: [{echo: hi}]}]")
    agent = await register(client, "a1")
    headers = {"X-Agent-Id": str(agent)}
    first = (await trigger(client, "one")).json()["id"]
    assert await dispatch_once(runtime) == 1
    r = await client.post(f"/api/v1/builds/{first}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert await poll(client, agent) == EMPTY_INBOX  # never offered

    second = (await trigger(client, "one")).json()["id"]
    assert await dispatch_once(runtime) == 1
    [assignment] = (await poll(client, agent))["assignments"]
    assert assignment["build_id"] == second
    aid = assignment["assignment_id"]
    assert (await client.post(f"/api/v1/builds/{second}/cancel")).json()["state"] == "cancelled"
    r = await client.post(f"/agent/v1/assignments/{aid}/start", headers=headers)
    assert_problem(r, 409, f"build {second} is cancelled; do not run it")
    assert (await poll(client, agent, running=[aid]))["abort"] == [aid]
    assert (await client.get(f"/api/v1/agents/{agent}")).json()["busy"] == 0
