"""API edits of jobs: the guard that keeps them off jobs managed in a config
repository (with an audited admin override), and rollback to an earlier version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from sqlalchemy import select

from conveyor.controller.config_apply import upsert_job
from conveyor.errors import Conflict, Forbidden, NotFound
from conveyor.store import Store
from conveyor.store.schema import job_versions, jobs
from conveyor.store.scm import get_job_meta

log = structlog.get_logger(__name__)


#: Called for every admin's forced edit of a Git-managed job:
#: (who, action, job, where it is managed). The security feature's ``record_audit``
#: replaces this; by default the event is logged.
AuditHook = Callable[[str, str, str, str], Awaitable[None]]


async def _log_audit(who: str, action: str, job: str, managed: str) -> None:
    log.warning("audit.forced_edit", user=who, action=action, job=job, managed=managed)


audit_hook: AuditHook = _log_audit


async def guard_managed_edit(
    store: Store, job_name: str, caller_name: str, may_force: bool, force: bool, action: str
) -> None:
    """Refuse an API edit of a job managed from a config repository (409 naming where),
    unless ``force`` by an admin, which is audited."""
    meta = await get_job_meta(store, job_name)
    if meta is None or meta.managed_repo is None:
        return
    where = f"{meta.managed_repo} ({meta.managed_file})"
    if not force:
        raise Conflict(
            f"job {job_name!r} is managed in the config repository {where}; change it there "
            "(or, as an admin, force this edit with ?force=true)"
        )
    if not may_force:
        raise Forbidden(
            f"only an admin (permission config.manage) may force an edit of {job_name!r},"
            f" managed in {where}"
        )
    await audit_hook(caller_name, action, job_name, where)
    from conveyor.security.audit import record_audit

    await record_audit(
        store,
        actor=caller_name,
        action=f"job.{action}.forced",
        target=f"job:{job_name}",
        outcome="success",
        source="api",
        security=True,
        detail={"managed": where},
    )


async def rollback_job(
    store: Store, name: str, to_version: int, author: str, now: datetime
) -> tuple[int, bool]:
    """Make the spec of version ``to_version`` current again, as a new version (the
    history is kept). Returns (current version, whether a new version was made)."""
    async with store.write() as conn:
        job_id = await conn.scalar(select(jobs.c.id).where(jobs.c.name == name))
        if job_id is None:
            raise NotFound(f"job {name!r} not found")
        spec = await conn.scalar(
            select(job_versions.c.spec).where(
                job_versions.c.job_id == job_id, job_versions.c.version == to_version
            )
        )
        if spec is None:
            raise NotFound(f"job {name!r} has no version {to_version}")
        _, version, changed = await upsert_job(
            conn,
            spec,
            f"{author} (rollback to v{to_version})",
            now,
            None,
            f"rollback to version {to_version}",
            None,
        )
    return version, changed
