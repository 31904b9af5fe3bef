from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import AgentProcess, Controller, wait_agents_online


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Controller, list[AgentProcess]]]:
    """One real controller and two real agents (2 executors each)."""
    database = None
    if request.param == "postgresql":
        database = request.getfixturevalue("fresh_pg_url")
    controller = Controller(tmp_path / "controller", database).start()
    agents = [
        AgentProcess(controller, f"agent-{i}", tmp_path / f"agent-{i}").start() for i in (1, 2)
    ]
    try:
        wait_agents_online(controller, 2)
        yield controller, agents
    finally:
        for agent in agents:
            agent.stop()
        controller.stop()
