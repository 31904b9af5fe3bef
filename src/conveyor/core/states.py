"""Build and step lifecycle states, and which transitions are allowed."""

from __future__ import annotations

from enum import StrEnum


class BuildState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset(
    {
        BuildState.SUCCEEDED,
        BuildState.FAILED,
        BuildState.CANCELLED,
        BuildState.TIMED_OUT,
        BuildState.LOST,
    }
)
ACTIVE_STATES = frozenset({BuildState.ASSIGNED, BuildState.RUNNING})

#: Results an agent may report for a build it ran.
AGENT_RESULTS = frozenset(
    {BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED, BuildState.TIMED_OUT}
)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self not in (StepState.PENDING, StepState.RUNNING)
