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
from typing import Any

from sqlalchemy import ColumnElement, TextClause, case, func, literal_column, select, text

from conveyor.core.states import ACTIVE_STATES, BuildState
from conveyor.store.base import StoreBase
from conveyor.store.schema import agents, build_steps, builds

ACTIVE = [s.value for s in ACTIVE_STATES]


@dataclass(frozen=True)
class TrendPoint:
    start: datetime
    total: int
    succeeded: int
    timed: int = 0  # builds with both a start and a finish time
    total_seconds: float = 0.0

    @property
    def success_rate(self) -> float | None:
        return None if self.total == 0 else self.succeeded / self.total

    @property
    def mean_seconds(self) -> float | None:
        return None if self.timed == 0 else self.total_seconds / self.timed


@dataclass(frozen=True)
class Trends:
    hours: list[TrendPoint]  # the last 24 hours, oldest first
    days: list[TrendPoint]  # the last 7 days (UTC), oldest first


@dataclass(frozen=True)
class RecentBuild:
    id: int
    number: int
    state: BuildState
    duration_seconds: float | None


def _hour_expr(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        utc = builds.c.finished_at.op("AT TIME ZONE")(literal_column("'UTC'"))
        return func.to_char(func.date_trunc("hour", utc), "YYYY-MM-DD HH24")
    # SQLite stores naive UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]'.
    return func.strftime("%Y-%m-%d %H", builds.c.finished_at)


def _duration_expr(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.extract("epoch", builds.c.finished_at - builds.c.started_at)
    return (func.julianday(builds.c.finished_at) - func.julianday(builds.c.started_at)) * 86400.0


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def build_trends(store: StoreBase, now: datetime) -> Trends:
    """Finished builds of the last 24 hours (per hour) and 7 days (per UTC day): how
    many, how many succeeded, mean duration. Empty buckets are included.

    One GROUP BY per hour over the week (the only pass over the history); days are
    summed from hours here. Only finished builds have ``finished_at``."""
    first_day = _hour(now).replace(hour=0) - timedelta(days=6)
    hour = _hour_expr(store.dialect).label("hour")
    duration = _duration_expr(store.dialect)
    query = (
        select(
            hour,
            func.count().label("total"),
            func.sum(case((builds.c.state == BuildState.SUCCEEDED.value, 1), else_=0)).label(
                "succeeded"
            ),
            func.count(duration).label("timed"),
            func.sum(duration).label("total_seconds"),
        )
        .where(builds.c.finished_at >= first_day)
        .group_by(hour)
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    by_hour = {
        str(r.hour): TrendPoint(
            start=datetime.strptime(str(r.hour), "%Y-%m-%d %H").replace(tzinfo=UTC),
            total=int(r.total),
            succeeded=int(r.succeeded or 0),
            timed=int(r.timed or 0),
            total_seconds=float(r.total_seconds or 0.0),
        )
        for r in rows
    }
    last = _hour(now)
    hours = []
    for i in range(23, -1, -1):
        start = last - timedelta(hours=i)
        hours.append(by_hour.get(start.strftime("%Y-%m-%d %H"), TrendPoint(start, 0, 0)))
    days = []
    for d in range(7):
        start = first_day + timedelta(days=d)
        inside = [p for p in by_hour.values() if start <= p.start < start + timedelta(days=1)]
        days.append(
            TrendPoint(
                start=start,
                total=sum(p.total for p in inside),
                succeeded=sum(p.succeeded for p in inside),
                timed=sum(p.timed for p in inside),
                total_seconds=sum(p.total_seconds for p in inside),
            )
        )
    return Trends(hours=hours, days=days)


#: Jobs per UNION ALL statement (SQLite allows 500 compound terms).
UNION_CHUNK = 200


_SQL_DURATION = {
    "postgresql": "EXTRACT(EPOCH FROM finished_at - started_at)",
    "sqlite": "(julianday(finished_at) - julianday(started_at)) * 86400.0",
}


def _recent_statement(dialect: str, count: int) -> TextClause:
    # Plain SQL: building and compiling a 200-part SQLAlchemy construct costs more
    # than running it. The duration is computed in the database (no timestamp parsing).
    part = (
        "SELECT * FROM (SELECT job_name, id, number, state, "
        f"{_SQL_DURATION[dialect]} AS duration "
        "FROM builds WHERE job_name = :n{i} ORDER BY id DESC LIMIT :per_job) AS p{i}"
    )
    return text(" UNION ALL ".join(part.replace("{i}", str(i)) for i in range(count)))


async def recent_builds_per_job(
    store: StoreBase, job_names: Sequence[str], per_job: int = 20
) -> dict[str, list[RecentBuild]]:
    """Each job's newest builds, newest first. One statement for up to UNION_CHUNK
    jobs: a UNION ALL of per-job ``ORDER BY id DESC LIMIT n`` parts, each an index
    range on (job_name, id), so it stays cheap however long the history is."""
    result: dict[str, list[RecentBuild]] = {name: [] for name in job_names}
    names = list(job_names)
    async with store.read() as conn:
        for start in range(0, len(names), UNION_CHUNK):
            chunk = names[start : start + UNION_CHUNK]
            params: dict[str, Any] = {f"n{i}": name for i, name in enumerate(chunk)}
            params["per_job"] = per_job
            statement = _recent_statement(store.dialect, len(chunk))
            for r in (await conn.execute(statement, params)).all():
                result[r.job_name].append(
                    RecentBuild(
                        id=r.id,
                        number=r.number,
                        state=BuildState(r.state),
                        duration_seconds=None if r.duration is None else float(r.duration),
                    )
                )
    for recent in result.values():
        recent.sort(key=lambda b: b.id, reverse=True)
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


async def change_marks(store: StoreBase) -> tuple[Any, ...]:
    """A cheap fingerprint of what the live parts of the UI show: the newest build
    id, every unfinished build's state and cancel flag, and every agent's state and
    figures. It changes when something on those pages would (index reads only)."""
    unfinished = [*ACTIVE, BuildState.QUEUED.value]
    async with store.read() as conn:
        newest = await conn.scalar(select(func.max(builds.c.id)))
        active = (
            await conn.execute(
                select(builds.c.id, builds.c.state, builds.c.cancel_requested)
                .where(builds.c.state.in_(unfinished))
                .order_by(builds.c.id)
            )
        ).all()
        fleet = (
            await conn.execute(
                select(
                    agents.c.id,
                    agents.c.online,
                    agents.c.draining,
                    agents.c.cpu_percent,
                    agents.c.memory_percent,
                ).order_by(agents.c.id)
            )
        ).all()
    return (newest, tuple(tuple(r) for r in active), tuple(tuple(r) for r in fleet))
