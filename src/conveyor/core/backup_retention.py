"""Backup retention: which backups ``conveyor backup prune`` deletes. Pure policy.

A backup is *full* (a whole database export plus every blob) or *incremental* (a
fresh database export plus only the blobs that no earlier backup of its chain holds;
``parent`` names the backup it builds on, which is full or incremental). Restoring an
incremental backup needs every backup up its parent chain, so the one invariant that
matters is: **a kept backup's whole chain is kept**.

What is kept:

* the newest full backup of each of the ``keep_weekly_fulls`` most recent ISO weeks
  that have a full backup (older fulls of those weeks and fulls of older weeks go);
* every incremental backup taken in the last ``keep_incremental_days`` days;
* the newest backup of all, whatever its age (pruning never leaves nothing);
* every backup that a kept backup needs (its parent chain), whatever the rules say.

Everything else is deleted. A backup whose parent is missing is broken already; it is
kept or deleted by the same rules (its chain simply ends early).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Kind = Literal["full", "incremental"]


@dataclass(frozen=True)
class BackupInfo:
    """One backup as the policy sees it (from its manifest)."""

    id: str
    kind: Kind
    created_at: datetime
    parent: str | None = None


@dataclass(frozen=True)
class BackupRetention:
    keep_weekly_fulls: int = 4
    keep_incremental_days: int = 30

    def __post_init__(self) -> None:
        if self.keep_weekly_fulls < 1:
            raise ValueError(f"keep_weekly_fulls must be at least 1, not {self.keep_weekly_fulls}")
        if self.keep_incremental_days < 0:
            raise ValueError(
                f"keep_incremental_days must not be negative, not {self.keep_incremental_days}"
            )


@dataclass(frozen=True)
class PruneDecision:
    keep: tuple[str, ...]
    delete: tuple[str, ...]
    #: Why each kept backup stays (for ``prune --dry-run``).
    reasons: dict[str, str]


def _week(moment: datetime) -> tuple[int, int]:
    year, week, _ = moment.isocalendar()
    return year, week


def decide(backups: Iterable[BackupInfo], policy: BackupRetention, now: datetime) -> PruneDecision:
    """Split ``backups`` into kept and deleted (both sorted oldest first)."""
    items = sorted(backups, key=lambda b: (b.created_at, b.id))
    by_id = {b.id: b for b in items}
    reasons: dict[str, str] = {}

    fulls_by_week: dict[tuple[int, int], BackupInfo] = {}
    for b in items:
        if b.kind == "full":
            fulls_by_week[_week(b.created_at)] = b  # sorted: the newest of a week wins
    for week in sorted(fulls_by_week, reverse=True)[: policy.keep_weekly_fulls]:
        reasons[fulls_by_week[week].id] = f"newest full backup of week {week[0]}-W{week[1]:02d}"

    horizon = now - timedelta(days=policy.keep_incremental_days)
    for b in items:
        if b.kind == "incremental" and b.created_at >= horizon:
            reasons[b.id] = f"incremental within {policy.keep_incremental_days} days"
    if items:
        reasons.setdefault(items[-1].id, "newest backup")

    for kept in list(reasons):
        _keep_chain(kept, by_id, reasons)

    keep = tuple(b.id for b in items if b.id in reasons)
    delete = tuple(b.id for b in items if b.id not in reasons)
    return PruneDecision(keep=keep, delete=delete, reasons=reasons)


def _keep_chain(start: str, by_id: dict[str, BackupInfo], reasons: dict[str, str]) -> None:
    seen = {start}
    parent = by_id[start].parent
    while parent is not None and parent in by_id and parent not in seen:
        seen.add(parent)
        reasons.setdefault(parent, f"needed by {start}")
        parent = by_id[parent].parent


def chain_of(backup_id: str, backups: Sequence[BackupInfo]) -> list[str]:
    """``backup_id`` and its ancestors, newest first (stops at a missing parent or a cycle)."""
    by_id = {b.id: b for b in backups}
    chain: list[str] = []
    current: str | None = backup_id
    while current is not None and current in by_id and current not in chain:
        chain.append(current)
        current = by_id[current].parent
    return chain
