"""Real processes for end-to-end tests: a controller (`conveyor server`) and agents
(`conveyor agent`) started as subprocesses on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (generous liveness bound)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Controller:
    home: Path
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Controller:
        self.home.mkdir(parents=True, exist_ok=True)
        args = [
            PYTHON,
            "-m",
            "conveyor",
            "server",
            "--home",
            str(self.home),
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        if self.database_url:
            args += ["--database", self.database_url]
        self.log_path = self.home / "controller.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._ready, 60, what=f"controller on {self.url}")
        self.token = (self.home / "admin-token").read_text().strip()
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL, as in a crash: no graceful shutdown. ``start()`` runs a new process
        on the same port and home."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the `conveyor` CLI against this controller."""
        env = {**os.environ, "CONVEYOR_URL": self.url, "CONVEYOR_TOKEN": self.token}
        return subprocess.run(
            [PYTHON, "-m", "conveyor", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=self.home,
        )


@dataclass
class AgentProcess:
    controller: Controller
    name: str
    workdir: Path
    labels: str = "linux"
    executors: int = 2
    proc: subprocess.Popen[bytes] | None = None
    #: Its enrollment token (created through the API at the first start).
    token: str | None = None

    def enrol(self) -> str:
        """An enrollment token for this agent name, made with the admin token (retried:
        the controller may still be starting or failing over)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.post(
                    f"{self.controller.url}/api/v1/agent-tokens",
                    json={"agent_name": self.name},
                    headers={"Authorization": f"Bearer {self.controller.token}"},
                    timeout=10,
                )
                if r.status_code == 201:
                    return str(r.json()["token"])
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot enrol agent {self.name} at {self.controller.url}")
            time.sleep(0.5)

    def start(self) -> AgentProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "agent.log"
        if self.token is None:
            self.token = self.enrol()
        env = {**os.environ, "CONVEYOR_TOKEN": self.token}
        args = [
            PYTHON,
            "-m",
            "conveyor",
            "agent",
            "--url",
            self.controller.url,
            "--name",
            self.name,
            "--labels",
            self.labels,
            "--executors",
            str(self.executors),
            "--workdir",
            str(self.workdir),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def wait_agents_online(controller: Controller, count: int) -> None:
    with controller.client() as c:
        wait_until(
            lambda: sum(a["state"] == "online" for a in c.get("/api/v1/agents").json()) >= count,
            60,
            what=f"{count} agents online",
        )


def wait_build_finished(controller: Controller, build_id: int, timeout: float = 120) -> Any:
    with controller.client() as c:
        return wait_until(
            lambda: (b := c.get(f"/api/v1/builds/{build_id}").json())["result"] and b,
            timeout,
            interval=0.2,
            what=f"build {build_id} to finish",
        )
