"""Build-history retention policy (pure) and the pipeline's ``retention:`` block."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.core.pipeline import SpecError, parse_pipeline
from conveyor.core.retention import (
    FinishedBuild,
    RetentionPolicy,
    job_policies,
    plan_history,
    snapshot_of,
)
from conveyor.core.states import BuildState
from tests.conftest import FakeClock

S, F, C = BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED


def _history(clock: FakeClock, states: list[BuildState], job: str = "app") -> list[FinishedBuild]:
    """One build a day, oldest first; ids 1.. per call offset by job."""
    base = 100 if job != "app" else 0
    start = clock() - timedelta(days=len(states))
    return [
        FinishedBuild(
            id=base + n,
            job=job,
            number=n,
            state=state,
            finished_at=start + timedelta(days=n),
            pinned=False,
            artifact_bytes=10,
            artifact_count=1,
            has_log=True,
            log_bytes=100,
        )
        for n, state in enumerate(states, start=1)
    ]


def test_keep_last_n_deletes_older_builds_but_the_last_succeeded(clock: FakeClock) -> None:
    builds = _history(clock, [S, F, F, F, F])
    plan = plan_history(snapshot_of(builds), clock(), RetentionPolicy(keep_last=2, keep_days=None))
    # #1 is the last succeeded build: kept; #2 and #3 are beyond the last 2.
    assert [d.number for d in plan.delete] == [2, 3]
    assert plan.delete[0].reason == "beyond the last 2 builds"
    assert plan.bytes_freed == 2 * 110


def test_days_and_pinned_and_unfinished(clock: FakeClock) -> None:
    builds = _history(clock, [F, F, C, S])
    builds[0] = FinishedBuild(**{**builds[0].__dict__, "pinned": True})
    running = FinishedBuild(
        99, "app", 99, BuildState.RUNNING, None, False, 0, 0, False, log_bytes=5
    )
    snapshot = snapshot_of([*builds, running])
    plan = plan_history(snapshot, clock(), RetentionPolicy(keep_last=None, keep_days=1))
    # 3, 2, 1, 0 days old: #1 pinned, #2 (2 days) goes, #3 (1 day) is not older than 1.
    assert [(d.number, d.reason) for d in plan.delete] == [(2, "older than 1 day")]
    clock.advance(10 * 86400)
    later = plan_history(snapshot, clock(), RetentionPolicy(keep_last=None, keep_days=1))
    assert [d.number for d in later.delete] == [2, 3]  # #4: last succeeded; #1 pinned


def test_default_keeps_everything_and_per_job_overrides(clock: FakeClock) -> None:
    builds = _history(clock, [F, F, F]) + _history(clock, [F, F, F], job="lib")
    snapshot = snapshot_of(builds)
    assert plan_history(snapshot, clock()).delete == ()
    plan = plan_history(
        snapshot, clock(), RetentionPolicy(None, None), {"lib": RetentionPolicy(1, None)}
    )
    assert [(d.job, d.number) for d in plan.delete] == [("lib", 1), ("lib", 2)]
    both = plan_history(snapshot, clock(), RetentionPolicy(2, None), {"lib": RetentionPolicy(1, 1)})
    assert [(d.job, d.number, d.reason) for d in both.delete] == [
        ("app", 1, "beyond the last 2 builds"),
        ("lib", 1, "older than 1 day and beyond the last 1 build"),
        ("lib", 2, "beyond the last 1 build"),  # 1 day old: not older than 1 day
    ]


def _retention(block: str) -> str:
    return f"name: app\nretention: {block}\nstages:\n  - name: s\n    steps:\n      - sh: x\n"


def test_retention_block_of_a_pipeline() -> None:
    spec = parse_pipeline(_retention("{builds: 20, days: 90, artifacts: {builds: 3}}")).retention
    assert spec is not None
    policies = job_policies({"app": spec, "other": None})
    assert policies.history == {"app": RetentionPolicy(keep_last=20, keep_days=90)}
    assert policies.artifacts == {"app": RetentionPolicy(keep_last=3, keep_days=None)}
    only_artifacts = parse_pipeline(_retention("{artifacts: {days: 7}}")).retention
    assert only_artifacts is not None and only_artifacts.history() is None


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{}", "give builds, days, artifacts"),
        ("{builds: 0}", "must be at least 1"),
        ("{days: -1}", "must be at least 1"),
        ("{artifacts: {}}", "give builds, days or both"),
        ("{builds: ten}", "expected an integer"),
        ("{keep: 3}", "unknown field 'keep'"),
    ],
)
def test_bad_retention_blocks(block: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_pipeline(_retention(block))
    assert message in str(error.value)


def test_released_builds_stay_unless_the_policy_says_otherwise(clock: FakeClock) -> None:
    builds = _history(clock, [F, F, F])
    builds[0] = FinishedBuild(**{**builds[0].__dict__, "released": True})
    snapshot = snapshot_of(builds)
    keep = plan_history(snapshot, clock(), RetentionPolicy(keep_last=1, keep_days=None))
    assert [d.number for d in keep.delete] == [2]
    drop = plan_history(snapshot, clock(), RetentionPolicy(1, None, keep_released=False))
    assert [d.number for d in drop.delete] == [1, 2]
