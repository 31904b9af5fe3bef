"""Webhooks through the API in-process (SQLite and PostgreSQL): GitLab tokens, tags,
merge requests, multibranch pushes and branch deletion, per-job secrets, recorded
reasons for everything ignored or rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.runtime import Runtime
from conveyor.store.scm import all_job_meta
from tests.scm.gitserver import Repo

STAGES = "stages:\n  - name: b\n    steps:\n      - echo: hi\n"
GLOBAL = "global-secret-1"


@pytest.fixture
def with_secret(runtime: Runtime) -> Runtime:
    runtime.settings.webhook_secret = GLOBAL
    return runtime


async def gitlab(
    client: httpx.AsyncClient, payload: dict[str, Any], event: str, token: str = GLOBAL
) -> httpx.Response:
    return await client.post(
        "/api/v1/webhooks/gitlab",
        content=json.dumps(payload).encode(),
        headers={"X-Gitlab-Token": token, "X-Gitlab-Event": event, "Authorization": ""},
    )


def push(repo: Repo, ref: str, sha: str, before: str = "1" * 40) -> dict[str, Any]:
    return {
        "object_kind": "tag_push" if ref.startswith("refs/tags/") else "push",
        "ref": ref,
        "before": before,
        "checkout_sha": sha,
        "after": sha,
        "project": {"git_http_url": repo.file_url},
    }


async def test_gitlab_tags_merge_requests_and_multibranch(
    with_secret: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    runtime = with_secret
    repo = Repo(tmp_path / "srv", "app")
    main = repo.create({"README": "x"}, "main")
    spec = (
        f"name: app\nscm: {{git: '{repo.file_url}', branches: 'main feature/*', tags: 'v*',"
        f" pull_requests: true}}\n{STAGES}"
    )
    assert (await client.put("/api/v1/jobs/app", json={"spec": spec})).is_success

    # A push to a new matching branch creates its branch job and builds it.
    feature = repo.commit({"f": "1"}, "feature", branch="feature/login")
    answer = await gitlab(client, push(repo, "refs/heads/feature/login", feature), "Push Hook")
    assert answer.status_code == 202, answer.text
    [build_id] = answer.json()["builds"]
    build = (await client.get(f"/api/v1/builds/{build_id}")).json()
    assert build["job"] == "app/feature-login" and build["commit"]["sha"] == feature

    # A branch the pattern does not match is ignored, with the reason recorded.
    other = repo.commit({"o": "1"}, "other", branch="experiment")
    ignored = await gitlab(client, push(repo, "refs/heads/experiment", other), "Push Hook")
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"
    assert "no job builds refs/heads/experiment" in ignored.json()["reason"]

    # Tags matching `tags` build the tagged commit.
    tag = await gitlab(client, push(repo, "refs/tags/v1.0", main), "Tag Push Hook")
    assert tag.status_code == 202
    # Merge requests build the request's head commit.
    mr = {
        "object_kind": "merge_request",
        "project": {"git_http_url": repo.file_url},
        "object_attributes": {
            "action": "open",
            "iid": 4,
            "source_branch": "feature/login",
            "target_branch": "main",
            "last_commit": {"id": feature},
        },
    }
    answer = await gitlab(client, mr, "Merge Request Hook")
    assert answer.status_code == 202
    # Tag and merge request builds go to sub-jobs of their own (test_multibranch_changes).
    tag_build, mr_build = (
        (await client.get(f"/api/v1/builds/{tag.json()['builds'][0]}")).json(),
        (await client.get(f"/api/v1/builds/{answer.json()['builds'][0]}")).json(),
    )
    assert (tag_build["job"], tag_build["commit"]["sha"], tag_build["commit"]["branch"]) == (
        "app/tag-v1.0",
        main,
        "v1.0",
    )
    assert (mr_build["job"], mr_build["commit"]["sha"]) == ("app/PR-4", feature)
    again = await gitlab(client, mr, "Merge Request Hook")
    assert again.status_code == 200 and "already built" in again.json()["reason"]

    # A wrong token is refused and recorded; nothing starts.
    refused = await gitlab(client, push(repo, "refs/heads/main", main), "Push Hook", "wrong")
    assert refused.status_code == 401

    # Deleting the branch archives its job (history kept).
    gone = push(repo, "refs/heads/feature/login", "0" * 40, before=feature)
    answer = await gitlab(client, gone, "Push Hook")
    assert "archived" in answer.json()["reason"]
    assert (await all_job_meta(runtime.store))["app/feature-login"].archived
    assert len(await runtime.store.list_builds("app/feature-login")) == 1

    deliveries = (await client.get("/api/v1/webhooks/deliveries")).json()
    assert [d["outcome"] for d in deliveries] == [
        "ignored",
        "rejected",
        "ignored",
        "accepted",
        "accepted",
        "ignored",
        "accepted",
    ]
    assert deliveries[1]["reason"] == "signature or token does not match any webhook secret"


async def test_per_job_secret_and_unconfigured_controller(
    runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "srv", "lib")
    sha = repo.create({"README": "x"}, "one")
    spec = f"name: lib\nscm: {{git: '{repo.file_url}'}}\n{STAGES}"
    assert (await client.put("/api/v1/jobs/lib", json={"spec": spec})).is_success
    # No secret anywhere: every delivery is refused, never accepted unsigned.
    answer = await gitlab(client, push(repo, "refs/heads/main", sha), "Push Hook", "")
    assert answer.status_code == 401 and "no webhook secret" in answer.json()["detail"]
    secret = await client.put("/api/v1/webhooks/secrets/lib", json={"secret": "lib-secret-9"})
    assert secret.status_code == 204
    answer = await gitlab(client, push(repo, "refs/heads/main", sha), "Push Hook", "lib-secret-9")
    assert answer.status_code == 202 and len(answer.json()["builds"]) == 1
    unknown = await client.post("/api/v1/webhooks/bitbucket", content=b"{}")
    assert unknown.status_code == 404
