"""`conveyor pool …` and `conveyor scaling decisions` against a real controller."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.harness import Controller, wait_until


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    monkeypatch.setenv("CONVEYOR_AUTOSCALE_INTERVAL", "1")
    c = Controller(tmp_path / "home").start()
    yield c
    c.stop()


def cli(c: Controller, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CONVEYOR_URL": c.url, "CONVEYOR_TOKEN": c.token, "COLUMNS": "200"},
    )


def test_pool_commands(controller: Controller, tmp_path: Path) -> None:
    # A period that is not in effect while the test runs (twelve hours from now in its
    # zone), so that `pool set --min 1` decides the size, whatever the time of day.
    off_hour = (datetime.now(ZoneInfo("Europe/Berlin")).hour + 12) % 24
    pool_file = tmp_path / "pool.yml"
    pool_file.write_text(
        "name: builders\nlabels: [linux, docker]\nmin: 0\nmax: 0\nexecutors: 2\n"
        "provider: local\npolicy:\n  scale_up_wait_seconds: 15\n  periods:\n"
        f"    - {{name: nights, cron: '* {off_hour} * * *', timezone: Europe/Berlin, min: 0}}\n"
    )
    added = cli(controller, "pool", "add", "-f", str(pool_file))
    assert added.returncode == 0, added.stderr
    assert "created pool builders (local, 0–0 agents, labels docker,linux)" in added.stdout
    listed = cli(controller, "pool", "list")
    assert "builders" in listed.stdout and "local" in listed.stdout

    grown = cli(controller, "pool", "set", "builders", "--max", "1", "--min", "1")
    assert grown.returncode == 0 and "1–1 agents" in grown.stdout
    wait_until(
        lambda: "online" in cli(controller, "pool", "show", "builders").stdout,
        60,
        what="the pool's agent",
    )
    shown = cli(controller, "pool", "show", "builders")
    assert "scale_up_wait_seconds" in shown.stdout and "builders-" in shown.stdout
    decisions = cli(controller, "scaling", "decisions", "builders")
    assert "pool builders 0 → 1: below the minimum 1" in decisions.stdout

    # Bad input: a message and exit 2, nothing changed.
    bad = cli(controller, "pool", "set", "builders", "--min", "5")
    assert bad.returncode == 2 and "min 5 > max 1" in bad.stderr and "Traceback" not in bad.stderr
    refused = cli(controller, "pool", "rm", "builders")
    assert refused.returncode == 2 and "still has 1 agent" in refused.stderr
    assert cli(controller, "pool", "add", "x", "--provider", "ec2").returncode == 2
    assert cli(controller, "pool", "add", "-f", str(tmp_path / "missing.yml")).returncode == 2

    assert cli(controller, "pool", "set", "builders", "--min", "0", "--max", "0").returncode == 0
    wait_until(
        lambda: cli(controller, "pool", "rm", "builders").returncode == 0,
        60,
        interval=1,
        what="the pool to empty and be deleted",
    )
    assert "builders" not in cli(controller, "pool", "list").stdout
