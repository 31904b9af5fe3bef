"""Backup runs: one row per backup attempt (``conveyor backup create`` or the scheduler).

The table lives on the shared :data:`conveyor.store.schema.metadata` (migration 0011).
It is what makes ``conveyor_backup_last_success_timestamp_seconds`` true in a cluster:
every controller reads the last successful run from the store, not from its memory, so
the figure survives restarts and leader changes. It also lets the leader's scheduler
know when the last scheduled backup ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Column, String, Table, Text, func, insert, select

from conveyor.store.schema import Id, metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

__all__ = [
    "BackupRun",
    "backup_runs",
    "last_backup_run",
    "last_successful_backup_at",
    "record_backup_run",
]

MAX_ERROR_LENGTH = 2000

backup_runs = Table(
    "backup_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # The backup's id at its target (empty when it failed before it had one).
    Column("backup_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    # Where it went, without secrets (BlobStore.describe()).
    Column("target", String(1000), nullable=False),
    # "cli" or "schedule": who started it.
    Column("trigger", String(20), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
)


@dataclass(frozen=True)
class BackupRun:
    backup_id: str
    kind: str
    target: str
    trigger: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    size_bytes: int = 0
    error: str | None = None


async def record_backup_run(store: Store, run: BackupRun) -> None:
    async with store.write() as conn:
        await conn.execute(
            insert(backup_runs).values(
                backup_id=run.backup_id,
                kind=run.kind,
                target=run.target[:1000],
                trigger=run.trigger,
                started_at=run.started_at,
                finished_at=run.finished_at,
                ok=run.ok,
                size_bytes=run.size_bytes,
                error=run.error[:MAX_ERROR_LENGTH] if run.error else None,
            )
        )


async def last_successful_backup_at(store: Store) -> datetime | None:
    """When the newest successful backup finished (None if there never was one)."""
    async with store.read() as conn:
        value = await conn.scalar(
            select(func.max(backup_runs.c.finished_at)).where(
                backup_runs.c.ok.is_(True), backup_runs.c.kind != "prune"
            )
        )
    return value  # type: ignore[no-any-return]  # max() keeps the column's UTC type


async def last_backup_run(store: Store, trigger: str, kind: str | None = None) -> BackupRun | None:
    """The newest run started by ``trigger`` (and of ``kind`` if given), ok or not."""
    query = select(backup_runs).where(backup_runs.c.trigger == trigger)
    if kind is not None:
        query = query.where(backup_runs.c.kind == kind)
    query = query.order_by(backup_runs.c.started_at.desc(), backup_runs.c.id.desc()).limit(1)
    async with store.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return BackupRun(
        backup_id=row.backup_id,
        kind=row.kind,
        target=row.target,
        trigger=row.trigger,
        started_at=row.started_at,
        finished_at=row.finished_at,
        ok=row.ok,
        size_bytes=row.size_bytes,
        error=row.error,
    )
