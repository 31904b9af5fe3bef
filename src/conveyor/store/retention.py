"""Store queries of artifact retention: the snapshot the policy reads, pruning one
build's artifact rows, and pinning (``builds.pinned``, migration 0005).

Policy lives in :mod:`conveyor.core.retention`; the loop that applies it in
:mod:`conveyor.controller.retention`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, delete, exists, func, select, update

from conveyor.core.retention import FinishedBuild, RetentionSnapshot
from conveyor.core.states import FINISHED_STATES, BuildState
from conveyor.errors import NotFound
from conveyor.store.publications import publications
from conveyor.store.schema import artifacts, builds
from conveyor.store.store import Fence, Store

__all__ = ["delete_artifacts_of", "is_pinned", "retention_snapshot", "set_pinned"]

FINISHED = [s.value for s in FINISHED_STATES]


async def retention_snapshot(store: Store, limit: int, after: int = 0) -> RetentionSnapshot:
    """Up to ``limit`` finished, unpinned builds that still have artifacts, by id from
    ``after`` (exclusive; page on with the last id returned), each with its artifact
    count and bytes and how many finished builds of its job are newer; plus the last
    succeeded build of each job concerned."""
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
            per_build.c.artifact_count,
            per_build.c.artifact_bytes,
            newer.label("newer"),
            released.label("released"),
        )
        .join(per_build, per_build.c.build_id == builds.c.id)
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
                .where(
                    builds.c.job_id.in_(job_ids),
                    builds.c.state == BuildState.SUCCEEDED.value,
                )
                .group_by(builds.c.job_id)
                .subquery()
            )
            for job_name, build_id in (
                await conn.execute(
                    select(builds.c.job_name, builds.c.id).join(
                        best,
                        and_(
                            builds.c.job_id == best.c.job_id,
                            builds.c.number == best.c.number,
                        ),
                    )
                )
            ).all():
                last[job_name] = build_id
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
            )
            for r in rows
        ),
        last,
    )


async def delete_artifacts_of(
    store: Store, build_id: int, *, fence: Fence | None = None, now: datetime | None = None
) -> list[str]:
    """Delete a build's artifact rows; returns their blob keys, for the caller to delete
    after (a crash in between leaves orphan blobs, never rows without blobs).

    Conditional, in one transaction: nothing happens to a build that is pinned or not
    finished (by the time this runs), nor, with ``fence``, once that leader epoch is no
    longer current (:class:`~conveyor.store.store.FencedOut`)."""
    query = select(builds.c.state, builds.c.pinned).where(builds.c.id == build_id)
    if store.dialect == "postgresql":
        query = query.with_for_update()  # a concurrent pin waits for us, or we for it
    async with store.write() as conn:
        if fence is not None:
            await store._check_fence(conn, fence, now or datetime.now(UTC))
        row = (await conn.execute(query)).one_or_none()
        if row is None or row.pinned or row.state not in FINISHED:
            return []
        keys = list(
            await conn.scalars(
                select(artifacts.c.blob_key)
                .where(artifacts.c.build_id == build_id)
                .order_by(artifacts.c.path)
            )
        )
        if keys:
            await conn.execute(delete(artifacts).where(artifacts.c.build_id == build_id))
    return keys


async def set_pinned(store: Store, build_id: int, pinned: bool) -> None:
    """Pin (retention never prunes the build's artifacts) or unpin a build."""
    async with store.write() as conn:
        result = await conn.execute(
            update(builds).where(builds.c.id == build_id).values(pinned=pinned)
        )
    if result.rowcount == 0:
        raise NotFound(f"build {build_id} not found")


async def is_pinned(store: Store, build_id: int) -> bool:
    async with store.read() as conn:
        pinned = await conn.scalar(select(builds.c.pinned).where(builds.c.id == build_id))
    if pinned is None:
        raise NotFound(f"build {build_id} not found")
    return bool(pinned)
