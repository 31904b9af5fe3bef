"""Artifact retention policy (conveyor.core.retention): pure, with a fixed ``now``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor.core.retention import (
    FinishedBuild,
    RetentionPolicy,
    RetentionSnapshot,
    plan_retention,
    snapshot_of,
)
from conveyor.core.states import BuildState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024


def build(
    number: int,
    age_days: float,
    *,
    job: str = "app",
    state: BuildState = BuildState.SUCCEEDED,
    pinned: bool = False,
    size: int = MiB,
    count: int = 1,
) -> FinishedBuild:
    return FinishedBuild(
        id=number if job == "app" else 1000 + number,
        job=job,
        number=number,
        state=state,
        finished_at=NOW - timedelta(days=age_days),
        pinned=pinned,
        artifact_bytes=size,
        artifact_count=count,
        has_log=True,
    )


def pruned(plan_builds: list[FinishedBuild], policy: RetentionPolicy) -> dict[int, str]:
    plan = plan_retention(snapshot_of(plan_builds), NOW, policy)
    return {p.build_id: p.reason for p in plan.prune}


def test_keep_days_prunes_older_builds_but_not_the_last_successful() -> None:
    history = [build(1, 40), build(2, 35, state=BuildState.FAILED), build(3, 31), build(4, 29)]
    assert pruned(history, RetentionPolicy(keep_last=None, keep_days=30)) == {
        1: "older than 30 days",
        2: "older than 30 days",
        3: "older than 30 days",
    }
    # Build 4 failed too: the last successful one (3) stays although it is old.
    history[3] = build(4, 29, state=BuildState.FAILED)
    assert pruned(history, RetentionPolicy(keep_last=None, keep_days=30)) == {
        1: "older than 30 days",
        2: "older than 30 days",
    }


def test_keep_days_boundary_is_exclusive() -> None:
    exactly = build(1, 30)
    newest = build(2, 0)
    assert pruned([exactly, newest], RetentionPolicy(keep_last=None, keep_days=30)) == {}
    older = build(1, 30 + 1 / 86400)
    assert pruned([older, newest], RetentionPolicy(keep_last=None, keep_days=30)) == {
        1: "older than 30 days"
    }


def test_keep_last_counts_finished_builds_of_each_job() -> None:
    history = [build(n, 1) for n in range(1, 6)] + [build(n, 1, job="lib") for n in (1, 2)]
    reason = "beyond the last 2 builds"
    got = pruned(history, RetentionPolicy(keep_last=2, keep_days=None))
    assert got == {1: reason, 2: reason, 3: reason}
    one = pruned(history, RetentionPolicy(keep_last=1, keep_days=None))
    assert sorted(one) == [1, 2, 3, 4, 1001]
    assert one[1001] == "beyond the last 1 build"


def test_either_rule_is_enough_and_both_reasons_are_given() -> None:
    history = [build(1, 60), build(2, 1), build(3, 1), build(4, 1)]
    got = pruned(history, RetentionPolicy(keep_last=2, keep_days=30))
    assert got == {
        1: "older than 30 days and beyond the last 2 builds",
        2: "beyond the last 2 builds",
    }


def test_pinned_and_unfinished_builds_are_never_pruned() -> None:
    snapshot = RetentionSnapshot(
        (
            build(1, 90, pinned=True),
            build(2, 90, state=BuildState.RUNNING),
            FinishedBuild(3, "app", 3, BuildState.FAILED, None, False, 5, 1, False, newer=9),
            build(4, 90, state=BuildState.FAILED),
            build(5, 0),
        ),
        {"app": 5},
    )
    plan = plan_retention(snapshot, NOW, RetentionPolicy(keep_last=1, keep_days=1))
    assert [p.build_id for p in plan.prune] == [4]


def test_builds_without_artifacts_free_nothing_and_are_skipped() -> None:
    history = [build(1, 90, size=0, count=0), build(2, 90, size=0, count=1), build(3, 0)]
    plan = plan_retention(snapshot_of(history), NOW, RetentionPolicy(keep_days=30))
    assert [p.build_id for p in plan.prune] == [2]  # an empty file is still an artifact
    assert plan.bytes_freed == 0


def test_bytes_freed_and_order() -> None:
    history = [build(3, 50, size=3), build(1, 70, size=1), build(2, 60, size=2), build(4, 0)]
    plan = plan_retention(snapshot_of(history), NOW, RetentionPolicy(keep_days=30))
    assert [p.build_id for p in plan.prune] == [1, 2, 3]
    assert plan.bytes_freed == 6
    assert plan.prune[0].job == "app" and plan.prune[0].number == 1


def test_per_job_policies_override_the_default() -> None:
    history = [build(1, 90), build(2, 0), build(1, 90, job="lib"), build(2, 0, job="lib")]
    plan = plan_retention(
        snapshot_of(history),
        NOW,
        RetentionPolicy(keep_days=30),
        {"lib": RetentionPolicy(keep_last=None, keep_days=None)},
    )
    assert [p.build_id for p in plan.prune] == [1]


def test_keep_everything_and_invalid_policies() -> None:
    assert RetentionPolicy(keep_last=None, keep_days=None).keeps_everything
    assert pruned([build(1, 999), build(2, 999)], RetentionPolicy(None, None)) == {}
    with pytest.raises(ValueError, match="keep_last"):
        RetentionPolicy(keep_last=0)
    with pytest.raises(ValueError, match="keep_days"):
        RetentionPolicy(keep_days=-1)


def test_snapshot_of_counts_newer_finished_builds_only() -> None:
    history = [build(1, 5), build(2, 4), build(3, 3, state=BuildState.RUNNING), build(4, 1)]
    snap = snapshot_of(history)
    assert {b.number: b.newer for b in snap.builds} == {1: 2, 2: 1, 4: 0}
    assert snap.last_succeeded == {"app": 4}
