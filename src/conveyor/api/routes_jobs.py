"""/api/v1/jobs: create, update (optimistic concurrency), list, get, delete, versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.schemas import JobIn, JobOut, JobVersionOut
from conveyor.controller.job_admin import set_job_disabled
from conveyor.controller.job_edits import guard_managed_edit
from conveyor.core.permissions import Permission
from conveyor.core.pipeline import Pipeline, parse_pipeline
from conveyor.errors import Conflict, InvalidInput, NotFound
from conveyor.store.store import JobFields

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


def job_fields(spec: str) -> tuple[Pipeline, JobFields]:
    pipeline = parse_pipeline(spec, "conveyor.yml")
    return pipeline, JobFields(
        name=pipeline.name,
        spec=spec,
        description=pipeline.description,
        label_expression=pipeline.agent,
        concurrency=pipeline.concurrency,
        priority=pipeline.priority or 0,
    )


def _etag(version: int) -> str:
    return f'"{version}"'


def _if_match(header: str | None, body_version: int | None) -> int | None:
    if header is None:
        return body_version
    value = header.strip().removeprefix("W/").strip('"')
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidInput(
            f"If-Match must be a job version ETag like '\"3\"', got {header!r}"
        ) from exc


@router.get("")
async def list_jobs(
    runtime: RuntimeDep, caller: CallerDep, prefix: str | None = None
) -> list[JobOut]:
    jobs = await runtime.store.list_jobs(prefix)
    return [JobOut.of(j) for j in jobs if caller.can(Permission.JOB_READ, j.name)]


@router.post("", status_code=201)
async def create_job(
    body: JobIn, runtime: RuntimeDep, caller: CallerDep, response: Response
) -> JobOut:
    _, fields = job_fields(body.spec)
    caller.require(Permission.JOB_WRITE, fields.name)
    job = await runtime.store.create_job(fields, caller.name, runtime.clock())
    response.headers["ETag"] = _etag(job.version)
    response.headers["Location"] = f"/api/v1/jobs/{job.name}"
    return JobOut.of(job)


@router.get("/{name:path}/versions/{version}")
async def get_job_version(
    name: str, version: int, runtime: RuntimeDep, _: CallerDep
) -> JobVersionOut:
    for v in await runtime.store.job_versions(name):
        if v.version == version:
            return JobVersionOut(
                version=v.version, created_at=v.created_at, author=v.author, spec=v.spec
            )
    raise NotFound(f"job {name!r} has no version {version}")


@router.get("/{name:path}/versions")
async def job_versions(name: str, runtime: RuntimeDep, _: CallerDep) -> list[JobVersionOut]:
    return [
        JobVersionOut(version=v.version, created_at=v.created_at, author=v.author, spec=v.spec)
        for v in await runtime.store.job_versions(name)
    ]


@router.put("/{name:path}")
async def put_job(
    name: str,
    body: JobIn,
    runtime: RuntimeDep,
    caller: CallerDep,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
    force: bool = False,
) -> JobOut:
    """Create or update a job. With a version (If-Match or body) the update is
    conditional: if someone changed the job since, the answer is 409."""
    _, fields = job_fields(body.spec)
    if fields.name != name:
        raise InvalidInput(f"the spec names job {fields.name!r} but the URL names {name!r}")
    await guard_managed_edit(
        runtime.store, name, caller.name, caller.can(Permission.CONFIG_MANAGE), force, "update"
    )
    expected = _if_match(if_match, body.version)
    now = runtime.clock()
    try:
        job = await runtime.store.update_job(fields, expected, caller.name, now)
    except NotFound:
        if expected is not None:
            raise
        try:
            job = await runtime.store.create_job(fields, caller.name, now)
            response.status_code = 201
        except Conflict:  # created concurrently: an unconditional PUT then updates it
            job = await runtime.store.update_job(fields, None, caller.name, now)
    response.headers["ETag"] = _etag(job.version)
    return JobOut.of(job)


@router.post("/{name:path}/disable")
async def disable_job(name: str, runtime: RuntimeDep, _: CallerDep) -> JobOut:
    """Stop the job from starting builds (idempotent; the spec is unchanged)."""
    return JobOut.of(await set_job_disabled(runtime.store, runtime.clock, name, True))


@router.post("/{name:path}/enable")
async def enable_job(name: str, runtime: RuntimeDep, _: CallerDep) -> JobOut:
    """Let the job start builds again (idempotent)."""
    return JobOut.of(await set_job_disabled(runtime.store, runtime.clock, name, False))


@router.get("/{name:path}")
async def get_job(name: str, runtime: RuntimeDep, _: CallerDep, response: Response) -> JobOut:
    job = await runtime.store.get_job(name)
    response.headers["ETag"] = _etag(job.version)
    return JobOut.of(job)


@router.delete("/{name:path}", status_code=204)
async def delete_job(
    name: str, runtime: RuntimeDep, caller: CallerDep, force: bool = False
) -> Response:
    await guard_managed_edit(
        runtime.store, name, caller.name, caller.can(Permission.CONFIG_MANAGE), force, "delete"
    )
    for key in await runtime.store.delete_job(name):
        await runtime.blobs.delete(key)
    return Response(status_code=204)
