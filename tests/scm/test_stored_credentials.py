"""Must-show: a job's repository ``credential`` resolves from the encrypted credentials
store, on the controller (polling, the mirror it reads commits from) and on the agent
(checkout). Real processes: a controller, an agent, and `git http-backend` on 127.0.0.1
behind Basic auth that requires the stored password.

Without the credential the poll records a clear error and a build cannot start; with it
polling builds the pushed commit; a credential deleted between queueing and the agent's
start fails the build with a cause naming it. The password is masked in the build log
and appears in no stored log, no ``.git/config`` and no file of the controller's home
or the agent's work folder."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.credentials.keys import create_key_file
from tests.harness import (
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)
from tests.scm.gitserver import GitHttp, Repo

PASSWORD = "pw-" + secrets.token_hex(12)
USER = "ci-bot"
HEADER = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CRED = "team-a/git-login"

PIPELINE_IN_REPO = """\
name: in-repo
stages:
  - name: build
    steps:
      - sh: |
          cat version.txt
          git log -1 --format=%s
          echo "origin: $(git config --get remote.origin.url)"
          cat .git/config
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Controller, AgentProcess]]:
    for name in list(os.environ):  # only the store may supply the credential
        if name.startswith("CONVEYOR_SCM_CREDENTIAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONVEYOR_TRIGGER_INTERVAL", "0.5")
    database = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    key_file = tmp_path / "keys" / "secret.key"
    create_key_file(key_file)
    controller = Controller(
        tmp_path / "controller", database, extra_args=["--secret-key-file", str(key_file)]
    ).start()
    agent = AgentProcess(controller, "agent-1", tmp_path / "agent-1").start()
    try:
        wait_agents_online(controller, 1)
        yield controller, agent
    finally:
        agent.stop()
        controller.stop()


def _builds(controller: Controller, job: str) -> list[dict[str, Any]]:
    with controller.client() as c:
        items: list[dict[str, Any]] = c.get(f"/api/v1/jobs/{job}/builds").json()["items"]
    return items


def _assert_no_secret(data: bytes, where: str) -> None:
    assert PASSWORD.encode() not in data, f"the password in clear in {where}"
    assert HEADER.encode() not in data, f"the Basic header in {where}"


def test_repository_credential_from_the_store(
    cluster: tuple[Controller, AgentProcess], tmp_path: Path
) -> None:
    controller, agent = cluster
    repo = Repo(tmp_path / "srv", "private")
    # The repository itself holds the password: its checkout prints it, masked.
    repo.create({"conveyor.yml": PIPELINE_IN_REPO, "version.txt": f"v1 {PASSWORD}\n"}, "first")
    server = GitHttp(tmp_path / "srv", basic_auth=f"{USER}:{PASSWORD}").start()
    try:
        url = server.url(repo)
        spec = (
            f"name: team-a/app\nscm: {{git: '{url}', branch: main, credential: {CRED}}}\n"
            "triggers: {poll: 1s, webhook: false}\n"
        )
        with controller.client() as c:
            assert c.put("/api/v1/jobs/team-a/app", json={"spec": spec}).status_code == 201

            # 1. Not stored: the poll records why, and a build cannot start.
            poll = wait_until(
                lambda: c.get("/api/v1/jobs/team-a/app/scm-poll").json().get("error"),
                60,
                what="a recorded poll error",
            )
            assert f"credential {CRED!r}" in poll and "not in the credentials store" in poll
            refused = c.post("/api/v1/jobs/team-a/app/builds", json={})
            assert refused.status_code == 400, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert CRED in refused.json()["detail"]
            assert _builds(controller, "team-a/app") == []

            # 2. Stored: polling works (the first commit is its baseline) ...
            created = c.post(
                "/api/v1/credentials",
                json={"id": CRED, "kind": "username_password", "username": USER,
                      "password": PASSWORD},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            wait_until(
                lambda: c.get("/api/v1/jobs/team-a/app/scm-heads").json(), 60, what="baseline"
            )
            status = c.get("/api/v1/jobs/team-a/app/scm-poll").json()
            assert status["error"] is None and status["succeeded_at"]

            # ... and a push is built from the stored credential, on the agent too.
            pushed = repo.commit({"version.txt": f"v2 {PASSWORD}\n"}, "second: pushed")
            builds = wait_until(
                lambda: _builds(controller, "team-a/app"), 60, what="a build from polling"
            )
            build = wait_build_finished(controller, builds[0]["id"])
            log = c.get(f"/api/v1/builds/{build['id']}/log").text
            assert build["result"] == "succeeded", log
            assert build["commit"]["sha"] == pushed
            assert "v2 ****" in log and "second: pushed" in log  # masked on the agent
            assert f"origin: {url}" in log  # no user or password in the remote URL
            assert "extraheader" not in log.lower()  # nothing of it in .git/config

            # 3. Deleted after queueing: the agent fails the build, naming the credential.
            agent.stop()
            queued = c.post("/api/v1/jobs/team-a/app/builds", json={})
            assert queued.status_code == 201, queued.text
            assert c.delete(f"/api/v1/credentials/{CRED}").status_code == 204
            agent.start()
            failed = wait_build_finished(controller, queued.json()["id"])
            assert failed["result"] == "failed"
            assert CRED in (failed["cause"] or "") and "does not exist" in failed["cause"]
            failed_log = c.get(f"/api/v1/builds/{failed['id']}/log").text
            assert "checkout failed" in failed_log and CRED in failed_log

            # The poll records the missing credential again.
            wait_until(
                lambda: c.get("/api/v1/jobs/team-a/app/scm-poll").json().get("error"),
                60,
                what="the poll error after deletion",
            )
            logs = [
                c.get(f"/api/v1/builds/{b['id']}/log").content
                for b in _builds(controller, "team-a/app")
            ]
    finally:
        server.stop()
    assert len(logs) == 2
    for data in logs:
        _assert_no_secret(data, "a build log")
    # Every file the controller and the agent wrote: database, mirrors (their config
    # included), workspaces, process logs. (The workspace's .git/config is in the log.)
    mirrors = 0
    for root in (controller.home, agent.workdir):
        for path in root.rglob("*"):
            if path.is_file():
                _assert_no_secret(path.read_bytes(), str(path))
                mirrors += path.name == "config" and path.parent.parent.name == "mirrors"
    assert mirrors == 2  # the controller's mirror and the agent's
