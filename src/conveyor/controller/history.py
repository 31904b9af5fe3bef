"""Build-history retention (leader only): whole builds beyond their job's policy are
deleted (row, steps, log chunks, finished log blob, artifacts), pinned and active
builds never. Also the per-job policy cache both retention loops read, and the
dry-run preview behind ``conveyor retention run --dry-run``.

Policy: :mod:`conveyor.core.retention`; store queries: :mod:`conveyor.store.history`.
The controller-wide defaults are the settings ``build_keep_last``/``build_keep_days``
(both unset by default: history is kept unless a job says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.core.pipeline import SpecError, parse_pipeline
from conveyor.core.retention import (
    Deletion,
    HistoryPlan,
    JobPolicies,
    Prune,
    RetentionPolicy,
    RetentionSpec,
    job_policies,
    plan_history,
    plan_retention,
)
from conveyor.store import Store
from conveyor.store.history import delete_build, history_snapshot, job_specs
from conveyor.store.retention import retention_snapshot
from conveyor.store.store import FencedOut

log = structlog.get_logger(__name__)


class JobPolicyCache:
    """Per-job retention overrides, re-read from the job specs on each call; a spec is
    parsed again only when its version changed."""

    def __init__(self, store: Store, keep_released: bool = True) -> None:
        self.store = store
        self.keep_released = keep_released
        self._parsed: dict[str, tuple[int, RetentionSpec | None]] = {}

    async def load(self) -> JobPolicies:
        parsed: dict[str, tuple[int, RetentionSpec | None]] = {}
        for name, (version, text) in (await job_specs(self.store)).items():
            cached = self._parsed.get(name)
            if cached is not None and cached[0] == version:
                parsed[name] = cached
                continue
            try:
                spec = parse_pipeline(text, f"{name}.yml").retention
            except SpecError:  # stored specs were valid when applied; never block retention
                log.warning("retention.unreadable_spec", job=name, version=version)
                spec = None
            parsed[name] = (version, spec)
        self._parsed = parsed
        by_job = {name: retention for name, (_, retention) in parsed.items()}
        return job_policies(by_job, self.keep_released)


def default_history_policy(settings: object) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=getattr(settings, "build_keep_last", None),
        keep_days=getattr(settings, "build_keep_days", None),
        keep_released=keep_released(settings),
    )


def keep_released(settings: object) -> bool:
    return bool(getattr(settings, "retention_keep_released", True))


@dataclass
class Preview:
    """What a retention pass would delete now (nothing is deleted)."""

    builds: list[Deletion] = field(default_factory=list)
    artifacts: list[Prune] = field(default_factory=list)
    #: True when the scan stopped at its cap: more may go in later passes.
    partial: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.builds) + sum(p.artifact_bytes for p in self.artifacts)


class HistoryRetention:
    #: Builds read per snapshot page, and pages per pass; the next pass goes on from
    #: where this one stopped (a cursor), so a huge history is covered over passes.
    PAGE = 500
    MAX_PAGES = 40

    def __init__(
        self,
        store: Store,
        blobs: Any,
        lease: LeaderLease,
        clock: Clock,
        policy: RetentionPolicy,
        policies: JobPolicyCache | None = None,
        metrics: object | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.lease = lease
        self.clock = clock
        self.policy = policy
        self.policies = policies or JobPolicyCache(store)
        self.metrics = metrics
        self._after = 0

    @classmethod
    def from_settings(
        cls,
        settings: object,
        store: Store,
        blobs: Any,
        lease: LeaderLease,
        clock: Clock,
        metrics: object | None = None,
        policies: JobPolicyCache | None = None,
    ) -> HistoryRetention:
        policy = default_history_policy(settings)
        policies = policies or JobPolicyCache(store, keep_released(settings))
        return cls(store, blobs, lease, clock, policy, policies, metrics)

    async def effective_policy(self) -> RetentionPolicy:
        """The settings' policy, with what ``schedules/retention.yml`` stored winning."""
        from conveyor.controller.config_kinds import retention_policy

        policy: RetentionPolicy = await retention_policy(self.store, self.policy, "build")
        return policy

    async def run_once(self) -> int:
        """One pass (leader only); returns the bytes freed."""
        fence = self.lease.fence
        if fence is None:
            return 0
        per_job = await self.policies.load()
        policy = await self.effective_policy()
        if policy.keeps_everything and not per_job.history:
            return 0
        now = self.clock()
        deleted = artifact_bytes = log_bytes = 0
        for _ in range(self.MAX_PAGES):
            snapshot = await history_snapshot(self.store, self.PAGE, self._after)
            if not snapshot.builds:
                self._after = 0  # wrapped around: the next pass starts over
                break
            self._after = max(b.id for b in snapshot.builds)
            for deletion in plan_history(snapshot, now, policy, per_job.history).delete:
                try:
                    gone = await delete_build(self.store, deletion.build_id, fence=fence, now=now)
                except FencedOut:
                    raise  # no longer the leader: stop the pass
                except Exception:  # e.g. a row of another feature that blocks the delete
                    log.warning(
                        "retention.build_delete_failed", build_id=deletion.build_id, exc_info=True
                    )
                    continue
                if gone is None:
                    continue  # pinned, retried or deleted meanwhile
                keys = [*gone.artifact_keys, *([gone.log_blob] if gone.log_blob else [])]
                for key in keys:
                    try:
                        await self.blobs.delete(key)
                    except Exception:  # the row is gone: an orphan blob, not a lost file
                        log.warning("retention.blob_delete_failed", key=key, exc_info=True)
                deleted += 1
                artifact_bytes += gone.artifact_bytes
                log_bytes += gone.log_bytes
                log.debug(
                    "retention.build_deleted",
                    build_id=deletion.build_id,
                    job=deletion.job,
                    number=deletion.number,
                    bytes=gone.artifact_bytes + gone.log_bytes,
                    reason=deletion.reason,
                )
            if len(snapshot.builds) < self.PAGE:
                self._after = 0
                break
        if deleted:
            log.info(
                "retention.history_pruned",
                builds=deleted,
                bytes=artifact_bytes + log_bytes,
                artifact_bytes=artifact_bytes,
                log_bytes=log_bytes,
            )
            counter = getattr(self.metrics, "retention_builds_deleted_total", None)
            if counter is not None:
                counter.inc(deleted)
            freed = getattr(self.metrics, "retention_history_freed_bytes_total", None)
            if freed is not None:
                freed.labels("artifacts").inc(artifact_bytes)
                freed.labels("logs").inc(log_bytes)
        return artifact_bytes + log_bytes


async def preview(
    store: Store,
    now: Any,
    history_policy: RetentionPolicy,
    artifact_policy: RetentionPolicy,
    policies: JobPolicyCache,
    max_builds: int = 100_000,
) -> Preview:
    """What the two retention loops would delete now (history first: a build deleted
    whole is not listed again for its artifacts). Reads at most ``max_builds`` builds."""
    per_job = await policies.load()
    out = Preview()
    going: set[int] = set()
    page, after, seen = 1000, 0, 0
    if not (history_policy.keeps_everything and not per_job.history):
        while seen < max_builds:
            snapshot = await history_snapshot(store, page, after)
            if not snapshot.builds:
                break
            seen += len(snapshot.builds)
            after = max(b.id for b in snapshot.builds)
            plan: HistoryPlan = plan_history(snapshot, now, history_policy, per_job.history)
            out.builds.extend(plan.delete)
            going.update(d.build_id for d in plan.delete)
            if len(snapshot.builds) < page:
                break
        else:
            out.partial = True
    if not (artifact_policy.keeps_everything and not per_job.artifacts):
        after, seen = 0, 0
        while seen < max_builds:
            snap = await retention_snapshot(store, page, after)
            if not snap.builds:
                break
            seen += len(snap.builds)
            after = max(b.id for b in snap.builds)
            pruned = plan_retention(snap, now, artifact_policy, per_job.artifacts).prune
            out.artifacts.extend(p for p in pruned if p.build_id not in going)
            if len(snap.builds) < page:
                break
        else:
            out.partial = True
    return out
