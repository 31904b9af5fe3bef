"""Backups that leave a record, and the scheduler loop that takes them.

``run_backup`` takes a backup and records the attempt in the source store's
``backup_runs`` table (ok or not), so ``conveyor_backup_last_success_timestamp_seconds``
comes from the store and is the same on every controller of a cluster.

``BackupScheduler`` is a controller loop (every controller runs it):

* each pass, it sets the gauge from the newest successful run in the store;
* on the leader only, it starts the full / incremental backup whose cron expression
  (UTC) has come due since its last scheduled run, and prunes when the prune cron is
  due. A schedule that never ran is first due at its first time after this controller
  started. The backup itself runs as a ``conveyor backup create`` subprocess so the
  controller's event loop keeps serving while gigabytes are compressed and hashed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

import structlog
from croniter import croniter

from conveyor.backup.archive import BackupSources, create_backup, prune_backups
from conveyor.backup.manifest import Manifest
from conveyor.backup.progress import QUIET, Reporter
from conveyor.blobs import BlobStore, open_blob_store
from conveyor.core.backup_retention import BackupRetention, Kind
from conveyor.errors import InvalidInput
from conveyor.store import Store, open_store
from conveyor.store.backups import (
    BackupRun,
    last_backup_run,
    last_successful_backup_at,
    record_backup_run,
)

log = structlog.get_logger(__name__)

#: Seconds between two scheduler passes.
SCHEDULER_INTERVAL = 30.0
#: A scheduled backup that runs longer than this is killed (and recorded as failed).
BACKUP_TIMEOUT = 6 * 3600.0


async def run_backup(
    sources: BackupSources,
    target: BlobStore,
    kind: Kind,
    trigger: str,
    *,
    now: datetime | None = None,
    reporter: Reporter = QUIET,
) -> Manifest:
    started = now or datetime.now(UTC)
    try:
        manifest = await create_backup(sources, target, kind, started, reporter)
    except Exception as exc:
        await _record(
            sources.database_url,
            BackupRun(
                "", kind, target.describe(), trigger, started, datetime.now(UTC), False, 0, str(exc)
            ),
        )
        raise
    await _record(
        sources.database_url,
        BackupRun(
            manifest.id,
            manifest.kind,
            target.describe(),
            trigger,
            started,
            datetime.now(UTC),
            True,
            manifest.size,
        ),
    )
    return manifest


async def _record(database_url: str, run: BackupRun) -> None:
    store = open_store(database_url)
    try:
        await record_backup_run(store, run)
    except Exception as exc:  # a backup is not undone because its record could not be written
        log.warning("backup.record_failed", error=str(exc), backup=run.backup_id)
    finally:
        await store.close()


def check_cron(expression: str, setting: str) -> str:
    if not croniter.is_valid(expression):
        raise InvalidInput(f"{setting}: {expression!r} is not a cron expression")
    return expression


def next_due(expression: str, after: datetime) -> datetime:
    due = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    assert isinstance(due, datetime)
    return due if due.tzinfo else due.replace(tzinfo=UTC)


class BackupScheduler:
    def __init__(self, settings: Any, store: Store, lease: Any, clock: Any, metrics: Any) -> None:
        self.settings = settings
        self.store = store
        self.lease = lease
        self.clock = clock
        self.metrics = metrics
        self.started_at: datetime = clock()
        #: What ``schedules/backup.yml`` stored (setting name -> value), read each pass
        #: on the leader; it wins over the settings.
        self.overrides: dict[str, Any] = {}
        self.schedules: list[tuple[str, str]] = self._schedules()

    def _setting(self, name: str) -> Any:
        return self.overrides[name] if name in self.overrides else getattr(self.settings, name)

    def _schedules(self) -> list[tuple[str, str]]:
        schedules: list[tuple[str, str]] = []
        for kind, setting in (
            ("full", "backup_full_cron"),
            ("incremental", "backup_incremental_cron"),
            ("prune", "backup_prune_cron"),
        ):
            expression = self._setting(setting) if hasattr(self.settings, setting) else None
            if expression:
                schedules.append((kind, check_cron(expression, setting)))
        return schedules

    async def run_once(self) -> None:
        from conveyor.controller.config_kinds import instance_overrides

        last = await last_successful_backup_at(self.store)
        if last is not None:
            self.metrics.backup_last_success_timestamp_seconds.set(last.timestamp())
        if not self.lease.is_leader:
            return
        self.overrides = await instance_overrides(self.store, "backup")
        self.schedules = self._schedules()
        if not self.schedules:
            return
        now = self.clock()
        for kind, expression in self.schedules:
            previous = await last_backup_run(self.store, "schedule", kind)
            base = previous.started_at if previous else self.started_at
            if next_due(expression, base) > now:
                continue
            if kind == "prune":
                await self.prune(now)
            else:
                await self.backup(kind, now)
            return  # one job per pass: a full and an incremental due together do not overlap

    async def prune(self, now: datetime) -> None:
        target = open_blob_store(self.settings.resolved_backup_target())
        policy = BackupRetention(
            self._setting("backup_keep_weekly_fulls"),
            self._setting("backup_keep_incremental_days"),
        )
        try:
            decision = await prune_backups(target, policy, now)
            ok, error = True, None
            log.info("backup.pruned", deleted=list(decision.delete), kept=len(decision.keep))
        except Exception as exc:
            ok, error = False, str(exc)
            log.warning("backup.prune_failed", error=error)
        finally:
            await target.close()
        await record_backup_run(
            self.store,
            BackupRun("", "prune", target.describe(), "schedule", now, self.clock(), ok, 0, error),
        )

    async def backup(self, kind: str, now: datetime) -> None:
        """Run `conveyor backup create` as a subprocess; it records its own run."""
        s = self.settings
        args = [
            sys.executable,
            "-m",
            "conveyor",
            "backup",
            "create",
            "--full" if kind == "full" else "--incremental",
            "--to",
            s.resolved_backup_target(),
            "--database",
            s.resolved_database_url(),
            "--home",
            str(s.home),
            "--trigger",
            "schedule",
        ]
        if s.blob_url:
            args += ["--blob-url", s.blob_url]
        else:
            args += ["--blob-dir", str(s.resolved_blob_dir())]
        if not self._setting("backup_artifacts"):
            args.append("--no-artifacts")
        for path in s.backup_secret_files:
            args += ["--include-key", str(path)]
        env = {**os.environ}
        if s.backup_passphrase:
            env["CONVEYOR_BACKUP_PASSPHRASE"] = s.backup_passphrase
        log.info("backup.scheduled_start", kind=kind)
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), BACKUP_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        text = output.decode(errors="replace").strip()
        if proc.returncode == 0:
            log.info("backup.scheduled_done", kind=kind, output=text[-500:])
        else:
            log.warning(
                "backup.scheduled_failed", kind=kind, code=proc.returncode, output=text[-2000:]
            )
            recorded = await last_backup_run(self.store, "schedule", kind)
            if recorded is None or recorded.started_at < now:  # it died before recording
                await record_backup_run(
                    self.store,
                    BackupRun(
                        "",
                        kind,
                        s.resolved_backup_target(),
                        "schedule",
                        now,
                        self.clock(),
                        False,
                        0,
                        text[-2000:] or f"exit {proc.returncode}",
                    ),
                )
