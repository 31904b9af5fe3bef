"""Store queries of build-history retention: the snapshot the policy reads (every
finished, unpinned build, with its log and artifact bytes), deleting one build whole,
and the retention blocks of the job specs.

Policy: :func:`conveyor.core.retention.plan_history`; the loop:
:mod:`conveyor.controller.history`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, delete, exists, func, select

from conveyor.core.retention import FinishedBuild, RetentionSnapshot
from conveyor.core.states import FINISHED_STATES, BuildState
from conveyor.store.publications import publications
from conveyor.store.schema import artifacts, build_steps, builds, jobs, log_chunks
from conveyor.store.store import Fence, Store

__all__ = ["DeletedBuild", "delete_build", "history_snapshot", "job_specs"]

FINISHED = [s.value for s in FINISHED_STATES]


@dataclass(frozen=True)
class DeletedBuild:
    """What a deleted build leaves for the caller to remove from the blob store."""

    build_id: int
    artifact_keys: list[str]
    log_blob: str | None
    artifact_bytes: int
    log_bytes: int


async def history_snapshot(store: Store, limit: int, after: int = 0) -> RetentionSnapshot:
    """Up to ``limit`` finished, unpinned builds by id from ``after`` (exclusive), each
    with its log and artifact bytes and how many finished builds of its job are newer;
    plus the last succeeded build of each job concerned."""
    per_build = (
        select(
            artifacts.c.build_id,
            func.count().label("artifact_count"),
            func.coalesce(func.sum(artifacts.c.size), 0).label("artifact_bytes"),
        )
        .group_by(artifacts.c.build_id)
        .subquery()
    )
    other = builds.alias("other")
    newer = (
        select(func.count())
        .select_from(other)
        .where(
            other.c.job_id == builds.c.job_id,
            other.c.number > builds.c.number,
            other.c.state.in_(FINISHED),
        )
        .scalar_subquery()
    )
    # Released: a publish step published from it (conveyor.store.publications).
    released = exists().where(publications.c.build_id == builds.c.id)
    query = (
        select(
            builds.c.id,
            builds.c.job_id,
            builds.c.job_name,
            builds.c.number,
            builds.c.state,
            builds.c.finished_at,
            builds.c.pinned,
            builds.c.log_blob,
            builds.c.log_size,
            func.coalesce(per_build.c.artifact_count, 0).label("artifact_count"),
            func.coalesce(per_build.c.artifact_bytes, 0).label("artifact_bytes"),
            newer.label("newer"),
            released.label("released"),
        )
        .outerjoin(per_build, per_build.c.build_id == builds.c.id)
        .where(builds.c.id > after, builds.c.state.in_(FINISHED), builds.c.pinned.is_(False))
        .order_by(builds.c.id)
        .limit(limit)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        job_ids = sorted({r.job_id for r in rows})
        last: dict[str, int] = {}
        if job_ids:
            best = (
                select(builds.c.job_id, func.max(builds.c.number).label("number"))
                .where(builds.c.job_id.in_(job_ids), builds.c.state == BuildState.SUCCEEDED.value)
                .group_by(builds.c.job_id)
                .subquery()
            )
            found = await conn.execute(
                select(builds.c.job_name, builds.c.id).join(
                    best, and_(builds.c.job_id == best.c.job_id, builds.c.number == best.c.number)
                )
            )
            last = {job_name: build_id for job_name, build_id in found.all()}
    return RetentionSnapshot(
        tuple(
            FinishedBuild(
                id=r.id,
                job=r.job_name,
                number=r.number,
                state=BuildState(r.state),
                finished_at=r.finished_at,
                pinned=bool(r.pinned),
                artifact_bytes=int(r.artifact_bytes),
                artifact_count=int(r.artifact_count),
                has_log=r.log_blob is not None or bool(r.log_size),
                newer=int(r.newer),
                released=bool(r.released),
                log_bytes=int(r.log_size or 0),
            )
            for r in rows
        ),
        last,
    )


async def delete_build(
    store: Store, build_id: int, *, fence: Fence | None = None, now: datetime | None = None
) -> DeletedBuild | None:
    """Delete a finished, unpinned build whole: its steps, log chunks and artifact rows
    and the build row (other tables referencing it go by ``ON DELETE CASCADE``).
    Returns the blob keys for the caller to delete after (a crash in between leaves
    orphan blobs, never rows without blobs); None when nothing was deleted: the build
    is gone, pinned or not finished by now, all checked in the same transaction, as is
    the leader ``fence`` when given (:class:`~conveyor.store.store.FencedOut`)."""
    query = select(builds.c.state, builds.c.pinned, builds.c.log_blob, builds.c.log_size).where(
        builds.c.id == build_id
    )
    if store.dialect == "postgresql":
        query = query.with_for_update()  # a concurrent pin or retry waits for us
    async with store.write() as conn:
        if fence is not None:
            await store._check_fence(conn, fence, now or datetime.now(UTC))
        row = (await conn.execute(query)).one_or_none()
        if row is None or row.pinned or row.state not in FINISHED:
            return None
        found = (
            await conn.execute(
                select(artifacts.c.blob_key, artifacts.c.size)
                .where(artifacts.c.build_id == build_id)
                .order_by(artifacts.c.path)
            )
        ).all()
        for table in (artifacts, log_chunks, build_steps):
            await conn.execute(delete(table).where(table.c.build_id == build_id))
        await conn.execute(delete(builds).where(builds.c.id == build_id))
    return DeletedBuild(
        build_id,
        [key for key, _ in found],
        row.log_blob,
        sum(int(size) for _, size in found),
        int(row.log_size or 0),
    )


async def job_specs(store: Store) -> dict[str, tuple[int, str]]:
    """Every job's name -> (spec version, spec text), for reading ``retention:``."""
    async with store.read() as conn:
        rows = (await conn.execute(select(jobs.c.name, jobs.c.version, jobs.c.spec))).all()
    return {name: (int(version), spec) for name, version, spec in rows}
