"""/api/v1 builds: trigger, list (cursor pages), get, cancel, log (paged and live), artifacts."""

from __future__ import annotations

import mimetypes
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.logs import follow_log, read_log
from conveyor.api.schemas import (
    ArtifactOut,
    BuildDeletedOut,
    BuildOut,
    BuildPage,
    CommitOut,
    QueueItemOut,
    TriggerIn,
)
from conveyor.controller.job_admin import DeletedBuild
from conveyor.controller.job_admin import delete_build as remove_build
from conveyor.core.dispatch import explain_waits
from conveyor.core.permissions import Permission
from conveyor.core.states import BuildState
from conveyor.errors import InvalidInput
from conveyor.runtime import Runtime
from conveyor.security.audit import audit_request
from conveyor.store.queue_probe import has_queued_builds
from conveyor.store.records import BuildRecord
from conveyor.store.scm import build_commits_of, get_build_commit

router = APIRouter(prefix="/api/v1", tags=["builds"])

MAX_LOG_PAGE = 8 * 1024 * 1024


async def _detail(runtime: Runtime, build: BuildRecord) -> BuildOut:
    steps = await runtime.store.build_steps(build.id)
    artifacts = await runtime.store.list_artifacts(build.id)
    out = BuildOut.of(build, steps, artifacts)
    commit = await get_build_commit(runtime.store, build.id)
    out.commit = None if commit is None else CommitOut.model_validate(commit, from_attributes=True)
    return out


def _states(state: list[str] | None) -> list[BuildState]:
    try:
        return [BuildState(s) for s in state or []]
    except ValueError as exc:
        allowed = ", ".join(s.value for s in BuildState)
        raise InvalidInput(f"unknown build state in {state}; use one of {allowed}") from exc


async def _page(
    runtime: Runtime, job: str | None, state: list[str] | None, cursor: int | None, limit: int
) -> BuildPage:
    items = await runtime.store.list_builds(job, _states(state), cursor, limit)
    next_cursor = items[-1].id if len(items) == limit else None
    commits = await build_commits_of(runtime.store, [b.id for b in items])
    outs = [BuildOut.of(b) for b in items]
    for out in outs:
        if out.id in commits:
            out.commit = CommitOut.model_validate(commits[out.id], from_attributes=True)
    return BuildPage(items=outs, next_cursor=next_cursor)


@router.post("/jobs/{name:path}/builds", status_code=201)
async def trigger_build(
    name: str, body: TriggerIn, runtime: RuntimeDep, caller: CallerDep, response: Response
) -> BuildOut:
    build, steps = await runtime.builds.trigger_with_steps(
        name, body.parameters, f"api:{caller.name}", body.priority
    )
    response.headers["Location"] = f"/api/v1/builds/{build.id}"
    if steps is None:  # a job with a repository: its commit is recorded meanwhile
        return await _detail(runtime, build)
    # A new build has the steps it was stored with, no artifacts and no commit:
    # nothing to read back.
    return BuildOut.of(build, steps, [])


@router.get("/jobs/{name:path}/builds/{number}")
async def get_job_build(name: str, number: int, runtime: RuntimeDep, _: CallerDep) -> BuildOut:
    return await _detail(runtime, await runtime.store.get_build_by_number(name, number))


@router.get("/jobs/{name:path}/builds")
async def list_job_builds(
    name: str,
    runtime: RuntimeDep,
    _: CallerDep,
    state: Annotated[list[str] | None, Query()] = None,
    cursor: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> BuildPage:
    await runtime.store.get_job(name)  # 404 for an unknown job, not an empty page
    return await _page(runtime, name, state, cursor, limit)


@router.get("/builds")
async def list_builds(
    runtime: RuntimeDep,
    caller: CallerDep,
    job: str | None = None,
    state: Annotated[list[str] | None, Query()] = None,
    cursor: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> BuildPage:
    page = await _page(runtime, job, state, cursor, limit)
    # Only the jobs the caller may read (a page may then hold fewer than ``limit``).
    page.items = [b for b in page.items if caller.can(Permission.JOB_READ, b.job)]
    return page


@router.get("/builds/{build_id}")
async def get_build(build_id: int, runtime: RuntimeDep, _: CallerDep) -> BuildOut:
    return await _detail(runtime, await runtime.store.get_build(build_id))


@router.post("/builds/{build_id}/cancel", status_code=202)
async def cancel_build(build_id: int, runtime: RuntimeDep, caller: CallerDep) -> BuildOut:
    return BuildOut.of(await runtime.builds.cancel(build_id, caller.name))


async def delete_build_audited(
    request: Request, runtime: Runtime, build: BuildRecord, may_force: bool, force: bool
) -> DeletedBuild:
    """Delete a finished build (controller.job_admin's rules) and audit it; shared by
    this API and the Jenkins-compatible ``doDelete``."""
    deleted = await remove_build(runtime.store, runtime.blobs, build, may_force, force)
    await audit_request(
        request,
        runtime,
        "build.delete",
        200,
        target=f"{deleted.job} #{deleted.number}",
        build_id=deleted.build_id,
        blobs=deleted.blobs,
        forced=force,
    )
    return deleted


@router.delete("/builds/{build_id}")
async def delete_build(
    build_id: int, request: Request, runtime: RuntimeDep, caller: CallerDep, force: bool = False
) -> BuildDeletedOut:
    """Delete a finished build with its steps, log and artifacts (409 while it is queued
    or running; a pinned or released build only by an admin with ``force=true``)."""
    build = await runtime.store.get_build(build_id)
    may_force = caller.can(Permission.CONFIG_MANAGE, build.job_name)
    deleted = await delete_build_audited(request, runtime, build, may_force, force)
    return BuildDeletedOut(
        id=deleted.build_id, job=deleted.job, number=deleted.number, blobs_deleted=deleted.blobs
    )


@router.get("/builds/{build_id}/log")
async def get_log(
    build_id: int,
    runtime: RuntimeDep,
    _: CallerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_PAGE)] = MAX_LOG_PAGE,
) -> Response:
    """The log as text from byte ``offset``. ``X-Next-Offset`` is where to continue;
    ``X-More-Data: true`` while the build runs or bytes remain."""
    build = await runtime.store.get_build(build_id)
    data = await read_log(runtime, build, offset, limit)
    next_offset = offset + len(data)
    more = not build.state.finished or next_offset < build.log_size
    return Response(
        content=data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Offset": str(offset),
            "X-Next-Offset": str(next_offset),
            "X-Log-Size": str(build.log_size),
            "X-More-Data": "true" if more else "false",
            "X-Build-State": build.state.value,
        },
    )


@router.get("/builds/{build_id}/log/stream")
async def stream_log(
    build_id: int,
    request: Request,
    runtime: RuntimeDep,
    _: CallerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    await runtime.store.get_build(build_id)  # 404 before the stream starts
    return StreamingResponse(
        follow_log(runtime, build_id, offset, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/builds/{build_id}/artifacts")
async def list_artifacts(build_id: int, runtime: RuntimeDep, _: CallerDep) -> list[ArtifactOut]:
    await runtime.store.get_build(build_id)
    return [ArtifactOut.of(a) for a in await runtime.store.list_artifacts(build_id)]


@router.get("/builds/{build_id}/artifacts/{path:path}")
async def download_artifact(
    build_id: int, path: str, runtime: RuntimeDep, _: CallerDep
) -> StreamingResponse:
    artifact = await runtime.store.get_artifact(build_id, path)
    filename = path.rsplit("/", 1)[-1]
    return StreamingResponse(
        runtime.blobs.stream(artifact.blob_key),
        media_type=artifact.content_type,
        headers={
            "Content-Length": str(artifact.size),
            "Content-Disposition": content_disposition(filename),
            "X-Checksum-Sha256": artifact.sha256,
        },
    )


@router.get("/queue", tags=["queue"])
async def queue(runtime: RuntimeDep, caller: CallerDep) -> list[QueueItemOut]:
    if not await has_queued_builds(runtime.store):
        return []  # one index probe instead of reading every agent (thousands of them)
    snapshot = await runtime.dispatcher.snapshot()
    reasons = explain_waits(snapshot, runtime.settings.dispatch_strategy)
    now = runtime.clock()
    return [
        QueueItemOut(
            build_id=q.build_id,
            job=q.job_name,
            priority=q.priority,
            queued_at=q.queued_at,
            waiting_seconds=max(0.0, (now - q.queued_at).total_seconds()),
            reason=reasons.get(q.build_id, "about to be assigned"),
        )
        for q in snapshot.queued
        if caller.can(Permission.JOB_READ, q.job_name)
    ]


def content_disposition(filename: str) -> str:
    """``attachment`` with the name; non-ASCII names (which HTTP headers cannot carry
    as is) get an ASCII fallback plus the RFC 6266 ``filename*`` form."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


def guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
