"""Applying a configuration (``conveyor.core.config_repo``) to the store: validate
everything first, then change everything in ONE write transaction, recording the
commit on every job version it creates; and exporting it back. Rollback and the guard
on Git-managed jobs are in ``conveyor.controller.job_edits``; reading a config
repository and the leader's sync loop in ``conveyor.controller.config_sync``.

Kinds with state in the store register a :class:`KindStore` in :data:`KIND_STORES`
(folder and job here; pool, notifier, grant and schedule in
``conveyor.controller.config_kinds``). A kind's ``check`` runs against the store
before anything is written (a grant's user exists, the last admin stays…).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.controller.clock import Clock
from conveyor.core.config_repo import (
    KINDS,
    Change,
    ConfigError,
    ConfigIssue,
    Desired,
    load_config,
    plan_changes,
    render_folder,
)
from conveyor.core.pipeline import parse_pipeline
from conveyor.errors import Conflict, InvalidInput
from conveyor.store import Store
from conveyor.store.schema import job_versions, jobs
from conveyor.store.scm import (
    config_applies,
    folders,
    job_meta,
    record_version_commit,
    set_job_meta,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ApplyContext:
    source: str  # config repository URL or folder
    commit: str | None
    author: str
    now: datetime


@dataclass(frozen=True)
class ApplyEnv:
    """What the checks of some kinds need besides the store: the controller's home (a
    pool's provider checks its config against it) and the notifiers of the
    controller's notifications file (name -> file), which a config may not redefine."""

    home: Path | None = None
    file_notifiers: Mapping[str, str] = field(default_factory=dict)


Check = Callable[[AsyncConnection, list[Desired], ApplyEnv], Awaitable[list[ConfigIssue]]]


@dataclass(frozen=True)
class KindStore:
    """How one kind's objects are read from and written to the store."""

    # name -> (canonical text, the config source managing it or None)
    current: Callable[[AsyncConnection], Awaitable[dict[str, tuple[str, str | None]]]]
    write: Callable[[AsyncConnection, Desired, ApplyContext], Awaitable[None]]
    release: Callable[[AsyncConnection, str], Awaitable[None]]
    #: Checks against the store, before anything is written (all kinds' issues are
    #: reported together; any issue: nothing is applied).
    check: Check | None = None
    #: For an unchanged object: only (re)claim it (file, commit); None: ``write`` it.
    claim: Callable[[AsyncConnection, Desired, ApplyContext], Awaitable[None]] | None = None


# ------------------------------------------------------------------- folders


async def _folders_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    rows = (await conn.execute(select(folders))).all()
    return {r.name: (render_folder(r.name, r.description), r.managed_repo) for r in rows}


async def _folder_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    values = {
        "description": item.fields.get("description"),
        "managed_repo": ctx.source,
        "managed_file": item.file,
    }
    result = await conn.execute(update(folders).where(folders.c.name == item.name).values(**values))
    if result.rowcount == 0:
        await conn.execute(insert(folders).values(name=item.name, **values))


async def _folder_release(conn: AsyncConnection, name: str) -> None:
    await conn.execute(
        update(folders).where(folders.c.name == name).values(managed_repo=None, managed_file=None)
    )


# ---------------------------------------------------------------------- jobs


async def _jobs_current(conn: AsyncConnection) -> dict[str, tuple[str, str | None]]:
    rows = (
        await conn.execute(
            select(jobs.c.name, jobs.c.spec, job_meta.c.managed_repo, job_meta.c.parent).outerjoin(
                job_meta, job_meta.c.job_id == jobs.c.id
            )
        )
    ).all()
    # Multibranch branch jobs are made by their parent, never by the configuration.
    return {r.name: (r.spec, r.managed_repo) for r in rows if r.parent is None}


def _job_values(spec: str) -> dict[str, Any]:
    from conveyor.controller.triggers import parsed_pipeline

    # Validated already (load_config or a stored version): the cache avoids a re-parse.
    pipeline = parsed_pipeline("config", spec) or parse_pipeline(spec)
    return {
        "name": pipeline.name,
        "spec": spec,
        "description": pipeline.description,
        "label_expression": pipeline.agent,
        "concurrency": pipeline.concurrency,
        "priority": pipeline.priority or 0,
    }


async def upsert_job(
    conn: AsyncConnection,
    spec: str,
    author: str,
    now: datetime,
    commit: str | None,
    source: str | None,
    file: str | None,
) -> tuple[int, int, bool]:
    """Create or update a job inside the caller's transaction; a changed spec makes a
    new version, which records ``commit``. Returns (job id, version, changed)."""
    values = _job_values(spec)
    row = (
        await conn.execute(
            select(jobs.c.id, jobs.c.version, jobs.c.spec).where(jobs.c.name == values["name"])
        )
    ).one_or_none()
    if row is None:
        job_id = int(
            await conn.scalar(
                insert(jobs)
                .values(**values, version=1, next_build_number=0, created_at=now, updated_at=now)
                .returning(jobs.c.id)
            )
        )
        version, changed = 1, True
    elif row.spec != spec:
        job_id, version, changed = int(row.id), int(row.version) + 1, True
        result = await conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.version == row.version)
            .values(**values, version=version, updated_at=now)
        )
        if result.rowcount != 1:
            raise Conflict(f"job {values['name']!r} changed meanwhile; apply again")
    else:
        return int(row.id), int(row.version), False
    await conn.execute(
        insert(job_versions).values(
            job_id=job_id, version=version, spec=spec, created_at=now, author=author
        )
    )
    await record_version_commit(conn, job_id, version, commit, source, file)
    return job_id, version, changed


async def _job_write(conn: AsyncConnection, item: Desired, ctx: ApplyContext) -> None:
    job_id, _, _ = await upsert_job(
        conn, item.text, ctx.author, ctx.now, ctx.commit, ctx.source, item.file
    )
    await set_job_meta(
        conn, job_id, managed_repo=ctx.source, managed_file=item.file, managed_commit=ctx.commit
    )


async def _job_release(conn: AsyncConnection, name: str) -> None:
    job_id = await conn.scalar(select(jobs.c.id).where(jobs.c.name == name))
    if job_id is not None:
        await set_job_meta(conn, job_id, managed_repo=None, managed_file=None, managed_commit=None)


async def _managed_files(conn: AsyncConnection, source: str) -> dict[str, str | None]:
    """Jobs this source manages already -> the file each comes from."""
    rows = (
        await conn.execute(
            select(jobs.c.name, job_meta.c.managed_file)
            .join(job_meta, job_meta.c.job_id == jobs.c.id)
            .where(job_meta.c.managed_repo == source)
        )
    ).all()
    return {r.name: r.managed_file for r in rows}


KIND_STORES: dict[str, KindStore] = {
    "folder": KindStore(_folders_current, _folder_write, _folder_release),
    "job": KindStore(_jobs_current, _job_write, _job_release),
}


# --------------------------------------------------------------------- apply


def _invalid(exc: ConfigError) -> InvalidInput:
    return InvalidInput(
        f"the configuration is invalid ({len(exc.issues)} problem(s)); nothing was applied",
        errors=[str(i) for i in exc.issues],
    )


@dataclass(frozen=True)
class ApplyResult:
    changes: list[Change]
    applied: bool
    apply_id: int | None
    commit: str | None


class ConfigApplier:
    def __init__(self, store: Store, clock: Clock, env: ApplyEnv | None = None) -> None:
        self.store = store
        self.clock = clock
        self.env = env or ApplyEnv()

    async def _check(self, conn: AsyncConnection, desired: list[Desired]) -> None:
        """The kinds' checks against the store; InvalidInput listing every issue."""
        issues = await self._store_issues(conn, desired)
        if issues:
            raise _invalid(ConfigError(issues))

    async def _store_issues(
        self, conn: AsyncConnection, desired: list[Desired]
    ) -> list[ConfigIssue]:
        issues: list[ConfigIssue] = []
        for kind_name, kind_store in KIND_STORES.items():
            if kind_store.check is not None:
                items = [d for d in desired if d.kind == kind_name]
                if items:
                    issues.extend(await kind_store.check(conn, items, self.env))
        return issues

    async def _current(
        self, conn: AsyncConnection, source: str
    ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
        current: dict[tuple[str, str], str] = {}
        managed: set[tuple[str, str]] = set()
        for kind_name, kind_store in KIND_STORES.items():
            for name, (text, repo) in (await kind_store.current(conn)).items():
                current[(kind_name, name)] = text
                if repo == source:
                    managed.add((kind_name, name))
        return current, managed

    async def apply(
        self,
        files: Mapping[str, str],
        source: str,
        commit: str | None,
        author: str,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Validate every file, then apply all changes in one transaction (or none)."""
        try:
            desired = load_config(files)
        except ConfigError as exc:
            # The store checks of the valid files' objects are reported with the rest.
            async with self.store.read() as conn:
                more = await self._store_issues(conn, exc.parsed)
            raise _invalid(ConfigError([*exc.issues, *more])) from None
        by_key = {(d.kind, d.name): d for d in desired}
        if dry_run:
            async with self.store.read() as conn:
                await self._check(conn, desired)
                current, managed = await self._current(conn, source)
            return ApplyResult(plan_changes(desired, current, managed), False, None, commit)
        ctx = ApplyContext(source, commit, author, self.clock())
        async with self.store.write() as conn:
            await self._check(conn, desired)
            current, managed = await self._current(conn, source)
            changes = plan_changes(desired, current, managed)
            settled = await _managed_files(conn, source)
            unchanged_jobs: list[str] = []
            for change in changes:
                kind_store = KIND_STORES[change.kind]
                item = by_key.get((change.kind, change.name))
                if change.action == "release":
                    await kind_store.release(conn, change.name)
                elif (
                    change.kind == "job"
                    and change.action == "unchanged"
                    and item is not None
                    and settled.get(change.name) == item.file
                ):
                    unchanged_jobs.append(change.name)  # only its commit moves: in bulk below
                elif change.action == "unchanged" and kind_store.claim is not None:
                    assert item is not None
                    await kind_store.claim(conn, item, ctx)
                else:
                    # Unchanged objects are (re)claimed too: the file/commit are current.
                    assert item is not None
                    await kind_store.write(conn, item, ctx)
            if unchanged_jobs:
                ids = select(jobs.c.id).where(jobs.c.name.in_(unchanged_jobs))
                await conn.execute(
                    update(job_meta).where(job_meta.c.job_id.in_(ids)).values(managed_commit=commit)
                )
            summary = {
                action: [f"{c.kind} {c.name}" for c in changes if c.action == action]
                for action in ("create", "update", "release")
            }
            apply_id = await conn.scalar(
                insert(config_applies)
                .values(
                    applied_at=ctx.now, source=source, commit=commit, author=author, summary=summary
                )
                .returning(config_applies.c.id)
            )
        log.info(
            "config.applied",
            source=source,
            commit=commit,
            **{k: len(v) for k, v in summary.items()},
        )
        return ApplyResult(changes, True, int(apply_id), commit)

    async def export(self) -> dict[str, str]:
        """Every object as the file an apply reads (export -> apply -> export is stable)."""
        files: dict[str, str] = {}
        async with self.store.read() as conn:
            for kind in KINDS.values():
                for name, (text, _) in (await KIND_STORES[kind.name].current(conn)).items():
                    files[kind.path(name)] = text
        return dict(sorted(files.items()))

    async def last_commit(self, source: str) -> str | None:
        async with self.store.read() as conn:
            return await conn.scalar(
                select(config_applies.c.commit)
                .where(config_applies.c.source == source)
                .order_by(config_applies.c.id.desc())
                .limit(1)
            )

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    select(config_applies).order_by(config_applies.c.id.desc()).limit(limit)
                )
            ).all()
        return [dict(r._mapping) for r in rows]


def apply_env(settings: Any, notifications: Any) -> ApplyEnv:
    """The :class:`ApplyEnv` of a controller: its home and the notifiers of its
    notifications file (``notifications``: a NotificationsConfig or None)."""
    path = str(getattr(settings, "notifications_file", None) or "")
    names = list(getattr(notifications, "notifiers", None) or {})
    return ApplyEnv(getattr(settings, "home", None), {name: path for name in names})


# The store handlers of the kinds pool, notifier, grant and schedule register on import.
from conveyor.controller import config_kinds as _config_kinds  # noqa: E402, F401
