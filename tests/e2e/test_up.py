"""`conveyor up`: one command starts a controller and local agents; Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.harness import free_port, wait_until


def test_up_runs_examples_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "CONVEYOR_HOME": str(home)}
    env.pop("CONVEYOR_URL", None)
    env.pop("CONVEYOR_TOKEN", None)
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "up", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        cli_file = home / "cli.json"
        wait_until(cli_file.exists, 60, what="cli.json")
        config = json.loads(cli_file.read_text())
        assert config["url"] == f"http://127.0.0.1:{port}"
        client = httpx.Client(
            base_url=config["url"], headers={"Authorization": f"Bearer {config['token']}"}
        )
        wait_until(
            lambda: len(client.get("/api/v1/agents").json()) == 2, 60, what="two local agents"
        )
        jobs = {j["name"] for j in client.get("/api/v1/jobs").json()}
        assert {"hello-world", "ops/operations"} <= jobs

        # The CLI finds URL and token in the file `conveyor up` wrote.
        run = subprocess.run(
            [sys.executable, "-m", "conveyor", "build", "start", "hello-world",
             "-p", "GREETING=howdy", "--follow"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "howdy, world" in run.stdout

        ops = subprocess.run(
            [sys.executable, "-m", "conveyor", "build", "start", "ops/operations",
             "-p", "OPERATION=deploy", "-p", "TARGET_ENV=staging", "--follow"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert ops.returncode == 0, ops.stdout + ops.stderr

        # A long build is running when Ctrl-C arrives.
        marker = tmp_path / "sleeper.pid"
        spec = tmp_path / "long.yml"
        spec.write_text(
            "name: long\nstages:\n  - name: s\n    steps:\n"
            f"      - sh: echo $$ > {marker}; sleep 600\n"
        )
        client.post("/api/v1/jobs", json={"spec": spec.read_text()}).raise_for_status()
        client.post("/api/v1/jobs/long/builds", json={}).raise_for_status()
        wait_until(marker.exists, 60, what="the long build to start")
        family = [up.pid] + [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
        family.append(int(marker.read_text()))
        client.close()

        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        wait_until(lambda: not any(_alive(pid) for pid in family), 30, what="every process to exit")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
