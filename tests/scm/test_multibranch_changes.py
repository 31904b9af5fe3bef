"""Pull/merge requests and tags get sub-jobs of their own (``app/PR-12``,
``app/tag-v1.2``), each with its own history, building the request's head commit; a
closed request's or deleted tag's job is archived (history kept), a reopened one comes
back; polling leaves them alone. Deleting the multibranch parent deletes every sub-job
in the same transaction. Webhooks through the API in-process, SQLite and PostgreSQL,
on real git repositories."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conveyor.controller.triggers import TriggerLoop
from conveyor.core.states import BuildState
from conveyor.runtime import Runtime
from conveyor.store.schema import builds, jobs
from conveyor.store.scm import all_job_meta, get_heads, job_meta, scm_heads
from tests.conftest import FakeClock
from tests.scm.gitserver import Repo

STAGES = "stages:\n  - name: b\n    steps:\n      - sh: echo $CHANGE_ID $TAG_NAME\n"
GLOBAL = "global-secret-2"


@pytest.fixture
def with_secret(runtime: Runtime) -> Runtime:
    runtime.settings.webhook_secret = GLOBAL
    return runtime


async def send(
    client: httpx.AsyncClient, provider: str, event: str, payload: dict[str, Any]
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {"Authorization": "", "Content-Type": "application/json"}
    if provider == "gitlab":
        headers.update({"X-Gitlab-Token": GLOBAL, "X-Gitlab-Event": event})
    else:
        signature = hmac.new(GLOBAL.encode(), body, hashlib.sha256).hexdigest()
        prefix = "X-Gitea" if provider == "gitea" else "X-GitHub"
        headers.update({f"{prefix}-Event": event, "X-Hub-Signature-256": f"sha256={signature}"})
        if provider == "gitea":
            headers["X-Gitea-Signature"] = signature
    return await client.post(f"/api/v1/webhooks/{provider}", content=body, headers=headers)


def github_pr(repo: Repo, action: str, number: int, branch: str, sha: str) -> dict[str, Any]:
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"ref": branch, "sha": sha, "repo": {"clone_url": repo.file_url}},
            "base": {"ref": "main", "repo": {"clone_url": repo.file_url}},
        },
        "repository": {"clone_url": repo.file_url},
    }


def github_push(repo: Repo, ref: str, sha: str, before: str = "1" * 40) -> dict[str, Any]:
    return {"ref": ref, "before": before, "after": sha, "repository": {"clone_url": repo.file_url}}


async def gh_pr(
    client: httpx.AsyncClient, repo: Repo, action: str, number: int, sha: str
) -> httpx.Response:
    payload = github_pr(repo, action, number, "fix", sha)
    return await send(client, "github", "pull_request", payload)


async def build_of(client: httpx.AsyncClient, answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 202, answer.text
    [build_id] = answer.json()["builds"]
    build: dict[str, Any] = (await client.get(f"/api/v1/builds/{build_id}")).json()
    return build


async def test_pull_requests_and_tags_get_their_own_jobs(
    with_secret: Runtime, client: httpx.AsyncClient, tmp_path: Path, clock: FakeClock
) -> None:
    runtime = with_secret
    repo = Repo(tmp_path / "srv", "app")
    main = repo.create({"README": "x"}, "main")
    spec = (
        f"name: app\nscm: {{git: '{repo.file_url}', branches: 'main', tags: 'v*',"
        f" pull_requests: true}}\ntriggers: {{poll: 10s}}\n{STAGES}"
    )
    assert (await client.put("/api/v1/jobs/app", json={"spec": spec})).is_success

    # GitHub: a pull request opened builds its head commit in app/PR-12.
    head = repo.commit({"f": "1"}, "fix it", branch="fix")
    pr = await build_of(client, await gh_pr(client, repo, "opened", 12, head))
    assert (pr["job"], pr["number"], pr["commit"]["sha"]) == ("app/PR-12", 1, head)
    stored = await runtime.store.get_build(pr["id"])
    env = stored.plan["environment"]
    assert (env["CHANGE_ID"], env["CHANGE_BRANCH"], env["CHANGE_TARGET"]) == ("12", "fix", "main")
    assert env["GIT_COMMIT"] == head
    # A new push to the request builds again, in the same job's history.
    head2 = repo.commit({"f": "2"}, "fix it more", branch="fix")
    again = await build_of(client, await gh_pr(client, repo, "synchronize", 12, head2))
    assert (again["job"], again["number"], again["commit"]["sha"]) == ("app/PR-12", 2, head2)
    # Started by hand, a request's job rebuilds the last head seen.
    manual = await client.post("/api/v1/jobs/app/PR-12/builds", json={})
    assert manual.status_code == 201, manual.text
    assert manual.json()["commit"]["sha"] == head2

    # GitLab merge request 3 and a Gitea pull request 5: jobs of their own too.
    mr = {
        "object_kind": "merge_request",
        "project": {"git_http_url": repo.file_url},
        "object_attributes": {
            "action": "open",
            "iid": 3,
            "source_branch": "fix",
            "target_branch": "main",
            "last_commit": {"id": head},
        },
    }
    gl = await build_of(client, await send(client, "gitlab", "Merge Request Hook", mr))
    assert (gl["job"], gl["commit"]["sha"]) == ("app/PR-3", head)
    gitea_pr = github_pr(repo, "opened", 5, "fix", head2)
    gitea = await build_of(client, await send(client, "gitea", "pull_request", gitea_pr))
    assert gitea["job"] == "app/PR-5"

    # A tag push builds the tagged commit in app/tag-v1.2, with TAG_NAME.
    tag_push = github_push(repo, "refs/tags/v1.2", main)
    tag = await build_of(client, await send(client, "github", "push", tag_push))
    assert (tag["job"], tag["commit"]["sha"], tag["commit"]["branch"]) == (
        "app/tag-v1.2",
        main,
        "v1.2",
    )
    assert (await runtime.store.get_build(tag["id"])).plan["environment"]["TAG_NAME"] == "v1.2"

    # Polling (branch discovery) neither archives nor builds request and tag jobs.
    assert await runtime.lease.run_once() and runtime.scm is not None
    loop = TriggerLoop(runtime.store, runtime.builds, runtime.scm, runtime.lease, clock, 10.0)
    await loop.run_once()  # creates and builds app/main
    clock.advance(11)
    await loop.run_once()
    meta = await all_job_meta(runtime.store)
    assert {n: (m.sub_kind, m.archived) for n, m in meta.items()} == {
        "app/main": ("branch", False),
        "app/PR-12": ("pr", False),
        "app/PR-3": ("pr", False),
        "app/PR-5": ("pr", False),
        "app/tag-v1.2": ("tag", False),
    }
    assert len(await runtime.store.list_builds("app/PR-12")) == 3
    assert await runtime.store.list_builds("app") == []  # nothing on the parent itself

    # Closing the request archives its job (history kept); starting it is refused.
    closed = await gh_pr(client, repo, "closed", 12, head2)
    assert closed.status_code == 200 and "app/PR-12: pull request closed" in closed.text
    assert (await all_job_meta(runtime.store))["app/PR-12"].archived
    refused = await client.post("/api/v1/jobs/app/PR-12/builds", json={})
    assert refused.status_code == 409 and "pull request was closed" in refused.json()["detail"]
    assert len(await runtime.store.list_builds("app/PR-12")) == 3
    merged = {**mr, "object_attributes": {**mr["object_attributes"], "action": "merge"}}
    assert "archived" in (await send(client, "gitlab", "Merge Request Hook", merged)).text
    # Reopened: back, and built.
    head3 = repo.commit({"f": "3"}, "fix it again", branch="fix")
    back = await build_of(client, await gh_pr(client, repo, "reopened", 12, head3))
    assert (back["job"], back["number"]) == ("app/PR-12", 4)
    assert not (await all_job_meta(runtime.store))["app/PR-12"].archived

    # A deleted tag archives its job.
    tag_gone = github_push(repo, "refs/tags/v1.2", "0" * 40, before=main)
    gone = await send(client, "github", "push", tag_gone)
    assert "app/tag-v1.2: tag, job archived" in gone.text
    assert (await all_job_meta(runtime.store))["app/tag-v1.2"].archived


async def test_deleting_a_multibranch_job_deletes_its_sub_jobs(
    with_secret: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    runtime = with_secret
    repo = Repo(tmp_path / "srv", "svc")
    main = repo.create({"README": "x"}, "main")
    feature = repo.commit({"f": "1"}, "feature", branch="feature/x")
    spec = (
        f"name: svc\nscm: {{git: '{repo.file_url}', branches: 'main feature/*', tags: 'v*',"
        f" pull_requests: true}}\n{STAGES}"
    )
    assert (await client.put("/api/v1/jobs/svc", json={"spec": spec})).is_success
    other = f"name: svc-other\n{STAGES}"  # a job whose name merely starts alike
    assert (await client.put("/api/v1/jobs/svc-other", json={"spec": other})).is_success
    started = []
    for provider, event, payload in (
        ("github", "push", github_push(repo, "refs/heads/main", main)),
        ("github", "push", github_push(repo, "refs/heads/feature/x", feature)),
        ("github", "push", github_push(repo, "refs/tags/v2", main)),
        ("github", "pull_request", github_pr(repo, "opened", 7, "feature/x", feature)),
    ):
        answer = await send(client, provider, event, payload)
        assert answer.status_code == 202, answer.text
        started += answer.json()["builds"]
    # Archived sub-jobs go too.
    deleted = github_push(repo, "refs/heads/feature/x", "0" * 40, feature)
    assert (await send(client, "github", "push", deleted)).is_success
    names = [j["name"] for j in (await client.get("/api/v1/jobs")).json()]
    subs = ["svc/PR-7", "svc/feature-x", "svc/main", "svc/tag-v2"]
    assert names == ["svc", "svc-other", *subs]

    # With a build of a sub-job still running, nothing is deleted.
    assert len(started) == 4
    await _set_state(runtime, started[1], BuildState.RUNNING)
    blocked = await client.delete("/api/v1/jobs/svc")
    assert blocked.status_code == 409 and "sub-jobs" in blocked.json()["detail"]
    assert [j["name"] for j in (await client.get("/api/v1/jobs")).json()] == names
    await _set_state(runtime, started[1], BuildState.SUCCEEDED)

    assert (await client.delete("/api/v1/jobs/svc")).status_code == 204
    assert [j["name"] for j in (await client.get("/api/v1/jobs")).json()] == ["svc-other"]
    for sub in subs:
        assert (await client.get(f"/api/v1/jobs/{sub}")).status_code == 404
        assert await get_heads(runtime.store, sub) == {}
    async with runtime.store.read() as conn:  # no orphan row anywhere
        assert await conn.scalar(select(func.count()).select_from(builds)) == 0
        assert await conn.scalar(select(func.count()).select_from(job_meta)) == 0
        names_left = await conn.scalars(select(jobs.c.name))
        assert list(names_left) == ["svc-other"]
        assert await conn.scalar(select(func.count()).select_from(scm_heads)) == 0

    # A new job of the same name starts afresh: no stale heads, no old sub-jobs.
    assert (await client.put("/api/v1/jobs/svc", json={"spec": spec})).status_code == 201
    assert await get_heads(runtime.store, "svc/main") == {}


async def _set_state(runtime: Runtime, build_id: int, state: BuildState) -> None:
    from sqlalchemy import update

    async with runtime.store.write() as conn:
        await conn.execute(update(builds).where(builds.c.id == build_id).values(state=state.value))
