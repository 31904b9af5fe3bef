"""A real cluster for HA tests: fresh PostgreSQL database, three controllers
sharing it and one blob folder, a real nginx in front, agents through nginx."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conveyor.lb.render import Endpoint, LbOptions, render_nginx
from tests.harness import AgentProcess, Controller, free_port, wait_until

LEASE_TTL = 2.0
AGENT_TIMEOUT = 6.0


@dataclass
class Nginx:
    root: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        for sub in ("", "temp", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(
            render_nginx(
                LbOptions(
                    controllers=tuple(Endpoint("127.0.0.1", p) for p in self.upstreams),
                    listen=Endpoint("127.0.0.1", self.port),
                    prefix_dir=self.root,
                    foreground=True,
                )
            )
        )
        with (self.root / "stdout.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", f"{self.root}/"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._up, 30, what="nginx")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(self.root / 'stdout.log').read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Cluster:
    controllers: list[Controller]
    nginx: Nginx
    agents: list[AgentProcess]
    ledger: Path

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def token(self) -> str:
        return self.controllers[0].token

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def controller(self, controller_id: str) -> Controller:
        return next(c for c in self.controllers if c.home.name == controller_id)


def kill9(controller: Controller) -> None:
    assert controller.proc is not None
    os.killpg(controller.proc.pid, signal.SIGKILL)
    controller.proc.wait()


def start_controller(
    home: Path, database: str, blobs: Path, port: int | None = None, token: str | None = None
) -> Controller:
    controller = Controller(
        home,
        database,
        extra_args=[
            "--blob-dir", str(blobs),
            "--controller-id", home.name,
            "--lease-ttl", str(LEASE_TTL),
            "--agent-timeout", str(AGENT_TIMEOUT),
        ],
    )  # fmt: skip
    if port is not None:
        controller.port = port
    if token is not None:
        # Only the first controller of a store creates the admin token; share it.
        home.mkdir(parents=True, exist_ok=True)
        (home / "admin-token").write_text(token + "\n")
    return controller.start()


@pytest.fixture
def cluster(fresh_pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    blobs = tmp_path / "blobs"
    controllers: list[Controller] = []
    nginx: Nginx | None = None
    agents: list[AgentProcess] = []
    try:
        # The first controller migrates and creates the admin token; the others share it.
        controllers.append(start_controller(tmp_path / "c1", fresh_pg_url, blobs))
        for i in (2, 3):
            controllers.append(
                start_controller(
                    tmp_path / f"c{i}", fresh_pg_url, blobs, token=controllers[0].token
                )
            )
        nginx = Nginx(tmp_path / "nginx", [c.port for c in controllers]).start()
        front = Controller(tmp_path / "lb-client")  # only for its URL/token plumbing
        front.port, front.token = nginx.port, controllers[0].token
        agents = [
            AgentProcess(front, f"agent-{i}", tmp_path / f"agent-{i}", executors=2).start()
            for i in (1, 2)
        ]
        cluster = Cluster(controllers, nginx, agents, tmp_path / "ledger")
        cluster.ledger.mkdir()
        with cluster.client() as c:
            wait_until(
                lambda: sum(a["state"] == "online" for a in c.get("/api/v1/agents").json()) == 2,
                60,
                what="agents online through nginx",
            )
        yield cluster
    finally:
        for agent in agents:
            agent.stop()
        if nginx is not None:
            nginx.stop()
        for c in controllers:
            c.stop()
