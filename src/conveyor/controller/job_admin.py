"""Operational actions on jobs and builds that are not edits of a pipeline spec:
disabling / enabling a job, and deleting one finished build with what it stored.

Shared by the Conveyor API (``/api/v1``), the Jenkins-compatible API and the web UI,
so that the rules are the same wherever the action comes from:

* a disabled job starts no builds (the API refuses with 409, triggers skip it);
* a build is deleted only once finished (409 while queued or running); a pinned build
  or a released one (a publish step published from it) is kept (409) unless an admin
  (``config.manage``) forces it. Its log and artifact blobs go with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import exists, select

from conveyor.blobs import BlobStore
from conveyor.controller.clock import Clock
from conveyor.errors import Conflict
from conveyor.store import Store
from conveyor.store.publications import publications
from conveyor.store.records import BuildRecord, JobRecord

log = structlog.get_logger(__name__)


async def set_job_disabled(store: Store, clock: Clock, name: str, disabled: bool) -> JobRecord:
    """Idempotent: disabling a disabled job (or enabling an enabled one) changes nothing."""
    job = await store.set_job_disabled(name, disabled, clock())
    log.info("job.disabled" if disabled else "job.enabled", job=name)
    return job


@dataclass(frozen=True)
class DeletedBuild:
    build_id: int
    job: str
    number: int
    blobs: int


async def _kept_because(store: Store, build: BuildRecord) -> str | None:
    async with store.read() as conn:
        released = await conn.scalar(select(exists().where(publications.c.build_id == build.id)))
    if build.pinned:
        return "is pinned (kept whatever retention says): unpin it first"
    if released:
        return "was released (a publish step published from it)"
    return None


async def delete_build(
    store: Store, blobs: BlobStore, build: BuildRecord, may_force: bool, force: bool
) -> DeletedBuild:
    """Delete a finished build, its steps, log and artifacts (rows and blobs)."""
    if not build.state.finished:
        raise Conflict(
            f"build {build.job_name} #{build.number} is {build.state.value}: "
            "cancel it and wait for it to end first"
        )
    kept = await _kept_because(store, build)
    if kept is not None and not (force and may_force):
        how = (
            "; add force=true to delete it anyway"
            if may_force
            else "; only an admin may delete it (with force=true)"
        )
        raise Conflict(f"build {build.job_name} #{build.number} {kept}{how}")
    keys = await store.delete_build(build.id)
    for key in keys:
        await blobs.delete(key)
    log.info("build.deleted", build_id=build.id, job=build.job_name, number=build.number)
    return DeletedBuild(build.id, build.job_name, build.number, len(keys))
