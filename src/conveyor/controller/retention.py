"""The artifact retention loop (leader only): snapshot -> policy -> delete the artifact
rows, then their blobs. The policy is :mod:`conveyor.core.retention`: the
controller-wide default (``artifact_keep_last``, ``artifact_keep_days``) and, with
``policies`` set, each job's ``retention: {artifacts: ...}`` override."""

from __future__ import annotations

from typing import Any

import structlog

from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.core.retention import RetentionPolicy, plan_retention
from conveyor.store import Store
from conveyor.store.retention import delete_artifacts_of, retention_snapshot

log = structlog.get_logger(__name__)

#: Seconds between two passes.
RETENTION_INTERVAL = 600.0


class ArtifactRetention:
    #: Builds read per snapshot page, and pages per pass (the rest waits for the next).
    PAGE = 500
    MAX_PAGES = 40

    def __init__(
        self,
        store: Store,
        blobs: Any,
        lease: LeaderLease,
        clock: Clock,
        policy: RetentionPolicy,
        metrics: object | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.lease = lease
        self.clock = clock
        self.policy = policy
        self.metrics = metrics
        # Per-job overrides (conveyor.controller.history.JobPolicyCache), set by the runtime.
        self.policies: Any = None

    @classmethod
    def from_settings(
        cls,
        settings: object,
        store: Store,
        blobs: Any,
        lease: LeaderLease,
        clock: Clock,
        metrics: object | None = None,
    ) -> ArtifactRetention:
        policy = RetentionPolicy(
            keep_last=getattr(settings, "artifact_keep_last", None),
            keep_days=getattr(settings, "artifact_keep_days", 30),
            keep_released=bool(getattr(settings, "retention_keep_released", True)),
        )
        return cls(store, blobs, lease, clock, policy, metrics)

    async def effective_policy(self) -> RetentionPolicy:
        """The settings' policy, with what ``schedules/retention.yml`` stored winning."""
        from conveyor.controller.config_kinds import retention_policy

        policy: RetentionPolicy = await retention_policy(self.store, self.policy, "artifact")
        return policy

    async def run_once(self) -> int:
        """One pass; returns the bytes of artifacts freed (0 when not leading)."""
        fence = self.lease.fence
        if fence is None:
            return 0
        per_job = (await self.policies.load()).artifacts if self.policies is not None else {}
        policy = await self.effective_policy()
        if policy.keeps_everything and not per_job:
            return 0
        now = self.clock()
        pruned = freed = 0
        after = 0
        for _ in range(self.MAX_PAGES):
            snapshot = await retention_snapshot(self.store, self.PAGE, after)
            if not snapshot.builds:
                break
            after = max(b.id for b in snapshot.builds)
            for prune in plan_retention(snapshot, now, policy, per_job).prune:
                keys = await delete_artifacts_of(self.store, prune.build_id, fence=fence, now=now)
                if not keys:
                    continue  # pinned or changed meanwhile
                for key in keys:
                    try:
                        await self.blobs.delete(key)
                    except Exception:  # the row is gone: an orphan blob, not a lost file
                        log.warning("retention.blob_delete_failed", key=key, exc_info=True)
                pruned += 1
                freed += prune.artifact_bytes
                log.debug(
                    "retention.build_pruned",
                    build_id=prune.build_id,
                    job=prune.job,
                    number=prune.number,
                    bytes=prune.artifact_bytes,
                    reason=prune.reason,
                )
            if len(snapshot.builds) < self.PAGE:
                break
        if pruned:
            log.info("retention.pruned", count=pruned, bytes=freed)
            counter = getattr(self.metrics, "retention_freed_bytes_total", None)
            if counter is not None:
                counter.inc(freed)
        return freed
