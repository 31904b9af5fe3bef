"""`conveyor healthcheck` (the containers' HEALTHCHECK) and CONVEYOR_ADMIN_TOKEN (the
first admin token handed in from a secret) against a real controller process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import AgentProcess, Controller, free_port, wait_agents_online

TOKEN = "cvy_handed-in-from-a-secret-0123456789abcdef"


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    monkeypatch.setenv("CONVEYOR_ADMIN_TOKEN", TOKEN)
    c = Controller(tmp_path / "controller").start()
    monkeypatch.delenv("CONVEYOR_ADMIN_TOKEN")
    try:
        yield c
    finally:
        c.stop()


def _healthcheck(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if token:
        env["CONVEYOR_TOKEN"] = token
    env["PYTHONPATH"] = os.pathsep.join(
        str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "healthcheck", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_handed_in_admin_token_is_the_admin_and_is_not_logged(controller: Controller) -> None:
    assert controller.token == TOKEN  # written to HOME/admin-token as well
    with httpx.Client(base_url=controller.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.get("/api/v1/agents").status_code == 200
    with httpx.Client(base_url=controller.url, headers={"Authorization": "Bearer cvy_other"}) as c:
        assert c.get("/api/v1/agents").status_code == 401
    assert TOKEN not in controller.log_path.read_text()


def test_healthcheck_of_a_controller(controller: Controller) -> None:
    assert _healthcheck("--url", controller.url).returncode == 0
    assert _healthcheck("--url", controller.url, "--ready").returncode == 0
    down = _healthcheck("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert down.returncode == 1
    assert "unhealthy: cannot reach" in down.stderr
    assert "Traceback" not in down.stderr


def test_healthcheck_of_an_agent(controller: Controller, tmp_path: Path) -> None:
    missing = _healthcheck("--url", controller.url, "--agent", "builder-1", token=TOKEN)
    assert missing.returncode == 1
    assert "agent 'builder-1' is not registered" in missing.stderr
    agent = AgentProcess(controller, "builder-1", tmp_path / "agent").start()
    try:
        wait_agents_online(controller, 1)
        assert (
            _healthcheck("--url", controller.url, "--agent", "builder-1", token=TOKEN).returncode
            == 0
        )
        no_token = _healthcheck("--url", controller.url, "--agent", "builder-1")
        assert no_token.returncode == 1 and "needs a token" in no_token.stderr
        wrong = _healthcheck("--url", controller.url, "--agent", "builder-1", token="cvy_nope")
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    finally:
        agent.stop()
