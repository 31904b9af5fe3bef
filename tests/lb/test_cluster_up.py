"""`conveyor cluster up|status|down` with real processes: three controllers on a fresh
PostgreSQL database behind the real nginx, two agents connecting through nginx, five
builds run through the load balancer, and nothing left running after `down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import free_port, wait_until

PYTHON = sys.executable

TRIVIAL = """
name: cluster-trivial
stages:
  - name: hello
    steps:
      - sh: echo "hello from $CONVEYOR_AGENT_NAME build $CONVEYOR_BUILD_NUMBER"
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}


def _cluster(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # The Typer app main.py registers as `conveyor cluster`, run directly.
    return subprocess.run(
        [PYTHON, "-m", "conveyor", "cluster", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout,
    )


def _alive(pid: int, started: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _recorded(home: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((home / "cluster.json").read_text())["processes"])
    except (OSError, ValueError, KeyError):
        return []


def _family(processes: list[dict[str, Any]]) -> dict[int, float]:
    """Every recorded process and its descendants (nginx workers, build shells): pid → start."""
    found: dict[int, float] = {}
    for p in processes:
        if not _alive(p["pid"], p["started"]):
            continue
        found[p["pid"]] = p["started"]
        try:
            for child in psutil.Process(p["pid"]).children(recursive=True):
                found[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            pass
    return found


def _kill_leftovers(family: dict[int, float]) -> None:
    for pid, started in family.items():
        if _alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(900)
def test_cluster_up_builds_through_nginx_and_down_stops_everything(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    home = tmp_path / "cluster"
    port = free_port()
    family: dict[int, float] = {}
    try:
        up = _cluster(
            tmp_path,
            "up",
            "--controllers", "3",
            "--agents", "2",
            "--database", fresh_pg_url,
            "--home", str(home),
            "--port", str(port),
            "--timeout", "180",
            timeout=600,
        )  # fmt: skip
        family = _family(_recorded(home))
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{port}"
        assert url in up.stdout

        record = json.loads((home / "cluster.json").read_text())
        assert record["url"] == url
        roles = [p["role"] for p in record["processes"]]
        assert roles.count("controller") == 3
        assert roles.count("nginx") == 1
        assert roles.count("agent") == 2
        controller_ports = {p["port"] for p in record["processes"] if p["role"] == "controller"}
        assert len(controller_ports) == 3 and port not in controller_ports

        cli = json.loads((home / "cli.json").read_text())
        assert cli["url"] == url
        headers = {"Authorization": f"Bearer {cli['token']}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            wait_until(
                lambda: (
                    sum(a["state"] == "online" for a in client.get("/api/v1/agents").json()) == 2
                ),
                120,
                interval=0.5,
                what="2 agents online through nginx",
            )
            created = client.post("/api/v1/jobs", json={"spec": TRIVIAL})
            assert created.status_code == 201, created.text
            ids = []
            for _ in range(5):
                started = client.post("/api/v1/jobs/cluster-trivial/builds", json={})
                assert started.status_code == 201, started.text
                ids.append(started.json()["id"])

            def all_finished() -> list[dict[str, Any]] | None:
                builds = [client.get(f"/api/v1/builds/{i}").json() for i in ids]
                return builds if all(b["result"] for b in builds) else None

            builds = wait_until(all_finished, 300, interval=0.5, what="5 builds to finish")
            assert [b["result"] for b in builds] == ["succeeded"] * 5, builds
            log = client.get(f"/api/v1/builds/{ids[-1]}/log").text
            assert "hello from cluster-agent-" in log

        # The requests were spread over the controllers by nginx.
        access = (home / "nginx" / "logs" / "access.log").read_text()
        used = {p for p in controller_ports if f"upstream=127.0.0.1:{p}" in access}
        assert len(used) >= 2, access[-2000:]

        # The CLI finds the cluster through HOME/cli.json.
        listed = subprocess.run(
            [PYTHON, "-m", "conveyor", "agent", "list"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**_env(), "CONVEYOR_HOME": str(home), "COLUMNS": "200"},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "cluster-agent-1" in listed.stdout and "cluster-agent-2" in listed.stdout

        # A second `up` on a running cluster is refused.
        again = _cluster(
            tmp_path, "up", "--database", fresh_pg_url, "--home", str(home),
            "--port", str(free_port()),
        )  # fmt: skip
        assert again.returncode == 2
        assert "already running" in again.stderr

        status = _cluster(tmp_path, "status", "--home", str(home))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("alive") == 6, status.stdout
        assert "dead" not in status.stdout

        family = _family(record["processes"])
        down = _cluster(tmp_path, "down", "--home", str(home), timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (home / "cluster.json").exists()
        for p in record["processes"]:
            assert not _alive(p["pid"], p["started"]), p
        wait_until(
            lambda: not any(_alive(pid, s) for pid, s in family.items()),
            30,
            what="every process of the cluster (and their children) to exit",
        )
        gone = _cluster(tmp_path, "status", "--home", str(home))
        assert gone.returncode == 2 and "no cluster recorded" in gone.stderr
    finally:
        family |= _family(_recorded(home))
        if (home / "cluster.json").exists():
            _cluster(tmp_path, "down", "--home", str(home), "--timeout", "10", timeout=180)
        _kill_leftovers(family)


def test_cluster_up_needs_postgresql(tmp_path: Path) -> None:
    for extra in ([], ["--database", f"sqlite:///{tmp_path / 'x.db'}"]):
        run = _cluster(tmp_path, "up", "--home", str(tmp_path / "c"), *extra, timeout=60)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "a cluster needs PostgreSQL" in " ".join(run.stderr.split())
        assert "Traceback" not in run.stderr
        assert not (tmp_path / "c" / "cluster.json").exists()
    down = _cluster(tmp_path, "down", "--home", str(tmp_path / "c"), timeout=60)
    assert down.returncode == 2 and "no cluster recorded" in down.stderr
