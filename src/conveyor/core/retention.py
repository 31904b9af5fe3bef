"""Artifact retention: which finished builds lose their artifacts, and why. Pure policy.

The input is a snapshot of finished builds that still have artifacts. Each one
carries how many finished builds of its job are newer than it (``newer``), so the
policy is exact even when the snapshot holds only some of a job's builds (the
store pages through them). A build is pruned when it is older than ``keep_days``
**or** beyond the last ``keep_last`` finished builds of its job (either rule alone
is enough, as in Jenkins' "discard old builds"), and never when it is:

* pinned (``conveyor`` keeps it until it is unpinned),
* released: a ``publish`` step published from it (unless the policy says
  ``keep_released=False``),
* not finished (its artifacts may still be arriving),
* the last successful build of its job (what "latest good artifacts" points at).

Logs are not touched by the artifact policy. The build-history policy below
(:func:`plan_history`) deletes whole builds, logs and artifacts included, under the
same rules (plus per-job overrides from the pipeline's ``retention:`` block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from conveyor.core.states import FINISHED_STATES, BuildState


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the newest ``keep_last`` finished builds of a job and every build finished in
    the last ``keep_days`` days; ``None`` switches a rule off (both ``None``: keep all)."""

    keep_last: int | None = None
    keep_days: int | None = 30
    #: Keep released builds (those a ``publish`` step published from) whatever the rules.
    keep_released: bool = True

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, not {self.keep_last}")
        if self.keep_days is not None and self.keep_days < 0:
            raise ValueError(f"keep_days must not be negative, not {self.keep_days}")

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last is None and self.keep_days is None


@dataclass(frozen=True)
class FinishedBuild:
    """What the policy needs to know about one build (a row of the snapshot)."""

    id: int
    job: str
    number: int
    state: BuildState
    finished_at: datetime | None
    pinned: bool
    artifact_bytes: int
    artifact_count: int
    has_log: bool
    #: Finished builds of the same job with a higher number.
    newer: int = 0
    #: Bytes of the build's log (live chunks or compacted blob).
    log_bytes: int = 0
    #: A ``publish`` step published from it (it has publication records).
    released: bool = False


@dataclass(frozen=True)
class RetentionSnapshot:
    builds: tuple[FinishedBuild, ...]
    #: Per job, the id of its newest succeeded build (jobs without one are absent).
    last_succeeded: Mapping[str, int]


@dataclass(frozen=True)
class Prune:
    build_id: int
    job: str
    number: int
    artifact_bytes: int
    reason: str


@dataclass(frozen=True)
class RetentionPlan:
    prune: tuple[Prune, ...]

    @property
    def bytes_freed(self) -> int:
        return sum(p.artifact_bytes for p in self.prune)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def reasons_to_prune(
    build: FinishedBuild, policy: RetentionPolicy, last_succeeded: int | None, now: datetime
) -> list[str]:
    """Why ``build``'s artifacts go (empty: they stay)."""
    if build.pinned or build.state not in FINISHED_STATES or build.finished_at is None:
        return []
    if build.id == last_succeeded or build.artifact_count == 0:
        return []
    if build.released and policy.keep_released:
        return []
    reasons: list[str] = []
    if policy.keep_days is not None and build.finished_at < now - timedelta(days=policy.keep_days):
        reasons.append(f"older than {_plural(policy.keep_days, 'day')}")
    if policy.keep_last is not None and build.newer >= policy.keep_last:
        reasons.append(f"beyond the last {_plural(policy.keep_last, 'build')}")
    return reasons


def plan_retention(
    snapshot: RetentionSnapshot,
    now: datetime,
    policy: RetentionPolicy | None = None,
    per_job: Mapping[str, RetentionPolicy] | None = None,
) -> RetentionPlan:
    """The builds whose artifacts to delete, oldest first. ``per_job`` overrides
    ``policy`` (the controller-wide default) for the jobs it names."""
    default = policy or RetentionPolicy()
    overrides = per_job or {}
    prune: list[Prune] = []
    for build in sorted(snapshot.builds, key=lambda b: (b.job, b.number)):
        reasons = reasons_to_prune(
            build,
            overrides.get(build.job, default),
            snapshot.last_succeeded.get(build.job),
            now,
        )
        if reasons:
            prune.append(
                Prune(
                    build.id, build.job, build.number, build.artifact_bytes, " and ".join(reasons)
                )
            )
    prune.sort(key=lambda p: p.build_id)
    return RetentionPlan(tuple(prune))


def snapshot_of(history: Iterable[FinishedBuild]) -> RetentionSnapshot:
    """A snapshot from a job's complete history of finished builds (tests, small tools):
    ``newer`` and the last succeeded build per job are worked out from the builds."""
    rows = [b for b in history if b.state in FINISHED_STATES]
    numbers: dict[str, list[int]] = {}
    best: dict[str, FinishedBuild] = {}
    for b in rows:
        numbers.setdefault(b.job, []).append(b.number)
        if b.state == BuildState.SUCCEEDED and (b.job not in best or b.number > best[b.job].number):
            best[b.job] = b
    counted = tuple(replace(b, newer=sum(n > b.number for n in numbers[b.job])) for b in rows)
    return RetentionSnapshot(counted, {job: b.id for job, b in best.items()})


# --------------------------------------------------------------------------- per job
#
# A pipeline may carry its own retention (``retention:`` in conveyor.yml):
#
#     retention:
#       builds: 50        # build history: keep the last 50 finished builds ...
#       days: 90          # ... and every build of the last 90 days
#       artifacts:
#         builds: 5       # artifacts of the last 5 finished builds ...
#         days: 14        # ... and of the last 14 days
#
# ``builds``/``days`` govern the build history (a build beyond them is deleted whole:
# row, steps, log chunks, finished log blob, artifacts); ``artifacts`` only the
# artifacts. A job's block replaces the controller's default for what it names:
# history when it gives builds or days, artifacts when it gives an artifacts block.


class RuleSpec(BaseModel):
    """``{builds: N, days: D}``: keep the newest N finished builds and every build of
    the last D days (either alone: only that rule)."""

    model_config = ConfigDict(extra="forbid")

    builds: Annotated[int, Field(strict=True, ge=1)] | None = None
    days: Annotated[int, Field(strict=True, ge=1)] | None = None

    @model_validator(mode="after")
    def _something(self) -> RuleSpec:
        if self.builds is None and self.days is None:
            raise PydanticCustomError("retention", "give builds, days or both")
        return self

    def policy(self, keep_released: bool = True) -> RetentionPolicy:
        return RetentionPolicy(self.builds, self.days, keep_released)


class RetentionSpec(BaseModel):
    """``retention:`` of a pipeline (see the comment above)."""

    model_config = ConfigDict(extra="forbid")

    builds: Annotated[int, Field(strict=True, ge=1)] | None = None
    days: Annotated[int, Field(strict=True, ge=1)] | None = None
    artifacts: RuleSpec | None = None

    @model_validator(mode="after")
    def _something(self) -> RetentionSpec:
        if self.builds is None and self.days is None and self.artifacts is None:
            raise PydanticCustomError("retention", "give builds, days, artifacts or some of them")
        return self

    def history(self, keep_released: bool = True) -> RetentionPolicy | None:
        """The job's build-history policy, or None to use the controller's default."""
        if self.builds is None and self.days is None:
            return None
        return RetentionPolicy(self.builds, self.days, keep_released)


@dataclass(frozen=True)
class JobPolicies:
    """Per-job overrides gathered from the pipeline specs (jobs without any are absent)."""

    history: Mapping[str, RetentionPolicy]
    artifacts: Mapping[str, RetentionPolicy]

    @property
    def empty(self) -> bool:
        return not self.history and not self.artifacts


def job_policies(
    specs: Mapping[str, RetentionSpec | None], keep_released: bool = True
) -> JobPolicies:
    """The overrides of each job from its ``retention:`` block (job name -> spec);
    ``keep_released`` is the controller's (released builds are kept, or not)."""
    history: dict[str, RetentionPolicy] = {}
    artifacts: dict[str, RetentionPolicy] = {}
    for job, spec in specs.items():
        if spec is None:
            continue
        if (policy := spec.history(keep_released)) is not None:
            history[job] = policy
        if spec.artifacts is not None:
            artifacts[job] = spec.artifacts.policy(keep_released)
    return JobPolicies(history, artifacts)


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Deletion:
    """A whole build to delete (history retention), with what that frees."""

    build_id: int
    job: str
    number: int
    artifact_bytes: int
    log_bytes: int
    reason: str

    @property
    def bytes(self) -> int:
        return self.artifact_bytes + self.log_bytes


@dataclass(frozen=True)
class HistoryPlan:
    delete: tuple[Deletion, ...]

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.delete)


def history_reasons(
    build: FinishedBuild, policy: RetentionPolicy, last_succeeded: int | None, now: datetime
) -> list[str]:
    """Why the whole ``build`` goes (empty: it stays). Never a pinned or unfinished
    build, nor the last succeeded one of its job (what "latest good" points at)."""
    if build.pinned or build.state not in FINISHED_STATES or build.finished_at is None:
        return []
    if build.id == last_succeeded or (build.released and policy.keep_released):
        return []
    reasons: list[str] = []
    if policy.keep_days is not None and build.finished_at < now - timedelta(days=policy.keep_days):
        reasons.append(f"older than {_plural(policy.keep_days, 'day')}")
    if policy.keep_last is not None and build.newer >= policy.keep_last:
        reasons.append(f"beyond the last {_plural(policy.keep_last, 'build')}")
    return reasons


def plan_history(
    snapshot: RetentionSnapshot,
    now: datetime,
    policy: RetentionPolicy | None = None,
    per_job: Mapping[str, RetentionPolicy] | None = None,
) -> HistoryPlan:
    """The builds to delete whole, by id. ``policy`` is the controller-wide default
    (None or keeping everything: only jobs named in ``per_job`` lose builds)."""
    default = policy or RetentionPolicy(keep_last=None, keep_days=None)
    overrides = per_job or {}
    delete: list[Deletion] = []
    for build in snapshot.builds:
        chosen = overrides.get(build.job, default)
        if chosen.keeps_everything:
            continue
        reasons = history_reasons(build, chosen, snapshot.last_succeeded.get(build.job), now)
        if reasons:
            delete.append(
                Deletion(
                    build.id,
                    build.job,
                    build.number,
                    build.artifact_bytes,
                    build.log_bytes,
                    " and ".join(reasons),
                )
            )
    delete.sort(key=lambda d: d.build_id)
    return HistoryPlan(tuple(delete))
