"""Disabled jobs start nothing (SQLite and PostgreSQL): the trigger loop skips them for
cron, SCM polling and upstream triggers; webhook deliveries for them are recorded as
ignored with the reason. Once enabled, the next change builds."""

from __future__ import annotations

from pathlib import Path

import httpx

from conveyor.core.states import BuildState
from conveyor.runtime import Runtime
from tests.conftest import FakeClock
from tests.scm.gitserver import Repo
from tests.scm.test_trigger_loop import _finish
from tests.scm.test_webhook_api import GLOBAL, gitlab, push

STAGES = "stages:\n  - name: b\n    steps:\n      - echo: hi\n"


async def test_trigger_loop_skips_disabled_jobs(
    runtime: Runtime, client: httpx.AsyncClient, clock: FakeClock, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "lib")
    repo.create({"README": "one"}, "one")
    specs = {
        "lib": f"name: lib\nscm: {{git: '{repo.file_url}'}}\ntriggers: {{poll: 10s}}\n{STAGES}",
        "nightly": f"name: nightly\ntriggers: {{cron: '* * * * *'}}\n{STAGES}",
        "deploy": f"name: deploy\ntriggers: {{upstream: [{{job: up, on: success}}]}}\n{STAGES}",
        "up": f"name: up\n{STAGES}",
    }
    for name, spec in specs.items():
        assert (await client.put(f"/api/v1/jobs/{name}", json={"spec": spec})).is_success
    for name in ("nightly", "deploy"):
        assert (await client.post(f"/api/v1/jobs/{name}/disable")).status_code == 200
    assert await runtime.lease.run_once()
    loop = runtime.triggers
    assert loop is not None
    assert await loop.run_once() == 0  # lib's existing commit is its baseline
    assert (await client.post("/api/v1/jobs/lib/disable")).status_code == 200
    up = (await client.post("/api/v1/jobs/up/builds", json={})).json()["id"]
    await _finish(runtime, up, BuildState.SUCCEEDED)
    repo.commit({"README": "two"}, "two")
    for _ in range(6):  # cron minutes pass, the repository changed, upstream succeeded
        clock.advance(30)
        await runtime.lease.run_once()
        assert await loop.run_once() == 0
    for name in ("lib", "nightly", "deploy"):
        assert await runtime.store.list_builds(name) == []

    # Enabled again: the next minute fires, and the commit pushed meanwhile builds.
    for name in ("lib", "nightly"):
        assert (await client.post(f"/api/v1/jobs/{name}/enable")).status_code == 200
    clock.advance(61)
    await runtime.lease.run_once()
    await loop.run_once()
    clock.advance(61)
    await loop.run_once()
    assert len(await runtime.store.list_builds("nightly")) >= 1
    [built] = await runtime.store.list_builds("lib")
    assert built.trigger.startswith("scm change main@")


async def test_webhook_for_a_disabled_job_is_ignored_with_the_reason(
    runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    runtime.settings.webhook_secret = GLOBAL
    repo = Repo(tmp_path / "srv", "app")
    repo.create({"README": "x"}, "main")
    spec = f"name: app\nscm: {{git: '{repo.file_url}'}}\n{STAGES}"
    assert (await client.put("/api/v1/jobs/app", json={"spec": spec})).is_success
    assert (await client.post("/api/v1/jobs/app/disable")).status_code == 200
    sha = repo.commit({"README": "y"}, "change")
    answer = await gitlab(client, push(repo, "refs/heads/main", sha), "Push Hook")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "ignored"
    assert answer.json()["reason"] == "app: job is disabled"
    deliveries = (await client.get("/api/v1/webhooks/deliveries")).json()
    listed = deliveries if isinstance(deliveries, list) else deliveries["items"]
    assert listed[0]["outcome"] == "ignored" and listed[0]["reason"] == "app: job is disabled"
    assert await runtime.store.list_builds("app") == []

    assert (await client.post("/api/v1/jobs/app/enable")).status_code == 200
    sha = repo.commit({"README": "z"}, "another")
    answer = await gitlab(client, push(repo, "refs/heads/main", sha), "Push Hook")
    assert answer.status_code == 202 and len(answer.json()["builds"]) == 1
