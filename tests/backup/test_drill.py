"""`conveyor drill` (real controller and agent subprocesses on the restored copy):
prints RTO and RPO, compares counts with the backup, fails when over a target."""

from __future__ import annotations

import re
from pathlib import Path

from tests.backup.conftest import Source, run_cli
from tests.backup.test_roundtrip import backup


def test_drill_restores_runs_a_smoke_build_and_reports(
    sqlite_source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "backups"
    backup_id = backup(sqlite_source, target)
    done = run_cli("drill", "--from", str(target), "--rto", "300", "--rpo", "86400", timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert backup_id in done.stdout
    rto = float(re.search(r"RTO: ([\d.]+)s", done.stdout).group(1))  # type: ignore[union-attr]
    rpo = float(re.search(r"RPO: ([\d.]+)s \(newest restored build\)", done.stdout).group(1))  # type: ignore[union-attr]
    assert 0 < rto < 300 and 0 <= rpo < 86400
    assert "row counts match the backup" in done.stdout
    assert "smoke build #4: succeeded" in done.stdout  # after the 3 restored builds
    assert "drill passed" in done.stdout


def test_drill_fails_when_over_the_targets(sqlite_source: Source, tmp_path: Path) -> None:
    target = tmp_path / "backups"
    backup(sqlite_source, target)
    done = run_cli("drill", "--from", str(target), "--rto", "0.01", "--rpo", "0", timeout=400)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "RTO" in done.stderr and "over the 0.01s target" in done.stderr
    assert "RPO" in done.stderr and "Traceback" not in done.stderr


def test_drill_without_backups_says_so(tmp_path: Path) -> None:
    done = run_cli("drill", "--from", str(tmp_path / "empty"))
    assert done.returncode == 2
    assert "no backup at" in done.stderr
