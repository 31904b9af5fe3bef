"""A real controller with a backup schedule: its leader loop takes the backup (as a
`conveyor backup create` subprocess) and /metrics then reports the last successful
backup from the store — what makes the BackupMissing alert meaningful."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.backup.conftest import run_cli
from tests.harness import Controller, wait_until


def test_controller_takes_scheduled_backups_and_reports_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "backups"
    # The controller subprocess reads its settings from the environment it inherits.
    monkeypatch.setenv("CONVEYOR_BACKUP_FULL_CRON", "* * * * *")  # every minute
    monkeypatch.setenv("CONVEYOR_BACKUP_TARGET", str(target))
    controller = Controller(tmp_path / "home").start()
    try:
        metrics = f"{controller.url}/metrics"
        gauge = re.compile(r"^conveyor_backup_last_success_timestamp_seconds ([0-9.e+]+)$", re.M)
        assert not gauge.search(httpx.get(metrics, timeout=10).text)  # none yet: absent
        found = wait_until(
            lambda: gauge.search(httpx.get(metrics, timeout=10).text),
            180,
            interval=2,
            what="a scheduled backup reported in /metrics",
        )
        assert abs(float(found.group(1)) - time.time()) < 300
        listed = run_cli("backup", "list", "--to", str(target))
        assert listed.returncode == 0 and "full" in listed.stdout
        backup_id = next(p.name for p in target.iterdir() if (p / "manifest.json").exists())
        verified = run_cli("backup", "verify", backup_id, "--to", str(target))
        assert verified.returncode == 0, verified.stderr
    finally:
        controller.stop()
