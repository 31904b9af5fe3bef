"""Scheduled backups and pruning (the leader's loop) and the last-backup gauge, which
comes from the store so every controller of a cluster reports the same figure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.backup.archive import BackupSources, create_backup, list_backups
from conveyor.backup.schedule import BackupScheduler, next_due
from conveyor.blobs import FolderBlobStore
from conveyor.errors import InvalidInput
from conveyor.metrics import Metrics
from conveyor.settings import Settings
from conveyor.store import Store
from conveyor.store.backups import BackupRun, last_backup_run, record_backup_run
from tests.backup.conftest import run_cli
from tests.conftest import FakeClock


@dataclass
class Lease:
    """The leader lease seam: only ``is_leader`` is read."""

    is_leader: bool


def gauge(metrics: Metrics) -> float | None:
    return metrics.backup_last_success_timestamp_seconds.value


async def test_gauge_comes_from_the_store_on_every_controller(store: Store) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = Settings(home=Path("/nonexistent"))
    leader, follower = Metrics("c1"), Metrics("c2")
    schedulers = [
        BackupScheduler(settings, store, Lease(True), clock, leader),
        BackupScheduler(settings, store, Lease(False), clock, follower),
    ]
    for s in schedulers:
        await s.run_once()
    assert gauge(leader) is None and gauge(follower) is None  # absent: BackupMissing fires
    done = clock.now - timedelta(hours=2)
    await record_backup_run(
        store, BackupRun("b1", "full", "t", "cli", done - timedelta(minutes=1), done, True, 10)
    )
    await record_backup_run(
        store, BackupRun("", "full", "t", "cli", clock.now, clock.now, False, 0, "disk full")
    )
    await record_backup_run(
        store, BackupRun("", "prune", "t", "schedule", clock.now, clock.now, True)
    )
    for s in schedulers:
        await s.run_once()
    assert gauge(leader) == gauge(follower) == pytest.approx(done.timestamp())
    assert b"conveyor_backup_last_success_timestamp_seconds" in follower.exposition()


async def test_leader_runs_due_backups_and_prunes(tmp_path: Path) -> None:
    from conveyor.store import open_store
    from conveyor.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    store = open_store(url)
    await upgrade(store.write_engine)
    blobs = FolderBlobStore(tmp_path / "blobs")
    await blobs.put_bytes("logs/000000/1-a.log", b"a log\n")
    clock = FakeClock(datetime.now(UTC))
    settings = Settings(
        home=tmp_path,
        database_url=url,
        backup_target=str(tmp_path / "backups"),
        backup_full_cron="0 * * * *",
        backup_prune_cron="30 3 * * *",
        backup_keep_weekly_fulls=1,
        backup_keep_incremental_days=0,
    )
    metrics = Metrics("c1")
    follower = BackupScheduler(settings, store, Lease(False), clock, Metrics("c2"))
    scheduler = BackupScheduler(settings, store, Lease(True), clock, metrics)
    target = FolderBlobStore(tmp_path / "backups")
    try:
        await scheduler.run_once()
        assert await list_backups(target) == []  # not due: no full hour since it started
        # An old full backup (ten days ago) and a controller up for two days: the
        # hourly full and the 03:30 prune have both come due.
        old = await create_backup(
            BackupSources(url, blobs), target, "full", clock.now - timedelta(days=10)
        )
        for s in (scheduler, follower):
            s.started_at = clock.now - timedelta(days=2)
        await follower.run_once()
        assert [b.id for b in await list_backups(target)] == [old.id]  # only the leader works
        await scheduler.run_once()  # one job per pass: the full first
        backups = await list_backups(target)
        assert [b.kind for b in backups] == ["full", "full"]
        run = await last_backup_run(store, "schedule", "full")
        assert run is not None and run.ok and run.backup_id == backups[-1].id
        assert len(backups[-1].blobs) == 1
        assert await last_backup_run(store, "schedule", "prune") is None
        await scheduler.run_once()  # then the prune; the full is not due again
        prune = await last_backup_run(store, "schedule", "prune")
        assert prune is not None and prune.ok
        assert [b.id for b in await list_backups(target)] == [run.backup_id]
        assert gauge(metrics) == pytest.approx(run.finished_at.timestamp())
        await scheduler.run_once()  # nothing left to do
        assert [b.id for b in await list_backups(target)] == [run.backup_id]
    finally:
        await store.close()


def test_bad_cron_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a cron expression"):
        Settings(backup_full_cron="every day")
    settings = Settings.model_construct(backup_full_cron="every day")
    with pytest.raises(InvalidInput, match="backup_full_cron"):
        BackupScheduler(settings, None, Lease(True), FakeClock(), Metrics("c"))  # type: ignore[arg-type]
    done = run_cli(
        "server",
        "--home",
        str(tmp_path),
        "--port",
        "1",
        env={"CONVEYOR_BACKUP_FULL_CRON": "every day"},
    )
    assert done.returncode == 2 and "not a cron expression" in done.stderr
    assert "Traceback" not in done.stderr


def test_next_due_is_utc() -> None:
    base = datetime(2026, 12, 4, 10, 15, tzinfo=UTC)
    assert next_due("0 2 * * *", base) == datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
