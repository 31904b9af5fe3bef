"""The named queries of Conveyor's store, one method each, shared by both databases.

Writes that must happen at most once (assigning a build, finishing it) are
conditional updates whose row count says whether they took effect; writes of
the singleton loops carry the leader's epoch (a fencing token) in the same
transaction, so a deposed leader's write fails instead of acting twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.core.dispatch import AgentSlot, QueuedBuild
from conveyor.core.states import ACTIVE_STATES, FINISHED_STATES, BuildState, StepState
from conveyor.errors import Conflict, NotFound
from conveyor.store.base import StoreBase
from conveyor.store.records import (
    AgentRecord,
    ArtifactRecord,
    BuildRecord,
    ControllerRecord,
    InboxItem,
    JobRecord,
    JobVersionRecord,
    StepRecord,
    TokenRecord,
)
from conveyor.store.schema import (
    agents,
    api_tokens,
    artifacts,
    build_steps,
    builds,
    controllers,
    job_versions,
    jobs,
    leases,
    log_chunks,
)

ACTIVE = [s.value for s in ACTIVE_STATES]
FINISHED = [s.value for s in FINISHED_STATES]
#: Bytes read per query when a whole live log is streamed (compaction): a few chunks.
LOG_READ_WINDOW = 8 * 1024 * 1024
#: Bytes of live chunks deleted per transaction once a log is compacted.
LOG_DELETE_BATCH = 4 * 1024 * 1024


class FencedOut(Conflict):
    """A singleton loop's write was refused: its leader epoch is no longer current."""


@dataclass(frozen=True)
class Fence:
    """The leader lease a singleton-loop write is conditional on."""

    lease: str
    holder: str
    epoch: int


@dataclass(frozen=True)
class JobFields:
    name: str
    spec: str
    description: str | None
    label_expression: str | None
    concurrency: int | None
    priority: int


@dataclass(frozen=True)
class NewStep:
    key: str
    stage: str
    name: str
    kind: str
    skipped: bool


@dataclass(frozen=True)
class NewBuild:
    job_name: str
    parameters: dict[str, str]
    plan: dict[str, Any]
    steps: Sequence[NewStep]
    priority: int
    label_expression: str | None
    trigger: str
    max_attempts: int = 1
    lost_retries: int = 1
    attempt: int = 1
    retry_of: int | None = None
    expected_spec_version: int | None = None


@dataclass(frozen=True)
class DispatchRows:
    queued: list[QueuedBuild]
    agents: list[AgentSlot]
    active_per_job: dict[str, int]


class DispatchReader:
    """Reads of one dispatch pass, cheapest first, so that a pass can stop early: is
    anything queued, what is free, then the queue page by page (keyset on the
    dispatch order) only as far as the free executors could reach."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def has_queued(self) -> bool:
        found = await self.conn.scalar(
            select(builds.c.id).where(builds.c.state == BuildState.QUEUED.value).limit(1)
        )
        return found is not None

    async def capacity(self) -> tuple[list[AgentSlot], dict[str, int]]:
        """Every agent with its busy executors, and the active builds per job."""
        active_rows = (
            await self.conn.execute(
                select(builds.c.agent_id, builds.c.job_name, func.count())
                .where(builds.c.state.in_(ACTIVE))
                .group_by(builds.c.agent_id, builds.c.job_name)
            )
        ).all()
        # Only what an AgentSlot holds: not the heartbeat's metrics JSON nor the
        # datetimes, whose decoding was most of a pass's cost with 2,000 agents
        # (as on main since 87d877d).
        agent_rows = (
            await self.conn.execute(
                select(
                    agents.c.id,
                    agents.c.name,
                    agents.c.labels,
                    agents.c.executors,
                    agents.c.online,
                    agents.c.draining,
                    agents.c.cpu_percent,
                )
            )
        ).all()
        busy: dict[int, int] = {}
        per_job: dict[str, int] = {}
        for agent_id, job_name, count in active_rows:
            busy[agent_id] = busy.get(agent_id, 0) + count
            per_job[job_name] = per_job.get(job_name, 0) + count
        slots = [
            AgentSlot(
                agent_id=r.id,
                name=r.name,
                labels=frozenset(r.labels),
                executors=r.executors,
                busy=busy.get(r.id, 0),
                online=bool(r.online),
                draining=bool(r.draining),
                cpu_percent=float(r.cpu_percent) if r.cpu_percent is not None else None,
            )
            for r in agent_rows
        ]
        return slots, per_job

    async def queued(self, limit: int, after: QueuedBuild | None = None) -> list[QueuedBuild]:
        """Up to ``limit`` queued builds in dispatch order (priority first, then id),
        starting after ``after`` (the last build of the previous page)."""
        query = (
            select(
                builds.c.id,
                builds.c.job_name,
                builds.c.priority,
                builds.c.queued_at,
                builds.c.label_expression,
                jobs.c.concurrency,
            )
            .join(jobs, jobs.c.id == builds.c.job_id)
            .where(builds.c.state == BuildState.QUEUED.value)
            .order_by(builds.c.priority.desc(), builds.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                or_(
                    builds.c.priority < after.priority,
                    and_(builds.c.priority == after.priority, builds.c.id > after.build_id),
                )
            )
        rows = (await self.conn.execute(query)).all()
        return [
            QueuedBuild(
                build_id=r.id,
                job_name=r.job_name,
                priority=r.priority,
                queued_at=r.queued_at,
                label_expression=r.label_expression,
                job_concurrency=r.concurrency,
            )
            for r in rows
        ]


def _job(row: Row[Any]) -> JobRecord:
    m = row._mapping
    return JobRecord(
        id=m["id"],
        name=m["name"],
        version=m["version"],
        spec=m["spec"],
        description=m["description"],
        label_expression=m["label_expression"],
        concurrency=m["concurrency"],
        priority=m["priority"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        disabled=bool(m.get("disabled", False)),
    )


def _build(row: Row[Any]) -> BuildRecord:
    m = row._mapping
    return BuildRecord(
        id=m["id"],
        job_id=m["job_id"],
        job_name=m["job_name"],
        number=m["number"],
        state=BuildState(m["state"]),
        priority=m["priority"],
        label_expression=m["label_expression"],
        parameters=dict(m["parameters"]),
        plan=dict(m["plan"]),
        spec_version=m["spec_version"],
        trigger=m["trigger"],
        attempt=m["attempt"],
        max_attempts=m["max_attempts"],
        lost_retries=m["lost_retries"],
        retry_of=m["retry_of"],
        queued_at=m["queued_at"],
        assigned_at=m["assigned_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        agent_id=m["agent_id"],
        assignment_id=m["assignment_id"],
        cancel_requested=bool(m["cancel_requested"]),
        cause=m["cause"],
        log_size=m["log_size"],
        log_blob=m["log_blob"],
        failure_category=m.get("failure_category"),
        pinned=bool(m.get("pinned", False)),
    )


def _agent(row: Row[Any], busy: int) -> AgentRecord:
    # Attribute access: RowMapping.get() goes through Mapping.__contains__, which made
    # listing 2,000 agents cost tens of milliseconds of the event loop.
    return AgentRecord(
        id=row.id,
        name=row.name,
        labels=list(row.labels),
        executors=row.executors,
        version=row.version,
        draining=bool(row.draining),
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
        online=bool(row.online),
        cpu_percent=row.cpu_percent,
        memory_percent=row.memory_percent,
        busy=busy,
        pool=row.pool,
        ephemeral=bool(row.ephemeral),
    )


def _artifact(row: Row[Any]) -> ArtifactRecord:
    m = row._mapping
    return ArtifactRecord(
        id=m["id"],
        build_id=m["build_id"],
        path=m["path"],
        size=m["size"],
        sha256=m["sha256"],
        content_type=m["content_type"],
        blob_key=m["blob_key"],
        created_at=m["created_at"],
    )


class Store(StoreBase):
    # ------------------------------------------------------------------ jobs
    async def create_job(
        self, fields: JobFields, author: str | None, now: datetime, disabled: bool = False
    ) -> JobRecord:
        async with self.write() as conn:
            exists = await conn.scalar(select(jobs.c.id).where(jobs.c.name == fields.name))
            if exists is not None:
                raise Conflict(f"job {fields.name!r} already exists")
            try:
                job_id = await conn.scalar(
                    insert(jobs)
                    .values(
                        **_job_values(fields),
                        version=1,
                        next_build_number=0,
                        disabled=disabled,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(jobs.c.id)
                )
            except IntegrityError as exc:  # a concurrent create won the name (PostgreSQL)
                raise Conflict(f"job {fields.name!r} already exists") from exc
            await conn.execute(
                insert(job_versions).values(
                    job_id=job_id, version=1, spec=fields.spec, created_at=now, author=author
                )
            )
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).one()
        return _job(row)

    async def update_job(
        self, fields: JobFields, expected_version: int | None, author: str | None, now: datetime
    ) -> JobRecord:
        query = select(jobs.c.id, jobs.c.version, jobs.c.spec).where(jobs.c.name == fields.name)
        if self.dialect == "postgresql":
            # Lock the row: an unconditional update then cannot lose a race and 409.
            query = query.with_for_update()
        async with self.write() as conn:
            current = (await conn.execute(query)).one_or_none()
            if current is None:
                raise NotFound(f"job {fields.name!r} not found")
            version = current.version if expected_version is None else expected_version
            if version == current.version and current.spec == fields.spec:
                # Re-applying the same spec is not a change: no new version.
                row = (await conn.execute(select(jobs).where(jobs.c.id == current.id))).one()
                return _job(row)
            result = await conn.execute(
                update(jobs)
                .where(jobs.c.id == current.id, jobs.c.version == version)
                .values(**_job_values(fields), version=version + 1, updated_at=now)
            )
            if result.rowcount != 1:
                raise Conflict(
                    f"job {fields.name!r} was changed by someone else (version {current.version},"
                    f" you sent {version}); fetch it again and retry"
                )
            await conn.execute(
                insert(job_versions).values(
                    job_id=current.id,
                    version=version + 1,
                    spec=fields.spec,
                    created_at=now,
                    author=author,
                )
            )
            row = (await conn.execute(select(jobs).where(jobs.c.id == current.id))).one()
        return _job(row)

    async def get_job(self, name: str) -> JobRecord:
        async with self.read() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.name == name))).one_or_none()
        if row is None:
            raise NotFound(f"job {name!r} not found")
        return _job(row)

    async def list_jobs(self, prefix: str | None = None, limit: int = 500) -> list[JobRecord]:
        query = select(jobs).order_by(jobs.c.name).limit(limit)
        if prefix:
            query = query.where(jobs.c.name.startswith(prefix, autoescape=True))
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_job(r) for r in rows]

    async def delete_job(self, name: str) -> list[str]:
        """Delete a job and its builds; returns the blob keys the caller should remove.
        A multibranch job's branch, pull request and tag jobs go with it, in the same
        transaction: nothing is deleted if any of them has a build still running."""
        from conveyor.store.scm import forget_jobs, sub_job_names  # (scm imports this module)

        async with self.write() as conn:
            job_id = await conn.scalar(select(jobs.c.id).where(jobs.c.name == name))
            if job_id is None:
                raise NotFound(f"job {name!r} not found")
            names = [name, *await sub_job_names(conn, name)]
            ids = list(await conn.scalars(select(jobs.c.id).where(jobs.c.name.in_(names))))
            active = await conn.scalar(
                select(func.count())
                .select_from(builds)
                .where(builds.c.job_id.in_(ids), builds.c.state.in_(ACTIVE))
            )
            if active:
                what = f"job {name!r} " + ("has" if len(names) == 1 else "and its sub-jobs have")
                raise Conflict(f"{what} {active} running build(s); cancel them first")
            blob_keys = list(
                await conn.scalars(
                    select(builds.c.log_blob).where(
                        builds.c.job_id.in_(ids), builds.c.log_blob.is_not(None)
                    )
                )
            )
            blob_keys += list(
                await conn.scalars(
                    select(artifacts.c.blob_key)
                    .join(builds, builds.c.id == artifacts.c.build_id)
                    .where(builds.c.job_id.in_(ids))
                )
            )
            build_ids = select(builds.c.id).where(builds.c.job_id.in_(ids))
            for table in (log_chunks, artifacts, build_steps):
                await conn.execute(delete(table).where(table.c.build_id.in_(build_ids)))
            await conn.execute(delete(builds).where(builds.c.job_id.in_(ids)))
            await conn.execute(delete(job_versions).where(job_versions.c.job_id.in_(ids)))
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
            await forget_jobs(conn, names)
        return [k for k in blob_keys if k]

    async def set_job_disabled(self, name: str, disabled: bool, now: datetime) -> JobRecord:
        """Disable or enable a job (idempotent). Not a new version: the spec is unchanged."""
        async with self.write() as conn:
            result = await conn.execute(
                update(jobs).where(jobs.c.name == name).values(disabled=disabled)
            )
            if result.rowcount != 1:
                raise NotFound(f"job {name!r} not found")
            row = (await conn.execute(select(jobs).where(jobs.c.name == name))).one()
        return _job(row)

    async def delete_build(self, build_id: int) -> list[str]:
        """Delete a finished build with its steps, log and artifacts rows (publication,
        notification and commit rows go by ON DELETE CASCADE); returns the blob keys the
        caller should remove. A build that is queued or running: :class:`Conflict`."""
        query = select(builds.c.state).where(builds.c.id == build_id)
        if self.dialect == "postgresql":
            query = query.with_for_update()  # no agent may start or finish it meanwhile
        async with self.write() as conn:
            row = (await conn.execute(query)).one_or_none()
            if row is None:
                raise NotFound(f"build {build_id} not found")
            if row.state not in FINISHED:
                raise Conflict(
                    f"build {build_id} is {row.state}: cancel it and wait for it to end first"
                )
            keys = [
                k
                for k in await conn.scalars(
                    select(builds.c.log_blob).where(builds.c.id == build_id)
                )
                if k
            ]
            keys += list(
                await conn.scalars(
                    select(artifacts.c.blob_key).where(artifacts.c.build_id == build_id)
                )
            )
            for table in (log_chunks, artifacts, build_steps):
                await conn.execute(delete(table).where(table.c.build_id == build_id))
            result = await conn.execute(
                delete(builds).where(builds.c.id == build_id, builds.c.state.in_(FINISHED))
            )
            if result.rowcount != 1:  # it changed state meanwhile (SQLite has no row lock)
                raise Conflict(f"build {build_id} changed while being deleted; try again")
        return keys

    async def job_versions(self, name: str) -> list[JobVersionRecord]:
        job = await self.get_job(name)
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(job_versions)
                    .where(job_versions.c.job_id == job.id)
                    .order_by(job_versions.c.version.desc())
                )
            ).all()
        return [
            JobVersionRecord(
                version=r.version, spec=r.spec, created_at=r.created_at, author=r.author
            )
            for r in rows
        ]

    # ---------------------------------------------------------------- builds
    async def create_build(self, new: NewBuild, now: datetime) -> BuildRecord:
        async with self.write() as conn:
            job = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.version).where(jobs.c.name == new.job_name)
                )
            ).one_or_none()
            if job is None:
                raise NotFound(f"job {new.job_name!r} not found")
            if new.expected_spec_version is not None and job.version != new.expected_spec_version:
                raise Conflict(f"job {new.job_name!r} changed while the build was being planned")
            number = await conn.scalar(
                update(jobs)
                .where(jobs.c.id == job.id)
                .values(next_build_number=jobs.c.next_build_number + 1)
                .returning(jobs.c.next_build_number)
            )
            build_id = await conn.scalar(
                insert(builds)
                .values(
                    job_id=job.id,
                    job_name=new.job_name,
                    number=number,
                    state=BuildState.QUEUED.value,
                    priority=new.priority,
                    label_expression=new.label_expression,
                    parameters=new.parameters,
                    plan=new.plan,
                    spec_version=job.version,
                    trigger=new.trigger,
                    attempt=new.attempt,
                    max_attempts=new.max_attempts,
                    lost_retries=new.lost_retries,
                    retry_of=new.retry_of,
                    queued_at=now,
                    cancel_requested=False,
                    log_size=0,
                )
                .returning(builds.c.id)
            )
            if new.steps:
                await conn.execute(
                    insert(build_steps),
                    [
                        {
                            "build_id": build_id,
                            "key": s.key,
                            "position": i,
                            "stage": s.stage,
                            "name": s.name,
                            "kind": s.kind,
                            "state": (StepState.SKIPPED if s.skipped else StepState.PENDING).value,
                            "attempt": 0,
                        }
                        for i, s in enumerate(new.steps)
                    ],
                )
            row = (await conn.execute(select(builds).where(builds.c.id == build_id))).one()
        return _build(row)

    async def get_build(self, build_id: int) -> BuildRecord:
        async with self.read() as conn:
            row = (await conn.execute(select(builds).where(builds.c.id == build_id))).one_or_none()
        if row is None:
            raise NotFound(f"build {build_id} not found")
        return _build(row)

    async def get_build_by_number(self, job_name: str, number: int) -> BuildRecord:
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(builds).where(builds.c.job_name == job_name, builds.c.number == number)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"build {job_name} #{number} not found")
        return _build(row)

    async def list_builds(
        self,
        job_name: str | None = None,
        states: Sequence[BuildState] = (),
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[BuildRecord]:
        """Newest first; ``before_id`` is the cursor (the last id of the previous page)."""
        query = select(builds).order_by(builds.c.id.desc()).limit(limit)
        if job_name is not None:
            query = query.where(builds.c.job_name == job_name)
        if states:
            query = query.where(builds.c.state.in_([s.value for s in states]))
        if before_id is not None:
            query = query.where(builds.c.id < before_id)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_build(r) for r in rows]

    async def build_steps(self, build_id: int) -> list[StepRecord]:
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(build_steps)
                    .where(build_steps.c.build_id == build_id)
                    .order_by(build_steps.c.position)
                )
            ).all()
        return [
            StepRecord(
                key=r.key,
                position=r.position,
                stage=r.stage,
                name=r.name,
                kind=r.kind,
                state=StepState(r.state),
                exit_code=r.exit_code,
                attempt=r.attempt,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in rows
        ]

    async def request_cancel(self, build_id: int, now: datetime, by: str) -> BuildRecord:
        """Cancel a queued or assigned (not yet started) build at once; ask the agent
        to stop a running one. An assigned build must end here: an agent that has not
        polled it yet is never offered it, and one that has gets 409 on start."""
        not_started = [BuildState.QUEUED.value, BuildState.ASSIGNED.value]
        async with self.write() as conn:
            await conn.execute(
                update(builds)
                .where(builds.c.id == build_id, builds.c.state.in_(not_started))
                .values(
                    state=BuildState.CANCELLED.value, finished_at=now, cause=f"cancelled by {by}"
                )
            )
            await conn.execute(
                update(builds)
                .where(builds.c.id == build_id, builds.c.state.in_(ACTIVE))
                .values(cancel_requested=True, cause=f"cancelled by {by}")
            )
            await conn.execute(
                update(build_steps)
                .where(
                    build_steps.c.build_id == build_id,
                    build_steps.c.state == StepState.PENDING.value,
                    select(builds.c.state).where(builds.c.id == build_id).scalar_subquery()
                    == BuildState.CANCELLED.value,
                )
                .values(state=StepState.SKIPPED.value)
            )
            row = (await conn.execute(select(builds).where(builds.c.id == build_id))).one_or_none()
        if row is None:
            raise NotFound(f"build {build_id} not found")
        return _build(row)

    # -------------------------------------------------------------- dispatch
    async def dispatch_rows(self, now: datetime, limit: int = 10_000) -> DispatchRows:
        """The whole dispatch snapshot: every queued build (up to ``limit``), every agent."""
        async with self.dispatch_reader() as reader:
            agent_slots, per_job = await reader.capacity()
            queued = await reader.queued(limit)
        return DispatchRows(queued=queued, agents=agent_slots, active_per_job=per_job)

    @asynccontextmanager
    async def dispatch_reader(self) -> AsyncIterator[DispatchReader]:
        """The dispatcher's reads on one connection (one pool checkout per pass)."""
        async with self.read() as conn:
            yield DispatchReader(conn)

    async def _check_fence(self, conn: AsyncConnection, fence: Fence, now: datetime) -> None:
        # FOR SHARE (PostgreSQL) holds off a takeover until this transaction ends;
        # SQLite serialises writers, so the plain read is enough there.
        query = select(leases.c.epoch).where(
            leases.c.name == fence.lease,
            leases.c.holder == fence.holder,
            leases.c.epoch == fence.epoch,
            leases.c.expires_at > now,
        )
        if self.dialect == "postgresql":
            query = query.with_for_update(read=True)
        if await conn.scalar(query) is None:
            raise FencedOut(f"lease {fence.lease!r} epoch {fence.epoch} is no longer current")

    async def assign_builds(
        self,
        assignments: Iterable[tuple[int, int, str]],
        fence: Fence | None,
        now: datetime,
    ) -> list[tuple[int, int, str]]:
        """Assign (build, agent, assignment id) triples; returns those that took effect."""
        done: list[tuple[int, int, str]] = []
        async with self.write() as conn:
            if fence is not None:
                await self._check_fence(conn, fence, now)
            for build_id, agent_id, assignment_id in assignments:
                result = await conn.execute(
                    update(builds)
                    .where(
                        builds.c.id == build_id,
                        builds.c.state == BuildState.QUEUED.value,
                        builds.c.cancel_requested.is_(False),
                    )
                    .values(
                        state=BuildState.ASSIGNED.value,
                        agent_id=agent_id,
                        assignment_id=assignment_id,
                        assigned_at=now,
                    )
                )
                if result.rowcount == 1:
                    done.append((build_id, agent_id, assignment_id))
        return done

    async def agent_inbox(self, agent_id: int) -> list[InboxItem]:
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        builds.c.id,
                        builds.c.assignment_id,
                        builds.c.state,
                        builds.c.cancel_requested,
                    )
                    .where(
                        builds.c.agent_id == agent_id,
                        or_(
                            builds.c.state == BuildState.ASSIGNED.value,
                            and_(builds.c.state.in_(ACTIVE), builds.c.cancel_requested.is_(True)),
                        ),
                    )
                    .order_by(builds.c.id)
                )
            ).all()
        return [
            InboxItem(assignment_id=r.assignment_id, build_id=r.id, cancel=bool(r.cancel_requested))
            for r in rows
        ]

    async def builds_of_agent(self, agent_id: int, assignment_ids: Sequence[str]) -> dict[str, str]:
        """For assignments an agent says it runs: assignment id -> current build state
        (or "unknown"), so the agent can abort what is no longer its own."""
        if not assignment_ids:
            return {}
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(builds.c.assignment_id, builds.c.state, builds.c.agent_id).where(
                        builds.c.assignment_id.in_(list(assignment_ids))
                    )
                )
            ).all()
        found = {r.assignment_id: r.state for r in rows if r.agent_id == agent_id}
        return {aid: found.get(aid, "unknown") for aid in assignment_ids}

    async def _build_by_assignment(
        self, conn: AsyncConnection, assignment_id: str, agent_id: int | None
    ) -> Row[Any]:
        row = (
            await conn.execute(select(builds).where(builds.c.assignment_id == assignment_id))
        ).one_or_none()
        if row is None or (agent_id is not None and row.agent_id != agent_id):
            raise NotFound(f"assignment {assignment_id} not found")
        return row

    async def get_build_for_assignment(self, assignment_id: str, agent_id: int) -> BuildRecord:
        async with self.read() as conn:
            return _build(await self._build_by_assignment(conn, assignment_id, agent_id))

    async def start_build(self, assignment_id: str, agent_id: int, now: datetime) -> BuildRecord:
        async with self.write() as conn:
            await conn.execute(
                update(builds)
                .where(
                    builds.c.assignment_id == assignment_id,
                    builds.c.agent_id == agent_id,
                    builds.c.state == BuildState.ASSIGNED.value,
                )
                .values(state=BuildState.RUNNING.value, started_at=now)
            )
            row = await self._build_by_assignment(conn, assignment_id, agent_id)
        build = _build(row)
        if build.state != BuildState.RUNNING:
            raise Conflict(f"build {build.id} is {build.state.value}; do not run it")
        return build

    async def append_log(
        self, assignment_id: str, agent_id: int, seq: int, offset: int, data: bytes
    ) -> tuple[int, bool]:
        """Store one log chunk (re-sending one is harmless); returns (build id, cancel?)."""
        async with self.write() as conn:
            row = await self._build_by_assignment(conn, assignment_id, agent_id)
            if row.log_blob is not None:
                # Compacted already: the chunk was delivered before the build finished.
                return row.id, bool(row.cancel_requested)
            await conn.execute(
                self.insert_ignore(log_chunks).values(
                    build_id=row.id, seq=seq, offset=offset, size=len(data), data=data
                )
            )
            end = offset + len(data)
            if end > row.log_size:
                await conn.execute(
                    update(builds)
                    .where(builds.c.id == row.id, builds.c.log_size < end)
                    .values(log_size=end)
                )
        return row.id, bool(row.cancel_requested)

    async def update_step(
        self,
        assignment_id: str,
        agent_id: int,
        key: str,
        state: StepState,
        exit_code: int | None,
        attempt: int,
        now: datetime,
    ) -> int:
        async with self.write() as conn:
            row = await self._build_by_assignment(conn, assignment_id, agent_id)
            values: dict[str, Any] = {"state": state.value, "attempt": attempt}
            if state == StepState.RUNNING:
                values["started_at"] = now
                values["exit_code"] = None
                values["finished_at"] = None
            else:
                values["exit_code"] = exit_code
                values["finished_at"] = now
            await conn.execute(
                update(build_steps)
                .where(build_steps.c.build_id == row.id, build_steps.c.key == key)
                .values(**values)
            )
        return int(row.id)

    async def finish_build(
        self,
        assignment_id: str,
        agent_id: int | None,
        result: BuildState,
        cause: str | None,
        now: datetime,
    ) -> tuple[BuildRecord, bool]:
        """Record a build's result; idempotent. Returns (build, whether this call ended it)."""
        async with self.write() as conn:
            row = await self._build_by_assignment(conn, assignment_id, agent_id)
            changed = await conn.execute(
                update(builds)
                .where(builds.c.id == row.id, builds.c.state.in_(ACTIVE))
                .values(
                    state=result.value,
                    finished_at=now,
                    cause=cause if cause is not None else row.cause,
                    started_at=func.coalesce(builds.c.started_at, now),
                )
            )
            if changed.rowcount == 1:
                await self._close_open_steps(conn, row.id, result, now)
                if cause is None and result in (BuildState.FAILED, BuildState.TIMED_OUT):
                    await conn.execute(
                        update(builds)
                        .where(builds.c.id == row.id)
                        .values(cause=await self._failed_step_cause(conn, row.id))
                    )
            row = (await conn.execute(select(builds).where(builds.c.id == row.id))).one()
        return _build(row), changed.rowcount == 1

    async def _failed_step_cause(self, conn: AsyncConnection, build_id: int) -> str | None:
        """Why a build failed, from its first failed step, e.g. "step 'sh: make' in stage
        build failed with exit code 2"."""
        step = (
            await conn.execute(
                select(
                    build_steps.c.stage,
                    build_steps.c.name,
                    build_steps.c.state,
                    build_steps.c.exit_code,
                )
                .where(
                    build_steps.c.build_id == build_id,
                    build_steps.c.state.in_([StepState.FAILED.value, StepState.TIMED_OUT.value]),
                )
                .order_by(build_steps.c.position)
                .limit(1)
            )
        ).one_or_none()
        if step is None:
            return None
        if step.state == StepState.TIMED_OUT.value:
            return f"step '{step.name}' in stage {step.stage} timed out"
        code = "" if step.exit_code is None else f" with exit code {step.exit_code}"
        return f"step '{step.name}' in stage {step.stage} failed{code}"

    async def _close_open_steps(
        self, conn: AsyncConnection, build_id: int, result: BuildState, now: datetime
    ) -> None:
        running_state = {
            BuildState.CANCELLED: StepState.CANCELLED,
            BuildState.TIMED_OUT: StepState.TIMED_OUT,
        }.get(result, StepState.FAILED)
        await conn.execute(
            update(build_steps)
            .where(
                build_steps.c.build_id == build_id,
                build_steps.c.state == StepState.RUNNING.value,
            )
            .values(state=running_state.value, finished_at=now)
        )
        await conn.execute(
            update(build_steps)
            .where(
                build_steps.c.build_id == build_id,
                build_steps.c.state == StepState.PENDING.value,
            )
            .values(state=StepState.SKIPPED.value)
        )

    # ------------------------------------------------------------------ logs
    async def read_log_chunks(self, build_id: int, start: int, limit: int) -> bytes:
        """Bytes [start, start+limit) of a live (not yet compacted) log."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(log_chunks.c.offset, log_chunks.c.data)
                    .where(
                        log_chunks.c.build_id == build_id,
                        log_chunks.c.offset + log_chunks.c.size > start,
                        log_chunks.c.offset < start + limit,
                    )
                    # In primary-key order, not by offset: SQLite would copy every
                    # selected chunk (MiBs) through a temporary B-tree to sort them by
                    # offset (4x the CPU of the read itself). The agent numbers chunks
                    # in offset order; the few rows are put in offset order here anyway.
                    .order_by(log_chunks.c.seq)
                )
            ).all()
        end = start + limit
        parts: list[bytes] = []
        position = start
        for offset, data in sorted(rows, key=lambda row: int(row[0])):
            if offset > position:
                break  # a gap: a chunk not yet delivered; stop before it
            if offset + len(data) <= position:
                continue
            data = bytes(data)
            # Slice only when needed: a whole chunk is passed on without a copy.
            part = data if offset == position and offset + len(data) <= end else None
            if part is None:
                part = data[position - offset : end - offset]
            parts.append(part)
            position += len(part)
            if position >= end:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_log_chunks(
        self, build_id: int, start: int = 0, window: int = LOG_READ_WINDOW
    ) -> AsyncIterator[bytes]:
        """A live log from ``start`` to its end (or its first gap), ``window`` bytes per
        read: memory stays bounded whatever the log's size (compaction streams this)."""
        position = start
        while True:
            data = await self.read_log_chunks(build_id, position, window)
            if not data:
                return
            position += len(data)
            yield data

    async def mark_log_compacted(self, build_id: int, blob_key: str, size: int) -> bool:
        """Point the build at its compacted log and drop the chunks, unless another
        compaction won already: returns whether this one took effect."""
        async with self.write() as conn:
            result = await conn.execute(
                update(builds)
                .where(builds.c.id == build_id, builds.c.log_blob.is_(None))
                .values(log_blob=blob_key, log_size=size)
            )
            if result.rowcount != 1:
                return False
        await self.drop_log_chunks(build_id)
        return True

    async def drop_log_chunks(self, build_id: int, batch_bytes: int = LOG_DELETE_BATCH) -> None:
        """Delete the live chunks of a compacted log, about ``batch_bytes`` per
        transaction. One DELETE of a 100 MB log holds SQLite's only writer for about
        a second (it walks every overflow page), and every other write (the live logs
        of other builds) would wait for it. Chunks left by a crash midway are found by
        :meth:`compacted_builds_with_chunks`."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(log_chunks.c.seq, log_chunks.c.size)
                    .where(log_chunks.c.build_id == build_id)
                    .order_by(log_chunks.c.seq)
                )
            ).all()
        batch: list[int] = []
        size = 0
        for seq, chunk_size in rows:
            batch.append(seq)
            size += chunk_size
            if size >= batch_bytes or len(batch) >= 1000 or seq == rows[-1][0]:
                async with self.write() as conn:
                    await conn.execute(
                        delete(log_chunks).where(
                            log_chunks.c.build_id == build_id, log_chunks.c.seq.in_(batch)
                        )
                    )
                batch, size = [], 0

    async def compacted_builds_with_chunks(self, limit: int = 100) -> list[int]:
        """Builds whose log is compacted but still has live chunks (a crash between
        compaction and the chunks' deletion)."""
        async with self.read() as conn:
            return list(
                await conn.scalars(
                    select(log_chunks.c.build_id)
                    .join(builds, builds.c.id == log_chunks.c.build_id)
                    .where(builds.c.log_blob.is_not(None))
                    .group_by(log_chunks.c.build_id)
                    .order_by(log_chunks.c.build_id)
                    .limit(limit)
                )
            )

    async def uncompacted_finished_builds(self, limit: int = 100) -> list[int]:
        async with self.read() as conn:
            return list(
                await conn.scalars(
                    select(builds.c.id)
                    .where(builds.c.state.in_(FINISHED), builds.c.log_blob.is_(None))
                    .order_by(builds.c.id)
                    .limit(limit)
                )
            )

    # ------------------------------------------------------------- artifacts
    async def record_artifact(
        self,
        assignment_id: str,
        agent_id: int,
        path: str,
        size: int,
        sha256: str,
        content_type: str,
        blob_key: str,
        now: datetime,
    ) -> ArtifactRecord:
        async with self.write() as conn:
            build = await self._build_by_assignment(conn, assignment_id, agent_id)
            await conn.execute(
                delete(artifacts).where(artifacts.c.build_id == build.id, artifacts.c.path == path)
            )
            await conn.execute(
                insert(artifacts).values(
                    build_id=build.id,
                    path=path,
                    size=size,
                    sha256=sha256,
                    content_type=content_type,
                    blob_key=blob_key,
                    created_at=now,
                )
            )
            row = (
                await conn.execute(
                    select(artifacts).where(
                        artifacts.c.build_id == build.id, artifacts.c.path == path
                    )
                )
            ).one()
        return _artifact(row)

    async def list_artifacts(self, build_id: int) -> list[ArtifactRecord]:
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(artifacts)
                    .where(artifacts.c.build_id == build_id)
                    .order_by(artifacts.c.path)
                )
            ).all()
        return [_artifact(r) for r in rows]

    async def get_artifact(self, build_id: int, path: str) -> ArtifactRecord:
        async with self.read() as conn:
            row = (
                await conn.execute(
                    select(artifacts).where(
                        artifacts.c.build_id == build_id, artifacts.c.path == path
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"build {build_id} has no artifact {path!r}")
        return _artifact(row)

    # ---------------------------------------------------------------- agents
    async def register_agent(
        self, name: str, labels: list[str], executors: int, version: str, now: datetime
    ) -> AgentRecord:
        async with self.write() as conn:
            values = {
                "labels": labels,
                "executors": executors,
                "version": version,
                "last_seen_at": now,
                "online": True,
            }
            result = await conn.execute(update(agents).where(agents.c.name == name).values(values))
            if result.rowcount == 0:
                try:
                    await conn.execute(
                        insert(agents).values(
                            name=name, registered_at=now, draining=False, **values
                        )
                    )
                except IntegrityError as exc:  # a concurrent registration won the name
                    raise Conflict(f"agent name {name!r} is being registered twice") from exc
            row = (await conn.execute(select(agents).where(agents.c.name == name))).one()
        return await self._with_busy(row)

    async def _with_busy(self, row: Row[Any]) -> AgentRecord:
        async with self.read() as conn:
            busy = await conn.scalar(
                select(func.count())
                .select_from(builds)
                .where(builds.c.agent_id == row.id, builds.c.state.in_(ACTIVE))
            )
        return _agent(row, int(busy or 0))

    async def touch_agent(
        self,
        agent_id: int,
        now: datetime,
        cpu_percent: int | None = None,
        memory_percent: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> bool:
        """Record that an agent is alive; returns True if it was offline until now."""
        values: dict[str, Any] = {"last_seen_at": now, "online": True}
        if metrics is not None:
            values.update(cpu_percent=cpu_percent, memory_percent=memory_percent, metrics=metrics)
        async with self.write() as conn:
            was_online = await conn.scalar(select(agents.c.online).where(agents.c.id == agent_id))
            if was_online is None:
                raise NotFound(f"agent {agent_id} not found; register again")
            await conn.execute(update(agents).where(agents.c.id == agent_id).values(values))
        return not was_online

    async def list_agents(self) -> list[AgentRecord]:
        # Without the heartbeat's ``metrics`` JSON, which an AgentRecord does not hold:
        # decoding it for every agent was most of a listing's cost with 2,000 agents.
        columns = [c for c in agents.c if c.name != "metrics"]
        async with self.read() as conn:
            rows = (await conn.execute(select(*columns).order_by(agents.c.name))).all()
            busy_rows = (
                await conn.execute(
                    select(builds.c.agent_id, func.count())
                    .where(builds.c.state.in_(ACTIVE))
                    .group_by(builds.c.agent_id)
                )
            ).all()
        busy = {agent_id: count for agent_id, count in busy_rows}
        return [_agent(r, busy.get(r.id, 0)) for r in rows]

    async def agent_system_figures(self) -> dict[str, dict[str, Any]]:
        """Agent name -> the extra figures of its last heartbeat (disk_percent, load1…)."""
        async with self.read() as conn:
            rows = (await conn.execute(select(agents.c.name, agents.c.metrics))).all()
        return {r.name: dict(r.metrics) for r in rows if isinstance(r.metrics, dict)}

    async def get_agent(self, agent_id: int) -> AgentRecord:
        async with self.read() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one_or_none()
        if row is None:
            raise NotFound(f"agent {agent_id} not found")
        return await self._with_busy(row)

    async def set_agent_draining(self, agent_id: int, draining: bool) -> None:
        async with self.write() as conn:
            result = await conn.execute(
                update(agents).where(agents.c.id == agent_id).values(draining=draining)
            )
        if result.rowcount == 0:
            raise NotFound(f"agent {agent_id} not found")

    async def reap_agents(
        self, cutoff: datetime, fence: Fence | None, now: datetime
    ) -> list[BuildRecord]:
        """Mark agents unseen since ``cutoff`` offline; their active builds end: `lost`
        when a lost-retry is left (the caller retries them), else `failed` ("agent
        lost"), or `cancelled` when a cancel was pending.

        Returns the builds this call ended."""
        async with self.write() as conn:
            if fence is not None:
                await self._check_fence(conn, fence, now)
            stale = list(
                await conn.scalars(
                    select(agents.c.id).where(
                        agents.c.online.is_(True), agents.c.last_seen_at < cutoff
                    )
                )
            )
            if not stale:
                return []
            await conn.execute(update(agents).where(agents.c.id.in_(stale)).values(online=False))
            lost_rows = (
                await conn.execute(
                    select(builds).where(builds.c.agent_id.in_(stale), builds.c.state.in_(ACTIVE))
                )
            ).all()
            lost: list[BuildRecord] = []
            for row in lost_rows:
                cancelled = bool(row.cancel_requested)
                # `lost` means "retried on another agent"; with no lost-retry left the
                # build ends `failed` at once (one write: nobody ever sees it `lost`).
                if cancelled:
                    state = BuildState.CANCELLED
                elif row.lost_retries > 0:
                    state = BuildState.LOST
                else:
                    state = BuildState.FAILED
                cause = row.cause if cancelled else "agent lost"
                await conn.execute(
                    update(builds)
                    .where(builds.c.id == row.id, builds.c.state.in_(ACTIVE))
                    .values(state=state.value, finished_at=now, cause=cause)
                )
                await self._close_open_steps(conn, row.id, state, now)
                fresh = (await conn.execute(select(builds).where(builds.c.id == row.id))).one()
                lost.append(_build(fresh))
        return lost

    # ------------------------------------------------------------- controllers
    async def controller_heartbeat(
        self, controller_id: str, address: str, version: str, role: str, now: datetime
    ) -> None:
        async with self.write() as conn:
            result = await conn.execute(
                update(controllers)
                .where(controllers.c.id == controller_id)
                .values(address=address, version=version, role=role, heartbeat_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    self.insert_ignore(controllers).values(
                        id=controller_id,
                        address=address,
                        version=version,
                        role=role,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

    async def list_controllers(self, since: datetime) -> list[ControllerRecord]:
        """Controllers heard from since ``since``, oldest first."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(controllers)
                    .where(controllers.c.heartbeat_at >= since)
                    .order_by(controllers.c.started_at)
                )
            ).all()
        return [
            ControllerRecord(
                id=r.id,
                address=r.address,
                version=r.version,
                role=r.role,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
            )
            for r in rows
        ]

    async def forget_controllers(self, before: datetime) -> None:
        async with self.write() as conn:
            await conn.execute(delete(controllers).where(controllers.c.heartbeat_at < before))

    # ---------------------------------------------------------------- tokens
    async def create_token(
        self,
        name: str,
        token_hash: str,
        scope: str,
        now: datetime,
        expires_at: datetime | None = None,
    ) -> TokenRecord:
        async with self.write() as conn:
            token_id = await conn.scalar(
                insert(api_tokens)
                .values(
                    name=name,
                    token_hash=token_hash,
                    scope=scope,
                    created_at=now,
                    expires_at=expires_at,
                )
                .returning(api_tokens.c.id)
            )
        return TokenRecord(
            id=int(token_id or 0),
            name=name,
            scope=scope,
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
        )

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        async with self.read() as conn:
            row = (
                await conn.execute(select(api_tokens).where(api_tokens.c.token_hash == token_hash))
            ).one_or_none()
        if row is None:
            return None
        return TokenRecord(
            id=row.id,
            name=row.name,
            scope=row.scope,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )

    async def count_tokens(self) -> int:
        async with self.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(api_tokens)) or 0)

    # ---------------------------------------------------------------- leases
    async def acquire_lease(self, name: str, holder: str, ttl: float, now: datetime) -> int | None:
        """Take or renew a lease; returns the epoch held, or None if another holds it.

        The epoch grows at every change of holder (and after an expiry), so it
        can fence writes made on behalf of an older holder."""
        expires = now + timedelta(seconds=ttl)
        async with self.write() as conn:
            row = (await conn.execute(select(leases).where(leases.c.name == name))).one_or_none()
            if row is None:
                result = await conn.execute(
                    self.insert_ignore(leases).values(
                        name=name, holder=holder, epoch=1, expires_at=expires
                    )
                )
                return 1 if result.rowcount == 1 else None
            if row.holder == holder and row.expires_at > now:
                result = await conn.execute(
                    update(leases)
                    .where(
                        leases.c.name == name,
                        leases.c.epoch == row.epoch,
                        leases.c.holder == holder,
                    )
                    .values(expires_at=expires)
                )
                return int(row.epoch) if result.rowcount == 1 else None
            if row.expires_at <= now:
                result = await conn.execute(
                    update(leases)
                    .where(leases.c.name == name, leases.c.epoch == row.epoch)
                    .values(holder=holder, epoch=row.epoch + 1, expires_at=expires)
                )
                return int(row.epoch) + 1 if result.rowcount == 1 else None
            return None

    async def release_lease(self, name: str, holder: str, now: datetime) -> None:
        async with self.write() as conn:
            await conn.execute(
                update(leases)
                .where(leases.c.name == name, leases.c.holder == holder)
                .values(expires_at=now)
            )

    async def get_lease(self, name: str) -> tuple[str, int, datetime] | None:
        async with self.read() as conn:
            row = (await conn.execute(select(leases).where(leases.c.name == name))).one_or_none()
        return None if row is None else (row.holder, int(row.epoch), row.expires_at)

    # ------------------------------------------------- agent protocol fast paths
    # Added for the poll-start and batched-events paths of /agent/v1; the methods
    # above keep serving the single-request endpoints unchanged.

    async def poll_inbox(
        self, agent_id: int, with_running: bool = False
    ) -> list[tuple[InboxItem, str]]:
        """An agent's inbox with each build's state, in one statement; raises NotFound
        for an unknown agent (the poll's only other check). With ``with_running`` the
        agent's running builds are included too (a poll that starts builds offers again
        one whose answer was lost)."""
        wanted = or_(
            builds.c.state == BuildState.ASSIGNED.value,
            and_(builds.c.state.in_(ACTIVE), builds.c.cancel_requested.is_(True)),
        )
        if with_running:
            wanted = or_(wanted, builds.c.state == BuildState.RUNNING.value)
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        agents.c.id.label("agent"),
                        builds.c.id,
                        builds.c.assignment_id,
                        builds.c.state,
                        builds.c.cancel_requested,
                    )
                    .select_from(agents)
                    .outerjoin(builds, and_(builds.c.agent_id == agents.c.id, wanted))
                    .where(agents.c.id == agent_id)
                    .order_by(builds.c.id)
                )
            ).all()
        if not rows:
            raise NotFound(f"agent {agent_id} not found; register again")
        return [
            (
                InboxItem(
                    assignment_id=r.assignment_id, build_id=r.id, cancel=bool(r.cancel_requested)
                ),
                str(r.state),
            )
            for r in rows
            if r.id is not None
        ]

    async def start_assignments(
        self, agent_id: int, assignment_ids: Sequence[str], now: datetime
    ) -> list[BuildRecord]:
        """Start several of an agent's assignments in one transaction (what start_build
        does for one: only from 'assigned', only the agent's own). Returns the builds
        of ``assignment_ids`` that are running on this agent afterwards, whether this
        call started them or an earlier one did (a repeated call is harmless)."""
        if not assignment_ids:
            return []
        ids = list(assignment_ids)
        async with self.write() as conn:
            await conn.execute(
                update(builds)
                .where(
                    builds.c.assignment_id.in_(ids),
                    builds.c.agent_id == agent_id,
                    builds.c.state == BuildState.ASSIGNED.value,
                )
                .values(state=BuildState.RUNNING.value, started_at=now)
            )
            rows = (
                await conn.execute(
                    select(builds)
                    .where(
                        builds.c.assignment_id.in_(ids),
                        builds.c.agent_id == agent_id,
                        builds.c.state == BuildState.RUNNING.value,
                    )
                    .order_by(builds.c.id)
                )
            ).all()
        return [_build(r) for r in rows]

    async def apply_agent_events(
        self,
        assignment_id: str,
        agent_id: int,
        steps: Sequence[tuple[str, StepState, int | None, int]],
        finish: tuple[BuildState, str | None] | None,
        now: datetime,
    ) -> tuple[BuildRecord, bool]:
        """Apply step updates ``(key, state, exit_code, attempt)`` in order, then the
        optional finish, in one transaction; the same writes as update_step and
        finish_build (idempotent). Returns (build, whether the finish ended it)."""
        changed = False
        async with self.write() as conn:
            row = await self._build_by_assignment(conn, assignment_id, agent_id)
            for key, state, exit_code, attempt in steps:
                values: dict[str, Any] = {"state": state.value, "attempt": attempt}
                if state == StepState.RUNNING:
                    values.update(started_at=now, exit_code=None, finished_at=None)
                else:
                    values.update(exit_code=exit_code, finished_at=now)
                await conn.execute(
                    update(build_steps)
                    .where(build_steps.c.build_id == row.id, build_steps.c.key == key)
                    .values(**values)
                )
            if finish is not None:
                result, cause = finish
                ended = await conn.execute(
                    update(builds)
                    .where(builds.c.id == row.id, builds.c.state.in_(ACTIVE))
                    .values(
                        state=result.value,
                        finished_at=now,
                        cause=cause if cause is not None else row.cause,
                        started_at=func.coalesce(builds.c.started_at, now),
                    )
                )
                changed = ended.rowcount == 1
                if changed:
                    await self._close_open_steps(conn, row.id, result, now)
                    if cause is None and result in (BuildState.FAILED, BuildState.TIMED_OUT):
                        await conn.execute(
                            update(builds)
                            .where(builds.c.id == row.id)
                            .values(cause=await self._failed_step_cause(conn, row.id))
                        )
                row = (await conn.execute(select(builds).where(builds.c.id == row.id))).one()
        return _build(row), changed


def _job_values(fields: JobFields) -> dict[str, Any]:
    return {
        "name": fields.name,
        "spec": fields.spec,
        "description": fields.description,
        "label_expression": fields.label_expression,
        "concurrency": fields.concurrency,
        "priority": fields.priority,
    }
