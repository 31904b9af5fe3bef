"""Disabling jobs and deleting builds through the API in-process (SQLite and
PostgreSQL): a disabled job refuses builds with a 409 naming it, applying a spec
neither sets nor clears the state, the web UI offers the button only to who may use
it; a finished build is deleted with its steps, log and artifacts (rows and blobs),
a queued or pinned one is kept (409), an admin may force a pinned one; audited."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor.core.permissions import Role
from conveyor.runtime import Runtime
from conveyor.store import security as db
from tests.api.conftest import dispatch_once
from tests.api.test_api import assert_problem, poll, register
from tests.auth_helpers import user_token

SPEC = "name: team/app\nstages:\n  - name: b\n    steps:\n      - echo: hi\n"


async def _job(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/jobs", json={"spec": SPEC})
    assert r.status_code == 201, r.text


async def test_disable_enable_is_idempotent_and_refuses_builds(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await _job(client)
    assert (await client.get("/api/v1/jobs/team/app")).json()["disabled"] is False
    for _ in range(2):  # idempotent
        r = await client.post("/api/v1/jobs/team/app/disable")
        assert r.status_code == 200 and r.json()["disabled"] is True
    assert r.json()["version"] == 1  # not a new version of the spec
    refused = await client.post("/api/v1/jobs/team/app/builds", json={})
    problem = assert_problem(refused, 409, "'team/app' is disabled")
    assert problem["title"]
    assert await runtime.store.list_builds("team/app") == []

    # Applying a (changed) spec neither sets nor clears the state.
    changed = SPEC.replace("echo: hi", "echo: changed")
    r = await client.put("/api/v1/jobs/team/app", json={"spec": changed})
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["disabled"] is True
    listed = {j["name"]: j["disabled"] for j in (await client.get("/api/v1/jobs")).json()}
    assert listed == {"team/app": True}

    for _ in range(2):
        r = await client.post("/api/v1/jobs/team/app/enable")
        assert r.status_code == 200 and r.json()["disabled"] is False
    assert (await client.post("/api/v1/jobs/team/app/builds", json={})).status_code == 201
    assert_problem(await client.post("/api/v1/jobs/team/nothing/disable"), 404, "team/nothing")
    actions = [e.action for e in await db.list_audit(runtime.store, limit=50)]
    assert "disable_job" in actions and "enable_job" in actions


async def test_job_page_shows_the_state_and_the_button_to_who_may_configure(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await _job(client)
    await client.post("/api/v1/jobs/team/app/disable")
    page = await client.get("/ui/jobs/team/app")
    assert page.status_code == 200
    assert "state-disabled" in page.text and 'data-post="/api/v1/jobs/team/app/enable"' in page.text
    listing = await client.get("/ui/jobs")
    assert "state-disabled" in listing.text
    viewer = await user_token(runtime.store, "vera", Role.VIEWER)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.test",
        headers={"Authorization": f"Bearer {viewer}"},
    ) as as_viewer:
        seen = await as_viewer.get("/ui/jobs/team/app")
        assert seen.status_code == 200 and "state-disabled" in seen.text
        assert "/api/v1/jobs/team/app/enable" not in seen.text
        assert (await as_viewer.post("/api/v1/jobs/team/app/enable")).status_code == 403
    await client.post("/api/v1/jobs/team/app/enable")
    page = await client.get("/ui/jobs/team/app")
    assert 'data-post="/api/v1/jobs/team/app/disable"' in page.text


async def _finished_build(client: httpx.AsyncClient, runtime: Runtime, agent: int) -> int:
    """A build run through the agent protocol: steps, a log, an artifact; compacted."""
    build = (await client.post("/api/v1/jobs/team/app/builds", json={})).json()
    assert await dispatch_once(runtime) == 1
    [assignment] = (await poll(client, agent))["assignments"]
    base = f"/agent/v1/assignments/{assignment['assignment_id']}"
    headers = {"X-Agent-Id": str(agent)}
    assert (await client.post(f"{base}/start", headers=headers)).status_code == 200
    r = await client.post(f"{base}/log?seq=0&offset=0", content=b"hello\n", headers=headers)
    assert r.status_code == 200
    step = {"key": "0.0", "state": "succeeded", "exit_code": 0, "attempt": 1}
    assert (await client.post(f"{base}/steps", json=step, headers=headers)).status_code == 200
    r = await client.put(
        f"{base}/artifacts", params={"path": "out.txt"}, content=b"ok\n", headers=headers
    )
    assert r.status_code == 200
    r = await client.post(f"{base}/finish", json={"result": "succeeded"}, headers=headers)
    assert r.status_code == 200
    await runtime.builds.compact_log(build["id"])
    return int(build["id"])


async def test_delete_build_removes_rows_and_blobs(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await _job(client)
    agent = await register(client, "a1")
    build_id = await _finished_build(client, runtime, agent)
    record = await runtime.store.get_build(build_id)
    [artifact] = await runtime.store.list_artifacts(build_id)
    keys = [record.log_blob, artifact.blob_key]
    assert all(k is not None for k in keys)
    assert [await runtime.blobs.exists(str(k)) for k in keys] == [True, True]

    page = await client.get(f"/ui/builds/{build_id}")
    assert f'data-delete="/api/v1/builds/{build_id}"' in page.text  # admin: offered

    # Queued (not finished): kept.
    queued = (await client.post("/api/v1/jobs/team/app/builds", json={})).json()["id"]
    assert_problem(await client.delete(f"/api/v1/builds/{queued}"), 409, "queued")

    # Pinned: kept for a developer, even forced; an admin may force it.
    assert (await client.post(f"/api/v1/builds/{build_id}/pin")).status_code == 200
    dev = await user_token(runtime.store, "dora", Role.DEVELOPER)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.test",
        headers={"Authorization": f"Bearer {dev}"},
    ) as as_dev:
        r = await as_dev.delete(f"/api/v1/builds/{build_id}", params={"force": "true"})
        assert_problem(r, 409, "pinned", "only an admin")
    viewer = await user_token(runtime.store, "vic", Role.VIEWER)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.test",
        headers={"Authorization": f"Bearer {viewer}"},
    ) as as_viewer:
        page = await as_viewer.get(f"/ui/builds/{build_id}")
        assert page.status_code == 200 and "data-delete" not in page.text
        assert (await as_viewer.delete(f"/api/v1/builds/{build_id}")).status_code == 403
    assert_problem(await client.delete(f"/api/v1/builds/{build_id}"), 409, "force=true")
    assert await runtime.store.get_build(build_id)  # nothing was deleted

    r = await client.delete(f"/api/v1/builds/{build_id}", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": build_id, "job": "team/app", "number": 1, "blobs_deleted": 2}
    assert_problem(await client.get(f"/api/v1/builds/{build_id}"), 404, str(build_id))
    assert await runtime.store.build_steps(build_id) == []
    assert await runtime.store.list_artifacts(build_id) == []
    assert [await runtime.blobs.exists(str(k)) for k in keys] == [False, False]
    assert (await client.get("/api/v1/jobs/team/app/builds/1")).status_code == 404
    assert_problem(await client.delete(f"/api/v1/builds/{build_id}"), 404, str(build_id))
    [event] = await db.list_audit(runtime.store, action="build.delete", limit=5)
    assert event.target == "team/app #1" and event.outcome == "success"
    detail: dict[str, Any] = event.detail or {}
    assert detail["blobs"] == 2 and detail["forced"] is True


@pytest.mark.parametrize("state", ["failed", "cancelled"])
async def test_a_failed_or_cancelled_build_is_deleted_too(
    client: httpx.AsyncClient, runtime: Runtime, state: str
) -> None:
    await _job(client)
    build = (await client.post("/api/v1/jobs/team/app/builds", json={})).json()
    if state == "cancelled":
        await client.post(f"/api/v1/builds/{build['id']}/cancel")
    else:
        agent = await register(client, "a1")
        await dispatch_once(runtime)
        [assignment] = (await poll(client, agent))["assignments"]
        base = f"/agent/v1/assignments/{assignment['assignment_id']}"
        headers = {"X-Agent-Id": str(agent)}
        await client.post(f"{base}/start", headers=headers)
        await client.post(f"{base}/finish", json={"result": "failed"}, headers=headers)
    assert (await client.get(f"/api/v1/builds/{build['id']}")).json()["state"] == state
    assert (await client.delete(f"/api/v1/builds/{build['id']}")).status_code == 200
    assert (await client.get("/api/v1/jobs/team/app/builds")).json()["items"] == []


async def test_a_config_apply_neither_sets_nor_clears_disabled(
    client: httpx.AsyncClient,
) -> None:
    source = "https://git.example.org/ops/config.git"
    files = {"jobs/team/app.yml": SPEC}
    r = await client.post("/api/v1/config/apply", json={"files": files, "source": source})
    assert r.status_code == 200, r.text
    assert (await client.post("/api/v1/jobs/team/app/disable")).json()["disabled"] is True
    files = {"jobs/team/app.yml": SPEC.replace("echo: hi", "echo: changed")}
    r = await client.post("/api/v1/config/apply", json={"files": files, "source": source})
    assert [c["action"] for c in r.json()["changes"]] == ["update"]
    job = (await client.get("/api/v1/jobs/team/app")).json()
    assert job["version"] == 2 and job["disabled"] is True
    # Disabling a job managed in a config repository is not an edit of its spec.
    assert (await client.post("/api/v1/jobs/team/app/enable")).json()["disabled"] is False
    exported = (await client.get("/api/v1/config/export")).json()["files"]
    assert "disabled" not in exported["jobs/team/app.yml"]


async def test_a_released_build_is_kept_unless_an_admin_forces_it(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    from conveyor.store.publications import list_publications, record_publication

    await _job(client)
    agent = await register(client, "a1")
    build_id = await _finished_build(client, runtime, agent)
    await record_publication(
        runtime.store,
        build_id,
        step_key="0.1",
        repository="http",
        file="out.txt",
        url="https://repo.example.org/app/out.txt",
        size=3,
        sha256="0" * 64,
        coordinates=None,
        now=runtime.clock(),
    )
    assert_problem(await client.delete(f"/api/v1/builds/{build_id}"), 409, "released")
    assert len(await list_publications(runtime.store, build_id)) == 1
    r = await client.delete(f"/api/v1/builds/{build_id}", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert_problem(await client.get(f"/api/v1/builds/{build_id}/publications"), 404, "not found")
