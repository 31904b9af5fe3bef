"""examples/ops-pipeline.yml end to end against a real local cluster: `conveyor cluster
up` (three controllers on a fresh PostgreSQL database behind real nginx, an agent
through nginx) with a notifications file whose `ops` notifier is a webhook served by
this test. The pipeline is applied and run with the CLI, as a user would:

- OPERATION=deploy succeeds: pre-check (API health), the deploy branch applies the
  pipelines of JOBS_DIR, verify finds them in place; the webhook hears `success`;
- OPERATION=update of a job that does not exist fails in the operation stage, verify
  does not run; the webhook hears `failure`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.tools import ROOT, VENV_BIN
from tests.harness import free_port, wait_until

PIPELINE = ROOT / "examples" / "ops-pipeline.yml"
DEPLOYED = """name: ops-deployed/hello
stages:
  - name: greet
    steps:
      - echo: deployed by the operations pipeline
"""


class Webhook:
    """A real HTTP endpoint recording what the `ops` notifier posts."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    # Builds get the agent's PATH: `conveyor` (and curl) must be on it.
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["CONVEYOR_HOME"] = str(home)  # the CLI reads url and token from HOME/cli.json
    # The commands run elsewhere (cwd): a relative PYTHONPATH (src) must stay ours.
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    return env


def _conveyor(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        env=_env(home),
        cwd=home.parent,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def local_cluster(fresh_pg_url: str, tmp_path: Path) -> Iterator[tuple[Path, Webhook]]:
    webhook = Webhook()
    notifications = tmp_path / "ops-notify.yml"
    notifications.write_text(f"notifiers:\n  ops:\n    type: webhook\n    url: {webhook.url}\n")
    home = tmp_path / "cluster"
    up = _conveyor(
        home,
        "cluster", "up", "--database", fresh_pg_url, "--home", str(home),
        "--port", str(free_port()), "--controllers", "3", "--agents", "1",
        "--notifications-file", str(notifications),
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield home, webhook
    finally:
        down = _conveyor(home, "cluster", "down", "--home", str(home))
        webhook.close()
        assert down.returncode == 0 or "no cluster recorded" in down.stderr, down.stderr


def _client(home: Path) -> httpx.Client:
    config = json.loads((home / "cli.json").read_text())
    return httpx.Client(
        base_url=config["url"],
        headers={"Authorization": f"Bearer {config['token']}"},
        timeout=30,
        trust_env=False,
    )


def _run(home: Path, *params: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    args = [a for p in params for a in ("-p", p)]
    result = _conveyor(home, "build", "start", "ops/pipeline", *args, "--follow", timeout=300)
    with _client(home) as c:
        builds = c.get("/api/v1/builds", params={"job": "ops/pipeline", "limit": 1}).json()
        build = c.get(f"/api/v1/builds/{builds['items'][0]['id']}").json()
    return result, build


def _stage_states(build: dict[str, Any]) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for step in build["steps"]:
        states.setdefault(step["stage"], set()).add(step["state"])
    return states


def _delivered(home: Path, webhook: Webhook, build_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with _client(home) as c:
            records = c.get(f"/api/v1/builds/{build_id}/notifications").json()
        if records and all(r["state"] == "delivered" for r in records):
            mine = [m for m in webhook.received if m.get("id") == build_id]
            return mine[0] if len(mine) == 1 else None
        return None

    found: dict[str, Any] = wait_until(done, 60, interval=0.5, what="the ops notification")
    return found


def test_ops_pipeline_deploys_and_reports_every_outcome(
    local_cluster: tuple[Path, Webhook], tmp_path: Path
) -> None:
    home, webhook = local_cluster
    applied = _conveyor(home, "job", "apply", "-f", str(PIPELINE))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "hello.yml").write_text(DEPLOYED)

    # deploy: succeeds through every stage, the job is on the cluster, `ops` is told.
    result, build = _run(
        home, "OPERATION=deploy", "TARGET_ENV=local", f"CONFIG_DIR={home}", f"JOBS_DIR={jobs}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert build["state"] == "succeeded"
    stages = _stage_states(build)
    assert stages["pre-check"] == {"succeeded"}
    assert stages["operation/deploy"] == {"succeeded"}
    assert stages["operation/scale"] == stages["operation/backup"] == {"skipped"}
    assert stages["verify"] == {"succeeded"}
    log = result.stdout
    assert "pre-check: 3 controller(s), a leader" in log
    assert "created job ops-deployed/hello" in log
    assert "verify: 1 pipeline(s) in place" in log
    with _client(home) as c:
        assert c.get("/api/v1/jobs/ops-deployed/hello").json()["version"] == 1
        assert {a["path"] for a in c.get(f"/api/v1/builds/{build['id']}/artifacts").json()} == {
            "ops-report.txt"
        }
    message = _delivered(home, webhook, build["id"])
    assert message["event"] == "success" and message["step"] == "post.success.0"
    assert message["message"].startswith("deploy on local succeeded")

    # update of a job that is not there: fails in the operation, `ops` is told.
    (jobs / "new.yml").write_text(DEPLOYED.replace("ops-deployed/hello", "ops-deployed/new"))
    result, build = _run(
        home, "OPERATION=update", "TARGET_ENV=local", f"CONFIG_DIR={home}", f"JOBS_DIR={jobs}"
    )
    assert result.returncode != 0
    assert build["state"] == "failed"
    stages = _stage_states(build)
    assert stages["pre-check"] == {"succeeded"}
    assert "failed" in stages["operation/deploy"]
    assert stages["verify"] == {"skipped"}
    assert "ops-deployed/new does not (use OPERATION=deploy)" in result.stdout
    message = _delivered(home, webhook, build["id"])
    assert message["event"] == "failure" and message["step"] == "post.failure.0"
    assert message["message"].startswith("update on local FAILED")


@pytest.mark.parametrize(
    ("operation", "branch"),
    [("deploy", "deploy"), ("update", "deploy"), ("scale", "scale"), ("backup", "backup")],
)
def test_each_operation_runs_its_branch_between_check_and_verify(
    operation: str, branch: str
) -> None:
    from conveyor.core.pipeline import parse_pipeline
    from conveyor.core.planner import plan_build

    pipeline = parse_pipeline(PIPELINE.read_text(), PIPELINE.name)
    plan = plan_build(pipeline, {"OPERATION": operation, "CONFIG_DIR": "/srv/ops/staging"})
    assert [s.name for s in plan.stages] == ["pre-check", "operation", "verify"]
    running = [s.name for s in plan.stages[1].parallel if not s.skipped]
    assert running == [f"operation/{branch}"]
    post = pipeline.post
    for block in (post.success, post.failure, post.cancelled):  # every outcome
        assert [s.notify.notifier for s in block if s.notify is not None] == ["ops"]
