"""Polling across a leader change, with real controllers on PostgreSQL: the leader is
killed (SIGKILL) and the new leader continues from the commits remembered in the store —
every pushed commit is built exactly once, none twice, none lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.ha.conftest import kill9, start_controller
from tests.harness import Controller, wait_until
from tests.scm.gitserver import Repo


def builds_of(controller: Controller, job: str) -> list[dict[str, Any]]:
    with controller.client() as c:
        items: list[dict[str, Any]] = c.get(f"/api/v1/jobs/{job}/builds").json()["items"]
    return items


def leader_id(controller: Controller) -> str | None:
    with controller.client() as c:
        leader = c.get("/api/v1/cluster").json()["leader"]
    return None if leader is None else str(leader["id"])


def test_polling_builds_each_commit_once_across_a_leader_kill(
    fresh_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TRIGGER_INTERVAL", "0.5")
    blobs = tmp_path / "blobs"
    first = start_controller(tmp_path / "c1", fresh_pg_url, blobs)
    second = start_controller(tmp_path / "c2", fresh_pg_url, blobs, token=first.token)
    controllers = {"c1": first, "c2": second}
    try:
        repo = Repo(tmp_path / "srv", "svc")
        repo.create({"v": "0"}, "zero")
        spec = (
            f"name: svc\nscm: {{git: '{repo.file_url}'}}\ntriggers: {{poll: 1s}}\n"
            "stages:\n  - name: b\n    steps:\n      - echo: hi\n"
        )
        with first.client() as c:
            assert c.put("/api/v1/jobs/svc", json={"spec": spec}).status_code == 201
        with first.client() as c:  # the baseline commit is recorded, not built
            wait_until(lambda: c.get("/api/v1/jobs/svc/scm-heads").json(), 60, what="baseline")
        one = repo.commit({"v": "1"}, "one")
        wait_until(lambda: len(builds_of(first, "svc")) == 1, 60, what="build of commit one")

        leader = wait_until(lambda: leader_id(first), 30, what="a leader")
        survivor = controllers["c2" if leader == "c1" else "c1"]
        kill9(controllers[leader])
        two = repo.commit({"v": "2"}, "two")
        wait_until(
            lambda: leader_id(survivor) == survivor.home.name, 60, what="the survivor to lead"
        )
        wait_until(lambda: len(builds_of(survivor, "svc")) == 2, 60, what="build of commit two")
        time.sleep(4)  # more polling rounds on the new leader find nothing new
        builds = builds_of(survivor, "svc")
        assert sorted(b["commit"]["sha"] for b in builds) == sorted([one, two])
    finally:
        for controller in controllers.values():
            controller.stop()
