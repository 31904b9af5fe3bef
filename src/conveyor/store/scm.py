"""SCM, trigger, webhook and config-as-code state (migration 0009).

* ``build_commits``: the commit a build built (repository, branch, SHA, author, message).
* ``scm_heads``: the last commit the leader saw (and built) per job and branch.
* ``trigger_claims``: one row per trigger firing ("poll:svc:main:SHA", "cron:nightly:
  2026-12-04T03:17", "upstream:41:deploy"): inserting it first is what makes a firing
  start at most one build, also when the leader changes half-way.
* ``webhook_deliveries``: every webhook request and what became of it.
* ``webhook_secrets``: per-job webhook secrets (HMAC keys, so stored as given).
* ``job_meta``: where a job is managed (config repository, file, commit), multibranch
  parent and branch, archived flag.
* ``job_version_commits``: the config commit each job version came from.
* ``config_applies``: every ``conveyor config apply``.
* ``scm_polls``: when the leader last polled a job's repository, and the last error
  (migration 0016, which also gave ``job_meta`` a sub-job ``kind``: branch, pr, tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.store.schema import Id, jobs, metadata
from conveyor.store.store import Store
from conveyor.store.types import UTCDateTime

build_commits = Table(
    "build_commits",
    metadata,
    Column("build_id", Id, ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
    Column("repository", String(2000), nullable=False),
    Column("branch", String(250), nullable=True),
    Column("sha", String(64), nullable=False),
    Column("author", String(300), nullable=True),
    Column("email", String(300), nullable=True),
    Column("message", Text, nullable=True),
    Column("committed_at", String(40), nullable=True),
)

scm_heads = Table(
    "scm_heads",
    metadata,
    Column("job_name", String(200), primary_key=True),
    Column("branch", String(250), primary_key=True),
    Column("sha", String(64), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

trigger_claims = Table(
    "trigger_claims",
    metadata,
    Column("key", String(600), primary_key=True),
    Column("build_id", Id, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("provider", String(20), nullable=False),
    Column("event", String(100), nullable=True),
    Column("delivery_id", String(200), nullable=True),
    Column("repository", String(2000), nullable=True),
    Column("ref", String(300), nullable=True),
    Column("sha", String(64), nullable=True),
    Column("outcome", String(20), nullable=False),  # accepted | ignored | rejected
    Column("reason", Text, nullable=True),
    Column("builds", JSON, nullable=False),  # [build ids]
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("secret", String(500), nullable=False),
)

job_meta = Table(
    "job_meta",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("managed_repo", String(2000), nullable=True),
    Column("managed_file", String(1000), nullable=True),
    Column("managed_commit", String(64), nullable=True),
    Column("parent", String(200), nullable=True),  # multibranch: the job this one is a branch of
    Column("branch", String(250), nullable=True),
    Column("archived", Boolean, nullable=False, default=False),
    # What a sub-job builds: "branch" (or NULL), "pr" (pull/merge request) or "tag".
    Column("kind", String(20), nullable=True),
    Column("change_id", String(50), nullable=True),  # pr: the request's number
    Column("change_target", String(250), nullable=True),  # pr: its target branch
)

scm_polls = Table(
    "scm_polls",
    metadata,
    Column("job_name", String(200), primary_key=True),
    Column("polled_at", UTCDateTime, nullable=False),
    Column("succeeded_at", UTCDateTime, nullable=True),
    Column("error", Text, nullable=True),
)

job_version_commits = Table(
    "job_version_commits",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("commit", String(64), nullable=True),
    Column("source", String(2000), nullable=True),  # config repo URL or folder
    Column("file", String(1000), nullable=True),
)

folders = Table(
    "folders",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("description", Text, nullable=True),
    Column("managed_repo", String(2000), nullable=True),
    Column("managed_file", String(1000), nullable=True),
)

config_applies = Table(
    "config_applies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("applied_at", UTCDateTime, nullable=False),
    Column("source", String(2000), nullable=False),
    Column("commit", String(64), nullable=True),
    Column("author", String(200), nullable=True),
    Column("summary", JSON, nullable=False),
)


@dataclass(frozen=True)
class BuildCommit:
    build_id: int
    repository: str
    branch: str | None
    sha: str
    author: str | None
    email: str | None
    message: str | None
    committed_at: str | None


@dataclass(frozen=True)
class JobMeta:
    job_name: str
    managed_repo: str | None
    managed_file: str | None
    managed_commit: str | None
    parent: str | None
    branch: str | None
    archived: bool
    kind: str | None = None  # sub-jobs: "branch" (None too), "pr", "tag"
    change_id: str | None = None
    change_target: str | None = None

    @property
    def sub_kind(self) -> str:
        return self.kind or "branch"


# ------------------------------------------------------------------ commits


async def record_build_commit(store: Store, commit: BuildCommit) -> None:
    async with store.write() as conn:
        await conn.execute(insert(build_commits).values(**commit.__dict__))


async def get_build_commit(store: Store, build_id: int) -> BuildCommit | None:
    async with store.read() as conn:
        row = (
            await conn.execute(select(build_commits).where(build_commits.c.build_id == build_id))
        ).one_or_none()
    return None if row is None else BuildCommit(**row._mapping)


async def build_commits_of(store: Store, build_ids: list[int]) -> dict[int, BuildCommit]:
    if not build_ids:
        return {}
    async with store.read() as conn:
        rows = (
            await conn.execute(select(build_commits).where(build_commits.c.build_id.in_(build_ids)))
        ).all()
    return {r.build_id: BuildCommit(**r._mapping) for r in rows}


# ------------------------------------------------------------- heads, claims


async def get_heads(store: Store, job_name: str) -> dict[str, str]:
    async with store.read() as conn:
        rows = (await conn.execute(select(scm_heads).where(scm_heads.c.job_name == job_name))).all()
    return {r.branch: r.sha for r in rows}


async def set_head(store: Store, job_name: str, branch: str, sha: str, now: datetime) -> None:
    async with store.write() as conn:
        result = await conn.execute(
            update(scm_heads)
            .where(scm_heads.c.job_name == job_name, scm_heads.c.branch == branch)
            .values(sha=sha, updated_at=now)
        )
        if result.rowcount == 0:
            await conn.execute(
                store.insert_ignore(scm_heads).values(
                    job_name=job_name, branch=branch, sha=sha, updated_at=now
                )
            )


async def claim(store: Store, key: str, now: datetime) -> bool:
    """Insert the claim row for one trigger firing; only one caller ever wins."""
    try:
        async with store.write() as conn:
            result = await conn.execute(
                store.insert_ignore(trigger_claims).values(key=key[:600], created_at=now)
            )
            return bool(result.rowcount)
    except IntegrityError:
        return False


async def set_claim_build(store: Store, key: str, build_id: int) -> None:
    async with store.write() as conn:
        await conn.execute(
            update(trigger_claims)
            .where(trigger_claims.c.key == key[:600])
            .values(build_id=build_id)
        )


async def release_claim(store: Store, key: str) -> None:
    """Undo a claim whose build could not be created (so a later attempt may try)."""
    async with store.write() as conn:
        await conn.execute(delete(trigger_claims).where(trigger_claims.c.key == key[:600]))


async def prune_claims(store: Store, before: datetime) -> int:
    """Forget claims older than ``before`` (long past anything a trigger re-examines)."""
    async with store.write() as conn:
        result = await conn.execute(
            delete(trigger_claims).where(trigger_claims.c.created_at < before)
        )
    return int(result.rowcount or 0)


async def claimed(store: Store, key: str) -> bool:
    async with store.read() as conn:
        found = await conn.scalar(
            select(trigger_claims.c.key).where(trigger_claims.c.key == key[:600])
        )
    return found is not None


# ------------------------------------------------------------------- polls


@dataclass(frozen=True)
class PollStatus:
    polled_at: datetime
    succeeded_at: datetime | None
    error: str | None


async def record_poll(store: Store, job_name: str, now: datetime, error: str | None) -> None:
    """The outcome of one poll of a job's repository (``error`` None: it worked)."""
    values: dict[str, Any] = {"polled_at": now, "error": error}
    if error is None:
        values["succeeded_at"] = now
    async with store.write() as conn:
        result = await conn.execute(
            update(scm_polls).where(scm_polls.c.job_name == job_name).values(**values)
        )
        if result.rowcount == 0:
            await conn.execute(store.insert_ignore(scm_polls).values(job_name=job_name, **values))


async def get_poll(store: Store, job_name: str) -> PollStatus | None:
    async with store.read() as conn:
        row = (
            await conn.execute(select(scm_polls).where(scm_polls.c.job_name == job_name))
        ).one_or_none()
    return None if row is None else PollStatus(row.polled_at, row.succeeded_at, row.error)


async def forget_jobs(conn: AsyncConnection, names: list[str]) -> None:
    """Rows kept by job *name* (not id, so no foreign key removes them): a deleted job's
    heads and poll status, so that a new job of the same name starts afresh."""
    if names:
        await conn.execute(delete(scm_heads).where(scm_heads.c.job_name.in_(names)))
        await conn.execute(delete(scm_polls).where(scm_polls.c.job_name.in_(names)))


async def sub_job_names(conn: AsyncConnection, parent: str) -> list[str]:
    """The branch, pull request and tag jobs of a multibranch parent (archived too)."""
    rows = await conn.scalars(
        select(jobs.c.name)
        .join(job_meta, job_meta.c.job_id == jobs.c.id)
        .where(job_meta.c.parent == parent)
        .order_by(jobs.c.name)
    )
    return list(rows)


# ----------------------------------------------------------------- webhooks


async def record_delivery(
    store: Store,
    now: datetime,
    provider: str,
    outcome: str,
    reason: str | None,
    builds: list[int],
    event: str | None = None,
    delivery_id: str | None = None,
    repository: str | None = None,
    ref: str | None = None,
    sha: str | None = None,
) -> int:
    async with store.write() as conn:
        value = await conn.scalar(
            insert(webhook_deliveries)
            .values(
                received_at=now,
                provider=provider,
                event=event,
                delivery_id=(delivery_id or None) and delivery_id[:200],
                repository=repository and repository[:2000],
                ref=ref and ref[:300],
                sha=sha and sha[:64],
                outcome=outcome,
                reason=reason,
                builds=builds,
            )
            .returning(webhook_deliveries.c.id)
        )
    return int(value)


async def list_deliveries(
    store: Store, limit: int = 100, outcome: str | None = None
) -> list[dict[str, Any]]:
    query = select(webhook_deliveries).order_by(webhook_deliveries.c.id.desc()).limit(limit)
    if outcome:
        query = query.where(webhook_deliveries.c.outcome == outcome)
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    return [dict(r._mapping) for r in rows]


async def set_webhook_secret(store: Store, job_name: str, secret: str | None) -> None:
    async with store.write() as conn:
        job_id = await _job_id(conn, job_name)
        await conn.execute(delete(webhook_secrets).where(webhook_secrets.c.job_id == job_id))
        if secret:
            await conn.execute(insert(webhook_secrets).values(job_id=job_id, secret=secret))


async def webhook_secrets_of(store: Store) -> dict[str, str]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(jobs.c.name, webhook_secrets.c.secret).join(
                    webhook_secrets, webhook_secrets.c.job_id == jobs.c.id
                )
            )
        ).all()
    return {r.name: r.secret for r in rows}


# ------------------------------------------------------------------ job meta


async def _job_id(conn: AsyncConnection, name: str) -> int:
    from conveyor.errors import NotFound

    job_id = await conn.scalar(select(jobs.c.id).where(jobs.c.name == name))
    if job_id is None:
        raise NotFound(f"job {name!r} not found")
    return int(job_id)


async def set_job_meta(conn: AsyncConnection, job_id: int, **values: Any) -> None:
    """Upsert a job's meta row inside the caller's transaction."""
    result = await conn.execute(
        update(job_meta).where(job_meta.c.job_id == job_id).values(**values)
    )
    if result.rowcount == 0:
        await conn.execute(insert(job_meta).values(job_id=job_id, **values))


async def update_job_meta(store: Store, job_name: str, **values: Any) -> None:
    async with store.write() as conn:
        await set_job_meta(conn, await _job_id(conn, job_name), **values)


async def all_job_meta(store: Store) -> dict[str, JobMeta]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(jobs.c.name, job_meta).join(job_meta, job_meta.c.job_id == jobs.c.id)
            )
        ).all()
    return {r.name: _meta(r._mapping) for r in rows}


async def get_job_meta(store: Store, job_name: str) -> JobMeta | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(jobs.c.name, job_meta)
                .join(job_meta, job_meta.c.job_id == jobs.c.id)
                .where(jobs.c.name == job_name)
            )
        ).one_or_none()
    return None if row is None else _meta(row._mapping)


def _meta(m: Any) -> JobMeta:
    return JobMeta(
        job_name=m["name"],
        managed_repo=m["managed_repo"],
        managed_file=m["managed_file"],
        managed_commit=m["managed_commit"],
        parent=m["parent"],
        branch=m["branch"],
        archived=bool(m["archived"]),
        kind=m["kind"],
        change_id=m["change_id"],
        change_target=m["change_target"],
    )


async def record_version_commit(
    conn: AsyncConnection,
    job_id: int,
    version: int,
    commit: str | None,
    source: str | None,
    file: str | None,
) -> None:
    # A version is new when its commit is recorded: a plain insert.
    await conn.execute(
        insert(job_version_commits).values(
            job_id=job_id, version=version, commit=commit, source=source, file=file
        )
    )


async def version_commits(store: Store, job_name: str) -> dict[int, dict[str, str | None]]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(job_version_commits)
                .join(jobs, jobs.c.id == job_version_commits.c.job_id)
                .where(jobs.c.name == job_name)
            )
        ).all()
    return {r.version: {"commit": r.commit, "source": r.source, "file": r.file} for r in rows}
