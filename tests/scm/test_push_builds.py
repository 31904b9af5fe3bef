"""A push builds the pushed commit exactly once: through a signed webhook, or through
polling when webhooks are off. Real git servers (HTTP `git http-backend`, `git daemon`),
a real controller and a real agent that checks the commit out from its mirror cache."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from tests.harness import Controller, wait_build_finished, wait_until
from tests.scm.conftest import WEBHOOK_SECRET
from tests.scm.gitserver import GitDaemon, GitHttp, Repo

PIPELINE_IN_REPO = """\
name: ignored-in-repo
stages:
  - name: build
    steps:
      - sh: cat version.txt && git log -1 --format=%s
"""


def _job_spec(name: str, url: str, poll: bool = False) -> str:
    triggers = "triggers: {poll: 1s, webhook: false}\n" if poll else ""
    # The pipeline itself lives in the repository (no stages here).
    return f"name: {name}\nscm: {{git: '{url}', branch: main, path: conveyor.yml}}\n{triggers}"


def _github_push(url: str, sha: str, before: str) -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "before": before,
        "after": sha,
        "repository": {"clone_url": url, "html_url": url.removesuffix(".git")},
        "head_commit": {"id": sha},
    }


def _send(controller: Controller, payload: dict[str, Any], secret: str) -> Any:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    with controller.client() as c:
        return c.post(
            "/api/v1/webhooks/github",
            content=body,
            headers={
                "Authorization": "",  # webhooks carry no bearer token
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": f"d-{sha_short(payload['after'])}-{secret[:3]}",
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
        )


def sha_short(sha: str) -> str:
    return sha[:8]


def _builds(controller: Controller, job: str) -> list[dict[str, Any]]:
    with controller.client() as c:
        items: list[dict[str, Any]] = c.get(f"/api/v1/jobs/{job}/builds").json()["items"]
    return items


def _log(controller: Controller, build_id: int) -> str:
    with controller.client() as c:
        return c.get(f"/api/v1/builds/{build_id}/log").text


def test_signed_webhook_builds_the_pushed_commit_once(
    scm_cluster: Any, git_http: GitHttp, git_root: Any
) -> None:
    controller, _ = scm_cluster
    repo = Repo(git_root, "app")
    first = repo.create({"conveyor.yml": PIPELINE_IN_REPO, "version.txt": "v1\n"}, "first")
    url = git_http.url(repo)
    with controller.client() as c:
        assert c.put("/api/v1/jobs/app", json={"spec": _job_spec("app", url)}).status_code == 201

    pushed = repo.commit({"version.txt": "v2-pushed\n"}, "second: bump version")

    # A forged delivery is refused with 401 and recorded, and starts nothing.
    forged = _send(controller, _github_push(url, pushed, first), "not-the-secret")
    assert forged.status_code == 401
    assert forged.headers["content-type"].startswith("application/problem+json")
    assert "signature" in forged.json()["detail"]

    answer = _send(controller, _github_push(url, pushed, first), WEBHOOK_SECRET)
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "accepted" and len(answer.json()["builds"]) == 1
    # The same delivery again (GitHub redelivers) starts nothing new.
    again = _send(controller, _github_push(url, pushed, first), WEBHOOK_SECRET)
    assert again.status_code == 200 and again.json()["builds"] == []
    assert "already built" in again.json()["reason"]

    build_id = answer.json()["builds"][0]
    build = wait_build_finished(controller, build_id)
    assert build["result"] == "succeeded", _log(controller, build_id)
    assert build["commit"]["sha"] == pushed
    assert build["commit"]["branch"] == "main"
    assert build["commit"]["author"] == "Ada Lovelace"
    assert build["commit"]["message"] == "second: bump version"
    log = _log(controller, build_id)
    assert "v2-pushed" in log and "second: bump version" in log  # the pushed commit's tree
    assert len(_builds(controller, "app")) == 1

    with controller.client() as c:
        deliveries = c.get("/api/v1/webhooks/deliveries").json()
    outcomes = [(d["outcome"], d["builds"]) for d in deliveries]
    assert outcomes == [("ignored", []), ("accepted", [build_id]), ("rejected", [])]
    rejected = deliveries[-1]
    assert "signature" in rejected["reason"] and rejected["sha"] == pushed
    # No secret or signature is ever stored.
    assert WEBHOOK_SECRET not in json.dumps(deliveries)
    assert "sha256=" not in json.dumps(deliveries)


def test_polling_builds_a_push_once_when_webhooks_are_off(
    scm_cluster: Any, git_daemon: GitDaemon, git_root: Any
) -> None:
    controller, _ = scm_cluster
    repo = Repo(git_root, "svc")
    repo.create({"conveyor.yml": PIPELINE_IN_REPO, "version.txt": "v1\n"}, "first")
    url = git_daemon.url(repo)
    with controller.client() as c:
        spec = _job_spec("svc", url, poll=True)
        assert c.put("/api/v1/jobs/svc", json={"spec": spec}).status_code == 201
    # The job's existing commit is a baseline, not news.
    with controller.client() as c:
        wait_until(lambda: c.get("/api/v1/jobs/svc/scm-heads").json(), 60, what="baseline")
    time.sleep(2)  # a few more polling rounds
    assert _builds(controller, "svc") == []

    pushed = repo.commit({"version.txt": "v2-polled\n"}, "second: polled")
    builds = wait_until(lambda: _builds(controller, "svc"), 60, what="a build from polling")
    build = wait_build_finished(controller, builds[0]["id"])
    assert build["result"] == "succeeded", _log(controller, build["id"])
    assert build["commit"]["sha"] == pushed
    assert "v2-polled" in _log(controller, build["id"])
    # More polling rounds find nothing new: still exactly one build.
    time.sleep(4)
    assert len(_builds(controller, "svc")) == 1
    # A webhook for this job is ignored: its webhooks are off.
    answer = _send(controller, _github_push(url, pushed, pushed), WEBHOOK_SECRET)
    assert answer.status_code == 200 and answer.json()["builds"] == []
    assert "webhooks are off" in answer.json()["reason"]
