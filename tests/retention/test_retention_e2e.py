"""End to end with a real controller and agent: the log size limit (controller default
and a job's own) cuts a build's log with one line while the build goes on; build
history retention from a job's ``retention:`` block, previewed with
``conveyor retention run --dry-run`` and applied with ``conveyor retention run``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)

NOISY = """
name: noisy
stages:
  - name: print
    steps:
      - sh: head -c 3000000 /dev/zero | tr '\\0' 'n'; echo; echo still-running > marker
      - sh: test -f marker
"""

SMALL = """
name: small
log_limit: 8KB
stages:
  - name: print
    steps:
      - sh: for i in $(seq 1 5000); do echo "line $i"; done
"""

HISTORY = """
name: history
retention:
  builds: 1
stages:
  - name: s
    steps:
      - sh: echo build $CONVEYOR_BUILD_NUMBER
"""


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    monkeypatch.setenv("CONVEYOR_LOG_LIMIT_MB", "1")
    controller = Controller(tmp_path / "controller").start()
    agent = AgentProcess(controller, "limits-agent", tmp_path / "agent").start()
    try:
        wait_agents_online(controller, 1)
        yield controller
    finally:
        agent.stop()
        controller.stop()


def _run(controller: Controller, tmp_path: Path, spec: str, job: str) -> dict[str, object]:
    path = tmp_path / f"{job}.yml"
    path.write_text(spec)
    applied = controller.cli("job", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    with controller.client() as c:
        build = c.post(f"/api/v1/jobs/{job}/builds", json={}).json()
    done: dict[str, object] = wait_build_finished(controller, int(build["id"]))
    return done


def _final_log(controller: Controller, build_id: object) -> bytes:
    with controller.client() as c:
        response = wait_until(
            lambda: (
                (r := c.get(f"/api/v1/builds/{build_id}/log")).headers["X-More-Data"] == "false"
                and r
            ),
            60,
            what="the final log",
        )
        return bytes(response.content)


def test_log_limits_cut_the_log_and_the_build_goes_on(
    controller: Controller, tmp_path: Path
) -> None:
    noisy = _run(controller, tmp_path, NOISY, "noisy")
    assert noisy["result"] == "succeeded"
    log = _final_log(controller, noisy["id"])
    line = b"[conveyor] log truncated at 1 MB (limit 1 MB, controller log_limit_mb)"
    assert log.count(b"[conveyor] log truncated") == 1 and line in log
    assert 1024 * 1024 <= len(log) <= 1024 * 1024 + 200
    assert log.count(b"n") < 1024 * 1024 + 10  # the rest never reached the controller

    small = _run(controller, tmp_path, SMALL, "small")
    assert small["result"] == "succeeded"
    log = _final_log(controller, small["id"])
    assert b"[conveyor] log truncated at 8 KB (limit 8 KB, job log_limit)" in log
    assert len(log) <= 8192 + 200
    assert b"line 5000" not in log


def test_history_retention_preview_and_run(controller: Controller, tmp_path: Path) -> None:
    builds = [_run(controller, tmp_path, HISTORY, "history") for _ in range(3)]
    assert all(b["result"] == "succeeded" for b in builds)
    ids = [b["id"] for b in builds]

    preview = controller.cli("retention", "run", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "delete build history #1" in preview.stdout
    assert "delete build history #2" in preview.stdout
    assert "#3" not in preview.stdout
    assert "would delete 2 builds" in preview.stdout
    with controller.client() as c:
        assert c.get(f"/api/v1/builds/{ids[0]}").status_code == 200  # nothing deleted yet

    applied = controller.cli("retention", "run")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("freed ")
    with controller.client() as c:
        for gone in ids[:2]:
            answer = c.get(f"/api/v1/builds/{gone}")
            assert answer.status_code == 404
            assert answer.headers["content-type"].startswith("application/problem+json")
        assert c.get(f"/api/v1/builds/{ids[2]}").json()["result"] == "succeeded"
        assert c.get("/api/v1/retention/preview").json()["builds"] == []
        metrics = c.get("/metrics").text
    assert "conveyor_retention_builds_deleted_total" in metrics
    controller_log = (controller.home / "controller.log").read_text()
    assert "retention.history_pruned" in controller_log
