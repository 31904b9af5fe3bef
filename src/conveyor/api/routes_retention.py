"""/api/v1/retention: what the retention policies would delete now (a dry run), and
running a pass now on the leader."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.controller.history import (
    HistoryRetention,
    JobPolicyCache,
    default_history_policy,
    keep_released,
    preview,
)
from conveyor.controller.retention import ArtifactRetention
from conveyor.core.retention import Deletion, Prune, RetentionPolicy
from conveyor.errors import Conflict

router = APIRouter(prefix="/api/v1", tags=["retention"])


class BuildGoingOut(BaseModel):
    build_id: int
    job: str
    number: int
    artifact_bytes: int
    log_bytes: int
    reason: str

    @classmethod
    def of(cls, d: Deletion) -> BuildGoingOut:
        return cls(
            build_id=d.build_id,
            job=d.job,
            number=d.number,
            artifact_bytes=d.artifact_bytes,
            log_bytes=d.log_bytes,
            reason=d.reason,
        )


class ArtifactsGoingOut(BaseModel):
    build_id: int
    job: str
    number: int
    artifact_bytes: int
    reason: str

    @classmethod
    def of(cls, p: Prune) -> ArtifactsGoingOut:
        return cls(
            build_id=p.build_id,
            job=p.job,
            number=p.number,
            artifact_bytes=p.artifact_bytes,
            reason=p.reason,
        )


class PreviewOut(BaseModel):
    builds: list[BuildGoingOut]  # deleted whole (history retention)
    artifacts: list[ArtifactsGoingOut]  # artifacts only
    bytes_freed: int
    partial: bool  # the scan stopped at its cap; later passes go further


class RunOut(BaseModel):
    bytes_freed: int
    history_bytes_freed: int
    artifact_bytes_freed: int


def _artifact_policy(settings: object) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=getattr(settings, "artifact_keep_last", None),
        keep_days=getattr(settings, "artifact_keep_days", 30),
        keep_released=keep_released(settings),
    )


@router.get("/retention/preview")
async def retention_preview(runtime: RuntimeDep, _: CallerDep) -> PreviewOut:
    """What a retention pass would delete now; nothing is deleted."""
    from conveyor.controller.config_kinds import retention_policy

    found = await preview(
        runtime.store,
        runtime.clock(),
        await retention_policy(runtime.store, default_history_policy(runtime.settings), "build"),
        await retention_policy(runtime.store, _artifact_policy(runtime.settings), "artifact"),
        JobPolicyCache(runtime.store, keep_released(runtime.settings)),
    )
    return PreviewOut(
        builds=[BuildGoingOut.of(d) for d in found.builds],
        artifacts=[ArtifactsGoingOut.of(p) for p in found.artifacts],
        bytes_freed=found.bytes_freed,
        partial=found.partial,
    )


@router.post("/retention/run")
async def retention_run(runtime: RuntimeDep, _: CallerDep) -> RunOut:
    """Run one history pass then one artifact pass now. Only the leader deletes (its
    lease fences every deletion); another controller answers 409."""
    if runtime.lease.fence is None:
        raise Conflict("this controller is not the leader; retention runs on the leader")
    history = HistoryRetention.from_settings(
        runtime.settings,
        runtime.store,
        runtime.blobs,
        runtime.lease,
        runtime.clock,
        runtime.metrics,
    )
    artifacts = ArtifactRetention.from_settings(
        runtime.settings,
        runtime.store,
        runtime.blobs,
        runtime.lease,
        runtime.clock,
        runtime.metrics,
    )
    artifacts.policies = history.policies
    history_freed = 0
    while True:  # every page, not just one pass' worth (the cursor is 0 once through)
        history_freed += await history.run_once()
        if history._after == 0:
            break
    artifact_freed = await artifacts.run_once()
    return RunOut(
        bytes_freed=history_freed + artifact_freed,
        history_bytes_freed=history_freed,
        artifact_bytes_freed=artifact_freed,
    )
