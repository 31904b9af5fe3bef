"""Named read queries for the web UI: trends bucketed by hour/day, each job's latest
builds, the running builds' current stage, and newline counts of a stored log.

Free functions taking a Store, like the other store modules. Aggregation happens in
the database (one GROUP BY per chart) so the dashboard stays fast with a long history;
the only dialect-specific part is how a timestamp is cut into buckets and how a
duration is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, case, func, literal_column, select

from conveyor.core.states import ACTIVE_STATES, FINISHED_STATES, BuildState
from conveyor.store.base import StoreBase
from conveyor.store.schema import build_steps, builds

Bucket = Literal["hour", "day"]
FINISHED = [s.value for s in FINISHED_STATES]
ACTIVE = [s.value for s in ACTIVE_STATES]


@dataclass(frozen=True)
class TrendPoint:
    start: datetime
    total: int
    succeeded: int
    mean_seconds: float | None

    @property
    def success_rate(self) -> float | None:
        return None if self.total == 0 else self.succeeded / self.total


@dataclass(frozen=True)
class RecentBuild:
    id: int
    number: int
    state: BuildState
    duration_seconds: float | None
    finished_at: datetime | None


def _bucket_expr(dialect: str, bucket: Bucket) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(
            func.date_trunc(
                bucket, builds.c.finished_at.op("AT TIME ZONE")(literal_column("'UTC'"))
            ),
            "YYYY-MM-DD HH24",
        )
    # SQLite stores naive UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]'.
    fmt = "%Y-%m-%d %H" if bucket == "hour" else "%Y-%m-%d 00"
    return func.strftime(fmt, builds.c.finished_at)


def _duration_expr(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.extract("epoch", builds.c.finished_at - builds.c.started_at)
    return (func.julianday(builds.c.finished_at) - func.julianday(builds.c.started_at)) * 86400.0


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


async def build_trend(
    store: StoreBase, now: datetime, count: int, bucket: Bucket
) -> list[TrendPoint]:
    """Finished builds per bucket (the last ``count`` hours or days up to ``now``):
    how many, how many succeeded, mean duration. Empty buckets are included."""
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    first = bucket_start(now, bucket) - step * (count - 1)
    key = _bucket_expr(store.dialect, bucket).label("bucket")
    query = (
        select(
            key,
            func.count().label("total"),
            func.sum(case((builds.c.state == BuildState.SUCCEEDED.value, 1), else_=0)).label(
                "succeeded"
            ),
            func.avg(_duration_expr(store.dialect)).label("mean_seconds"),
        )
        .where(builds.c.finished_at >= first, builds.c.state.in_(FINISHED))
        .group_by(key)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    found = {str(r.bucket): r for r in rows}
    points: list[TrendPoint] = []
    for i in range(count):
        start = first + step * i
        row = found.get(start.strftime("%Y-%m-%d %H"))
        if row is None:
            points.append(TrendPoint(start, 0, 0, None))
        else:
            mean = None if row.mean_seconds is None else float(row.mean_seconds)
            points.append(TrendPoint(start, int(row.total), int(row.succeeded or 0), mean))
    return points


async def recent_builds_per_job(
    store: StoreBase, job_names: Sequence[str], per_job: int = 20
) -> dict[str, list[RecentBuild]]:
    """Each job's newest builds, newest first (one indexed query per job on
    (job_name, id), all on one connection: cheap however long the history is)."""
    duration = _duration_expr(store.dialect).label("duration")
    result: dict[str, list[RecentBuild]] = {}
    async with store.read() as conn:
        for name in job_names:
            rows = (
                await conn.execute(
                    select(
                        builds.c.id,
                        builds.c.number,
                        builds.c.state,
                        builds.c.finished_at,
                        duration,
                    )
                    .where(builds.c.job_name == name)
                    .order_by(builds.c.id.desc())
                    .limit(per_job)
                )
            ).all()
            result[name] = [
                RecentBuild(
                    id=r.id,
                    number=r.number,
                    state=BuildState(r.state),
                    duration_seconds=None if r.duration is None else float(r.duration),
                    finished_at=r.finished_at,
                )
                for r in rows
            ]
    return result


async def running_stages(store: StoreBase, build_ids: Sequence[int]) -> dict[int, str]:
    """Build id -> the stage of its running step (the first, by position)."""
    if not build_ids:
        return {}
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(build_steps.c.build_id, build_steps.c.stage)
                .where(
                    build_steps.c.build_id.in_(list(build_ids)),
                    build_steps.c.state == "running",
                )
                .order_by(build_steps.c.build_id, build_steps.c.position)
            )
        ).all()
    stages: dict[int, str] = {}
    for r in rows:
        stages.setdefault(r.build_id, r.stage)
    return stages


async def count_active(store: StoreBase) -> dict[str, int]:
    """Number of builds per non-finished state (queued, assigned, running)."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(builds.c.state, func.count())
                .where(builds.c.state.in_([*ACTIVE, BuildState.QUEUED.value]))
                .group_by(builds.c.state)
            )
        ).all()
    return {str(state): int(n) for state, n in rows}
