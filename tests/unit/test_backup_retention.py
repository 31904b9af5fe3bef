"""Backup retention policy (conveyor.core.backup_retention): examples and the invariant
that a kept backup's whole chain is kept, as a property test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core.backup_retention import BackupInfo, BackupRetention, chain_of, decide

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def full(name: str, days_ago: float) -> BackupInfo:
    return BackupInfo(name, "full", NOW - timedelta(days=days_ago))


def inc(name: str, days_ago: float, parent: str) -> BackupInfo:
    return BackupInfo(name, "incremental", NOW - timedelta(days=days_ago), parent)


def test_keeps_newest_full_of_each_of_the_last_n_weeks() -> None:
    backups = [full(f"f{d}", d) for d in range(0, 70, 1)]  # a full every day for 10 weeks
    decision = decide(backups, BackupRetention(keep_weekly_fulls=4, keep_incremental_days=30), NOW)
    assert len(decision.keep) == 4
    assert "f0" in decision.keep  # newest of this week
    weeks = {b.created_at.isocalendar()[:2] for b in backups if b.id in decision.keep}
    assert len(weeks) == 4


def test_incrementals_kept_for_d_days_and_their_fulls_with_them() -> None:
    backups = [
        full("old-full", 60),
        inc("old-inc", 59, "old-full"),
        full("f-40", 40),
        inc("i-20", 20, "f-40"),  # within 30 days: keeps f-40 even though it's an old week
        inc("i-10", 10, "i-20"),
        full("f-3", 3),
    ]
    policy = BackupRetention(keep_weekly_fulls=1, keep_incremental_days=30)
    decision = decide(backups, policy, NOW)
    assert set(decision.keep) == {"f-40", "i-20", "i-10", "f-3"}
    assert set(decision.delete) == {"old-full", "old-inc"}
    assert decision.reasons["f-40"].startswith("needed by")


def test_newest_backup_always_kept() -> None:
    backups = [full("f", 400), inc("i", 300, "f")]
    decision = decide(backups, BackupRetention(keep_weekly_fulls=1, keep_incremental_days=1), NOW)
    assert decision.keep == ("f", "i")


def test_nothing_to_decide() -> None:
    assert decide([], BackupRetention(), NOW).keep == ()


def test_bad_policy() -> None:
    with pytest.raises(ValueError):
        BackupRetention(keep_weekly_fulls=0)
    with pytest.raises(ValueError):
        BackupRetention(keep_incremental_days=-1)


@st.composite
def histories(draw: st.DrawFn) -> list[BackupInfo]:
    count = draw(st.integers(0, 40))
    ages = sorted(draw(st.lists(st.floats(0, 200), min_size=count, max_size=count)), reverse=True)
    backups: list[BackupInfo] = []
    for i, age in enumerate(ages):
        if not backups or draw(st.booleans()):
            backups.append(full(f"b{i}", age))
        else:
            parent = draw(st.sampled_from(backups)).id
            backups.append(inc(f"b{i}", age, parent))
    return backups


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(1, 6), st.integers(0, 60))
def test_a_kept_backup_never_loses_its_chain(
    backups: list[BackupInfo], weekly: int, days: int
) -> None:
    decision = decide(backups, BackupRetention(weekly, days), NOW)
    kept = set(decision.keep)
    assert kept.isdisjoint(decision.delete)
    assert kept | set(decision.delete) == {b.id for b in backups}
    for backup_id in kept:
        assert set(chain_of(backup_id, backups)) <= kept  # never delete what a kept one needs
    if backups:
        newest = max(backups, key=lambda b: (b.created_at, b.id))
        assert newest.id in kept
    recent_incrementals = {
        b.id
        for b in backups
        if b.kind == "incremental" and b.created_at >= NOW - timedelta(days=days)
    }
    assert recent_incrementals <= kept
    kept_fulls = [b for b in backups if b.kind == "full" and b.id in kept]
    weeks_with_fulls = {b.created_at.isocalendar()[:2] for b in backups if b.kind == "full"}
    assert len({b.created_at.isocalendar()[:2] for b in kept_fulls}) >= min(
        weekly, len(weeks_with_fulls)
    )
