"""`conveyor backup prune`: the retention policy applied to a real target, with
--dry-run, chains kept whole, and interrupted backups cleaned up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor.backup.archive import BackupSources, create_backup
from conveyor.blobs import FolderBlobStore
from tests.backup.conftest import Source, run_cli


def test_prune_keeps_chains_and_removes_the_rest(sqlite_source: Source, tmp_path: Path) -> None:
    target = tmp_path / "backups"
    now = datetime.now(UTC)

    async def make() -> dict[str, str]:
        store = FolderBlobStore(target)
        sources = BackupSources(sqlite_source.database_url, FolderBlobStore(sqlite_source.blob_dir))
        made = {}
        for name, kind, days in (
            ("old-full", "full", 70),
            ("old-inc", "incremental", 69),
            ("full-40", "full", 40),
            ("inc-20", "incremental", 20),
            ("full-1", "full", 1),
        ):
            made[name] = (await create_backup(sources, store, kind, now - timedelta(days=days))).id  # type: ignore[arg-type]
        return made

    made = asyncio.run(make())
    interrupted = target / f"{(now - timedelta(days=3)):%Y%m%dT%H%M%SZ}-full-dead00"
    (interrupted / "db").mkdir(parents=True)
    (interrupted / "db" / "jobs.jsonl.gz").write_bytes(b"partial")
    in_progress = target / f"{now:%Y%m%dT%H%M%SZ}-full-live00"
    (in_progress / "db").mkdir(parents=True)

    args = [
        "backup",
        "prune",
        "--to",
        str(target),
        "--keep-weekly",
        "1",
        "--keep-incremental-days",
        "30",
    ]
    dry = run_cli(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {made['old-full']}" in dry.stdout
    assert f"keep    {made['full-40']}  (needed by {made['inc-20']})" in dry.stdout
    assert all((target / backup_id).is_dir() for backup_id in made.values())  # dry run

    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in target.iterdir())
    assert left == sorted([made["full-40"], made["inc-20"], made["full-1"], in_progress.name])
    listed = run_cli("backup", "list", "--to", str(target))
    assert made["inc-20"] in listed.stdout and made["old-full"] not in listed.stdout
    verified = run_cli("backup", "verify", made["inc-20"], "--to", str(target))
    assert verified.returncode == 0, verified.stderr
