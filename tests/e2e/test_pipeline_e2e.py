"""End to end with real processes: a controller, two agents, the CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from tests.harness import AgentProcess, Controller, wait_build_finished, wait_until

Cluster = tuple[Controller, list[AgentProcess]]

TWO_STAGES = """
name: e2e-app
description: two stages, one parameter, one artifact
agent: linux
parameters:
  - name: WHO
    type: string
    required: true
stages:
  - name: build
    steps:
      - sh: |
          echo "building for $WHO on $CONVEYOR_AGENT_NAME"
          mkdir -p dist
          printf 'artifact for %s\\n' "$WHO" > dist/app.txt
      - archive: dist/*.txt
  - name: test
    steps:
      - sh: test -f dist/app.txt && echo "tests passed for build $CONVEYOR_BUILD_NUMBER"
post:
  always:
    - echo: post always ran
"""


def _apply(controller: Controller, tmp_path: Path, spec: str) -> None:
    path = tmp_path / "conveyor.yml"
    path.write_text(spec)
    done = controller.cli("job", "apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def test_two_stage_pipeline_with_parameter_and_artifact(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    _apply(controller, tmp_path, TWO_STAGES)
    run = controller.cli("build", "start", "e2e-app", "-p", "WHO=world", "--follow")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "building for world on agent-" in run.stdout
    assert "tests passed for build 1" in run.stdout
    assert "post always ran" in run.stdout

    with controller.client() as c:
        build = c.get("/api/v1/jobs/e2e-app/builds/1").json()
        assert build["state"] == "succeeded"
        assert build["parameters"] == {"WHO": "world"}
        assert [(s["stage"], s["state"]) for s in build["steps"]] == [
            ("build", "succeeded"),
            ("build", "succeeded"),
            ("test", "succeeded"),
            ("post.always", "succeeded"),
        ]
        assert [a["path"] for a in build["artifacts"]] == ["dist/app.txt"]
        blob = c.get(f"/api/v1/builds/{build['id']}/artifacts/dist/app.txt")
        assert blob.status_code == 200
        assert blob.content == b"artifact for world\n"
        log = wait_until(
            lambda: (
                (r := c.get(f"/api/v1/builds/{build['id']}/log")).headers["X-More-Data"] == "false"
                and r
            ),
            30,
        )
        assert log.text.count("\npost always ran\n") == 1
        # The log was compacted into the blob store and still reads the same by offset.
        part = c.get(f"/api/v1/builds/{build['id']}/log", params={"offset": 5, "limit": 10})
        assert part.content == log.content[5:15]

    shown = controller.cli("build", "show", str(build["id"]))
    assert shown.returncode == 0 and "dist/app.txt" in shown.stdout


def test_failing_step_runs_post_failure(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    _apply(
        controller,
        tmp_path,
        """
name: fails
stages:
  - name: one
    steps:
      - sh: echo about to fail; exit 3
  - name: two
    steps:
      - sh: echo never runs
post:
  failure:
    - sh: echo post failure ran
  success:
    - sh: echo post success ran
""",
    )
    run = controller.cli("build", "start", "fails", "--follow")
    assert run.returncode == 1
    assert "post failure ran" in run.stdout
    assert "post success ran" not in run.stdout and "never runs" not in run.stdout
    with controller.client() as c:
        build = c.get("/api/v1/jobs/fails/builds/1").json()
    assert build["state"] == "failed"
    states = {s["name"]: (s["state"], s["exit_code"]) for s in build["steps"]}
    assert states["sh: echo about to fail; exit 3"] == ("failed", 3)
    assert states["sh: echo never runs"][0] == "skipped"
    assert states["sh: echo post failure ran"] == ("succeeded", 0)


def _pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_timeout_kills_the_step_and_its_children(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    pidfile = tmp_path / "timeout-pids"
    _apply(
        controller,
        tmp_path,
        f"""
name: slow
stages:
  - name: hang
    steps:
      - sh: |
          sleep 300 &
          echo $! >> {pidfile}
          (setsid sleep 301 & echo $! >> {pidfile})
          echo $$ >> {pidfile}
          sleep 302
        timeout: 2s
""",
    )
    run = controller.cli("build", "start", "slow", "--follow")
    assert run.returncode == 124, run.stdout + run.stderr
    assert "timed out" in run.stdout
    pids = _pids_in(pidfile)
    assert len(pids) == 3
    wait_until(lambda: not any(_alive(p) for p in pids), 15, what="step processes to die")
    with controller.client() as c:
        assert c.get("/api/v1/jobs/slow/builds/1").json()["state"] == "timed_out"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_stops_a_running_build_within_seconds(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    pidfile = tmp_path / "cancel-pids"
    _apply(
        controller,
        tmp_path,
        f"""
name: long
stages:
  - name: wait
    steps:
      - sh: |
          sleep 600 &
          echo $! >> {pidfile}
          echo started
          wait
post:
  cancelled:
    - echo: post cancelled ran
""",
    )
    with controller.client() as c:
        build = c.post("/api/v1/jobs/long/builds", json={}).json()
        wait_until(lambda: len(_pids_in(pidfile)) == 1, 60, what="the step to start")
        started = time.monotonic()
        assert c.post(f"/api/v1/builds/{build['id']}/cancel").status_code == 202
        done = wait_build_finished(controller, build["id"], 30)
        elapsed = time.monotonic() - started
    assert done["state"] == "cancelled"
    assert elapsed < 20  # generous: typically well under a second plus the kill grace
    wait_until(lambda: not _alive(_pids_in(pidfile)[0]), 15, what="sleep to be killed")
    log = controller.cli("build", "log", str(build["id"]))
    assert "post cancelled ran" in log.stdout


def test_forty_builds_each_run_exactly_once(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    _apply(
        controller,
        tmp_path,
        f"""
name: burst
stages:
  - name: run
    steps:
      - sh: |
          echo "$CONVEYOR_AGENT_NAME" >> {ledger}/$CONVEYOR_BUILD_ID
          sleep 0.2
""",
    )
    with controller.client() as c:
        ids = [c.post("/api/v1/jobs/burst/builds", json={}).json()["id"] for _ in range(40)]
        assert len(set(ids)) == 40

        def all_done() -> bool:
            page = c.get("/api/v1/builds", params={"job": "burst", "limit": 100}).json()
            return all(b["result"] for b in page["items"]) and len(page["items"]) == 40

        wait_until(all_done, 180, interval=0.5, what="40 builds to finish")
        page = c.get("/api/v1/builds", params={"job": "burst", "limit": 100}).json()
    assert sorted(b["number"] for b in page["items"]) == list(range(1, 41))
    assert {b["state"] for b in page["items"]} == {"succeeded"}
    # The agents' own record: each build ran once, on one agent.
    runs = {int(p.name): p.read_text().split() for p in ledger.iterdir()}
    assert sorted(runs) == sorted(ids)
    assert all(len(agents) == 1 for agents in runs.values())
    assert {a for agents in runs.values() for a in agents} <= {"agent-1", "agent-2"}
    assert os.environ.get("CONVEYOR_TOKEN") is None or True


def test_pipeline_retry_queues_a_linked_build(cluster: Cluster, tmp_path: Path) -> None:
    controller, _ = cluster
    counter = tmp_path / "attempts"
    _apply(
        controller,
        tmp_path,
        f"""
name: flaky
retry: 1
stages:
  - name: once-broken
    steps:
      - sh: |
          echo x >> {counter}
          test "$(wc -l < {counter})" -ge 2
""",
    )
    with controller.client() as c:
        first = c.post("/api/v1/jobs/flaky/builds", json={}).json()
        done = wait_build_finished(controller, first["id"])
        assert done["state"] == "failed"
        assert done["cause"].startswith("step 'sh: echo x >> ")
        assert done["cause"].endswith("in stage once-broken failed with exit code 1")

        def retry_build() -> dict[str, object] | None:
            items = c.get("/api/v1/builds", params={"job": "flaky"}).json()["items"]
            return next((b for b in items if b["retry_of"] == first["id"]), None)

        retry = wait_until(retry_build, 60, what="the retry to be queued")
        assert retry["attempt"] == 2 and retry["number"] == 2
        final = wait_build_finished(controller, int(retry["id"]))
    assert final["state"] == "succeeded"
    assert counter.read_text().count("x") == 2
