"""`conveyor store migrate`: a one-machine SQLite install moved onto PostgreSQL, every
row identical, row counts compared and printed; bad input is a message, not a trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.backup.conftest import Source, logical_rows, run_cli


def test_sqlite_to_postgresql(sqlite_source: Source, new_pg: Any) -> None:
    dest = new_pg()
    before = logical_rows(sqlite_source.database_url)
    done = run_cli("store", "migrate", "--from", sqlite_source.database_url, "--to", dest)
    assert done.returncode == 0, done.stderr
    assert "every table's count matches" in done.stdout
    assert "builds" in done.stdout
    assert logical_rows(dest) == before
    again = run_cli("store", "migrate", "--from", sqlite_source.database_url, "--to", dest)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_bad_input(tmp_path: Path) -> None:
    missing = run_cli(
        "store",
        "migrate",
        "--from",
        f"sqlite:///{tmp_path / 'nope.db'}",
        "--to",
        f"sqlite:///{tmp_path / 'to.db'}",
    )
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr
    assert "Traceback" not in missing.stderr
    scheme = run_cli("store", "migrate", "--from", "mysql://x/y", "--to", "sqlite:///x.db")
    assert scheme.returncode == 2 and "unsupported database URL" in scheme.stderr
    same = run_cli("store", "migrate", "--from", "sqlite:///a.db", "--to", "sqlite:///a.db")
    assert same.returncode == 2 and "same database" in same.stderr
    target = run_cli("backup", "list", "--to", "ftp://host/x")
    assert target.returncode == 2 and "unsupported blob store URL" in target.stderr
    restore = run_cli(
        "restore",
        "nope",
        "--from",
        str(tmp_path),
        "--database",
        f"sqlite:///{tmp_path / 'r.db'}",
    )
    assert restore.returncode == 2 and "no backup 'nope'" in restore.stderr
    assert "Traceback" not in restore.stderr
