"""A damaged backup (a flipped byte, a missing file, a damaged manifest) fails `backup
verify` and `restore` with a clear message, and restore writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.backup.conftest import Source, run_cli
from tests.backup.test_roundtrip import backup


@pytest.fixture
def good_backup(sqlite_source: Source, tmp_path: Path) -> tuple[Path, str]:
    target = tmp_path / "backups"
    return target, backup(sqlite_source, target)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def object_file(target: Path, backup_id: str) -> Path:
    return next(p for p in (target / backup_id / "objects").rglob("*") if p.is_file())


def assert_refused(target: Path, backup_id: str, tmp_path: Path, words: str) -> None:
    verify = run_cli("backup", "verify", backup_id, "--to", str(target))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert words in verify.stderr and "damaged" in verify.stderr
    assert "Traceback" not in verify.stderr
    database = tmp_path / "restored.db"
    restore = run_cli(
        "restore",
        backup_id,
        "--from",
        str(target),
        "--database",
        f"sqlite:///{database}",
        "--blobs",
        str(tmp_path / "restored-blobs"),
    )
    assert restore.returncode == 1, restore.stdout + restore.stderr
    assert words in restore.stderr and "Traceback" not in restore.stderr
    assert not database.exists()  # nothing written: not even an empty schema
    assert not any(p.is_file() for p in (tmp_path / "restored-blobs").rglob("*"))


def test_intact_backup_verifies(good_backup: tuple[Path, str]) -> None:
    target, backup_id = good_backup
    done = run_cli("backup", "verify", backup_id, "--to", str(target))
    assert done.returncode == 0, done.stderr
    assert "intact" in done.stdout and "trial restore loaded" in done.stdout


def test_flipped_byte_in_a_blob(good_backup: tuple[Path, str], tmp_path: Path) -> None:
    target, backup_id = good_backup
    flip_byte(object_file(target, backup_id))
    assert_refused(target, backup_id, tmp_path, "is corrupt")


def test_flipped_byte_in_the_database_export(good_backup: tuple[Path, str], tmp_path: Path) -> None:
    target, backup_id = good_backup
    flip_byte(target / backup_id / "db" / "builds.jsonl.gz")
    assert_refused(target, backup_id, tmp_path, "db/builds.jsonl.gz is corrupt")


def test_missing_file(good_backup: tuple[Path, str], tmp_path: Path) -> None:
    target, backup_id = good_backup
    missing = object_file(target, backup_id)
    missing.unlink()
    assert_refused(target, backup_id, tmp_path, "is missing")


def test_damaged_manifest(good_backup: tuple[Path, str], tmp_path: Path) -> None:
    target, backup_id = good_backup
    flip_byte(target / backup_id / "manifest.json")
    assert_refused(target, backup_id, tmp_path, "does not match its checksum")


def test_incremental_whose_full_is_gone(sqlite_source: Source, tmp_path: Path) -> None:
    target = tmp_path / "backups"
    full = backup(sqlite_source, target)
    incremental = backup(sqlite_source, target, "--incremental")
    shutil.rmtree(target / full)
    assert_refused(target, incremental, tmp_path, f"backup {full}")
