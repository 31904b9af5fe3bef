from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import AgentProcess, Controller, wait_agents_online
from tests.scm.gitserver import GitDaemon, GitHttp

WEBHOOK_SECRET = "s3cret-webhook-key"


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    return tmp_path / "srv"


@pytest.fixture
def git_http(git_root: Path) -> Iterator[GitHttp]:
    server = GitHttp(git_root).start()
    yield server
    server.stop()


@pytest.fixture
def git_daemon(git_root: Path) -> Iterator[GitDaemon]:
    daemon = GitDaemon(git_root).start()
    yield daemon
    daemon.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def scm_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Controller, AgentProcess]]:
    """A real controller (webhook secret set, fast trigger loop) and one real agent."""
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("CONVEYOR_TRIGGER_INTERVAL", "0.5")
    database = None
    if request.param == "postgresql":
        database = request.getfixturevalue("fresh_pg_url")
    controller = Controller(tmp_path / "controller", database).start()
    agent = AgentProcess(controller, "agent-1", tmp_path / "agent-1").start()
    try:
        wait_agents_online(controller, 1)
        yield controller, agent
    finally:
        agent.stop()
        controller.stop()


# In-process API fixtures (a prepared Runtime on SQLite and on PostgreSQL).
from tests.api.conftest import app, client, runtime  # noqa: E402, F401
