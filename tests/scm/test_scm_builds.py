"""Starting a build of a job with a repository by hand (API, in-process, SQLite and
PostgreSQL): the branch's current commit, the pipeline read from the repository at that
commit, and clear errors for a broken pipeline or an unknown branch."""

from __future__ import annotations

from pathlib import Path

import httpx

from conveyor.runtime import Runtime
from tests.scm.gitserver import Repo

PIPELINE = (
    "name: anything\nparameters: [{name: WHO, default: world}]\n"
    "stages:\n  - name: b\n    steps:\n      - sh: echo hello $WHO\n"
)


async def test_manual_builds_of_a_repository_pipeline(
    runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "app")
    head = repo.create({"ci/conveyor.yml": PIPELINE}, "first\n\nwith a body")
    spec = f"name: app\nscm: {{git: '{repo.file_url}', branch: main, path: ci/conveyor.yml}}\n"
    assert (await client.put("/api/v1/jobs/app", json={"spec": spec})).status_code == 201

    answer = await client.post("/api/v1/jobs/app/builds", json={"parameters": {"WHO": "git"}})
    assert answer.status_code == 201, answer.text
    build = answer.json()
    assert build["parameters"] == {"WHO": "git"}
    assert build["commit"]["sha"] == head and build["commit"]["message"] == "first\n\nwith a body"
    stored = await runtime.store.get_build(build["id"])
    assert stored.plan["checkout"]["commit"] == head
    assert stored.plan["environment"]["GIT_COMMIT"] == head
    assert [s["name"] for s in build["steps"]] == ["sh: echo hello $WHO"]

    # A broken pipeline in the repository refuses the build with file and line.
    repo.commit({"ci/conveyor.yml": "name: x\nstages: [{name: b, steps: [{make: x}]}]\n"}, "oops")
    broken = await client.post("/api/v1/jobs/app/builds", json={})
    assert broken.status_code == 400
    assert broken.json()["errors"][0].startswith("ci/conveyor.yml@")
    assert ":2: stages[0].steps[0]: unknown step type 'make'" in broken.json()["errors"][0]

    # An unknown branch is the repository's problem: 502 with git's message.
    other = spec.replace("branch: main", "branch: nope").replace("name: app", "name: app2")
    assert (await client.put("/api/v1/jobs/app2", json={"spec": other})).status_code == 201
    missing = await client.post("/api/v1/jobs/app2/builds", json={})
    assert missing.status_code == 502 and "nope" in missing.json()["detail"]
    assert len(await runtime.store.list_builds("app")) == 1
