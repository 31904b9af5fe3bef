"""A Jenkins-compatible subset of the remote access API, served beside /api/v1, so
Jenkins client libraries, job tools and curl scripts keep working
(docs/migrating-from-jenkins.md).

Jobs are Conveyor jobs (``team-a/app`` is ``/job/team-a/job/app/``), a queue item is
a build before it starts (its id is the build id), a computer is an agent. Callers
authenticate with HTTP Basic ``user:apitoken`` (conveyor.security.auth); the gate
admits any signed-in user to these routes and each handler checks the permission on
the job it touches, since the job is only known after the path is taken apart."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from conveyor.api.logs import read_log
from conveyor.api.routes_builds import delete_build_audited
from conveyor.api.routes_jobs import job_fields
from conveyor.controller.job_admin import set_job_disabled
from conveyor.controller.job_edits import guard_managed_edit
from conveyor.core.jenkins_compat import (
    JENKINS_VERSION,
    TreeError,
    apply_tree,
    colour_of,
    parse_tree,
    result_of,
)
from conveyor.core.jenkins_config import (
    NotFreestyle,
    UnsupportedConfig,
    config_disabled,
    config_to_pipeline,
    dump_pipeline,
    is_scm_flow,
    pipeline_to_config,
)
from conveyor.core.permissions import Permission
from conveyor.core.pipeline import Pipeline, parse_pipeline
from conveyor.core.states import BuildState
from conveyor.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from conveyor.runtime import Runtime
from conveyor.security.auth import Principal, current_principal
from conveyor.store.records import BuildRecord, JobRecord

router = APIRouter(tags=["jenkins"])

CRUMB_FIELD = "Jenkins-Crumb"
FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
MAX_CONSOLE = 64 * 1024 * 1024
_BUILDS_LISTED = 100
INT64_MAX = 2**63 - 1  # ids beyond it name nothing (and would overflow the database)
# Query keys of /buildWithParameters that are Jenkins options, not build parameters.
_NOT_PARAMETERS = frozenset({"token", "delay", "cause", "json", "Submit", CRUMB_FIELD})


def _runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


def _principal(request: Request) -> Principal:
    principal = current_principal(request)
    if principal is None:
        raise Unauthorized("send 'Authorization: Basic user:apitoken'")
    return principal


def crumb_for(principal: Principal) -> str:
    """Stable per user and token: the crumb only proves the caller asked for it."""
    return hashlib.sha256(f"crumb:{principal.name}:{principal.token_id}".encode()).hexdigest()


def _check_crumb(request: Request, principal: Principal) -> None:
    # API-token callers need no crumb (as in Jenkins); a crumb that is sent must be right.
    sent = request.headers.get(CRUMB_FIELD)
    if sent is not None and sent != crumb_for(principal):
        raise Forbidden("No valid crumb was included in the request")


def _json(request: Request, data: Any, status: int = 200) -> Response:
    tree = request.query_params.get("tree")
    if tree:
        try:
            data = apply_tree(data, parse_tree(tree))
        except TreeError as exc:
            raise InvalidInput(str(exc)) from None
    return Response(
        json.dumps(data, ensure_ascii=False),
        status_code=status,
        media_type="application/json;charset=utf-8",
        headers={"X-Jenkins": JENKINS_VERSION},
    )


def _depth(request: Request) -> int:
    try:
        return max(0, min(int(request.query_params.get("depth", "0")), 3))
    except ValueError:
        raise InvalidInput("depth: expected a whole number") from None


def _ms(moment: Any) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


# ------------------------------------------------------------------------- URLs


def job_url(base: str, name: str) -> str:
    return base + "".join(f"job/{quote(seg, safe='')}/" for seg in name.split("/"))


def _base(request: Request) -> str:
    return str(request.base_url)


# ------------------------------------------------------------------------- shapes


async def _agent_names(runtime: Runtime) -> dict[int, str]:
    return {a.id: a.name for a in await runtime.store.list_agents()}


FREESTYLE_JOB = "hudson.model.FreeStyleProject"
PIPELINE_JOB = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
#: A build's class by its job's, as Jenkins reports them (clients dispatch on these).
RUN_CLASS = {
    FREESTYLE_JOB: "hudson.model.FreeStyleBuild",
    PIPELINE_JOB: "org.jenkinsci.plugins.workflow.job.WorkflowRun",
}


def build_json(
    base: str,
    build: BuildRecord,
    agents: dict[int, str],
    artifacts: list[str],
    job_class: str = FREESTYLE_JOB,
) -> dict[str, Any]:
    end = build.finished_at or None
    duration = 0
    if build.started_at is not None and end is not None:
        duration = int((end - build.started_at).total_seconds() * 1000)
    return {
        "_class": RUN_CLASS[job_class],
        "number": build.number,
        "id": str(build.number),
        "url": f"{job_url(base, build.job_name)}{build.number}/",
        "displayName": f"#{build.number}",
        "fullDisplayName": f"{build.job_name.replace('/', ' » ')} #{build.number}",
        "building": not build.state.finished,
        "result": result_of(build.state),
        "duration": duration,
        "estimatedDuration": -1,
        "timestamp": _ms(build.started_at or build.queued_at),
        "queueId": build.id,
        "builtOn": agents.get(build.agent_id or -1, ""),
        "description": build.cause,
        "keepLog": build.pinned,
        "actions": [
            {
                "_class": "hudson.model.ParametersAction",
                "parameters": [
                    {"_class": "hudson.model.StringParameterValue", "name": k, "value": v}
                    for k, v in build.parameters.items()
                ],
            },
            {
                "_class": "hudson.model.CauseAction",
                "causes": [{"shortDescription": f"Started by {build.trigger}"}],
            },
        ],
        "artifacts": [
            {
                "displayPath": p.rsplit("/", 1)[-1],
                "fileName": p.rsplit("/", 1)[-1],
                "relativePath": p,
            }
            for p in artifacts
        ],
    }


def _file(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _ref(
    base: str, build: BuildRecord | None, job_class: str = FREESTYLE_JOB
) -> dict[str, Any] | None:
    if build is None:
        return None
    return {
        "_class": RUN_CLASS[job_class],
        "number": build.number,
        "url": f"{job_url(base, build.job_name)}{build.number}/",
    }


def _parameter_definitions(pipeline: Pipeline | None) -> list[dict[str, Any]]:
    kinds = {
        "string": "hudson.model.StringParameterDefinition",
        "choice": "hudson.model.ChoiceParameterDefinition",
        "boolean": "hudson.model.BooleanParameterDefinition",
    }
    out = []
    for p in pipeline.parameters if pipeline is not None else []:
        default = p.default if p.default is not None else (p.choices or [""])[0]
        entry: dict[str, Any] = {
            "_class": kinds[p.type],
            "name": p.name,
            "type": kinds[p.type].rsplit(".", 1)[-1],
            "description": p.description or "",
            "defaultParameterValue": {"name": p.name, "value": default},
        }
        if p.choices is not None:
            entry["choices"] = list(p.choices)
        out.append(entry)
    return out


def _job_class(job: JobRecord) -> str:
    # A job reading its pipeline from the repository is a Jenkins pipeline job.
    if is_scm_flow(job.spec):
        return PIPELINE_JOB
    return FREESTYLE_JOB


async def job_json(runtime: Runtime, base: str, job: JobRecord, depth: int = 1) -> dict[str, Any]:
    short = job.name.rsplit("/", 1)[-1]
    recent = await runtime.store.list_builds(job.name, (), None, _BUILDS_LISTED)
    building = any(not b.state.finished for b in recent)
    finished = [b for b in recent if b.state.finished]
    colour = colour_of(finished[0].state if finished else None, building)
    if job.disabled:
        colour = "disabled"
    summary: dict[str, Any] = {
        "_class": _job_class(job),
        "name": short,
        "url": job_url(base, job.name),
        "color": colour,
    }
    if depth < 1:
        return summary

    async def last(states: tuple[BuildState, ...]) -> BuildRecord | None:
        found = await runtime.store.list_builds(job.name, states, None, 1)
        return found[0] if found else None

    try:
        pipeline: Pipeline | None = parse_pipeline(job.spec)
    except ValueError:
        pipeline = None  # a job reading its pipeline from the repository
    queued = [b for b in recent if b.state is BuildState.QUEUED]
    failed = (BuildState.FAILED, BuildState.TIMED_OUT, BuildState.LOST)
    cls = _job_class(job)
    return {
        **summary,
        "fullName": job.name,
        "displayName": short,
        "fullDisplayName": job.name.replace("/", " » "),
        "description": job.description or "",
        "buildable": not job.disabled,
        "disabled": job.disabled,
        "builds": [_ref(base, b, cls) for b in recent],
        "firstBuild": _ref(base, recent[-1] if recent else None, cls),
        "lastBuild": _ref(base, recent[0] if recent else None, cls),
        "lastCompletedBuild": _ref(base, finished[0] if finished else None, cls),
        "lastSuccessfulBuild": _ref(base, await last((BuildState.SUCCEEDED,)), cls),
        "lastFailedBuild": _ref(base, await last(failed), cls),
        "lastUnsuccessfulBuild": _ref(base, await last((*failed, BuildState.CANCELLED)), cls),
        "nextBuildNumber": (recent[0].number + 1) if recent else 1,
        "inQueue": bool(queued),
        "queueItem": None if not queued else {"id": queued[-1].id},
        "concurrentBuild": job.concurrency != 1,
        "property": [
            {
                "_class": "hudson.model.ParametersDefinitionProperty",
                "parameterDefinitions": _parameter_definitions(pipeline),
            }
        ],
    }


def queue_item_json(base: str, build: BuildRecord, why: str | None = None) -> dict[str, Any]:
    started = build.assigned_at is not None or build.started_at is not None
    waiting = build.state is BuildState.QUEUED
    cancelled = build.state is BuildState.CANCELLED and not started
    return {
        "_class": "hudson.model.Queue$BuildableItem" if waiting else "hudson.model.Queue$LeftItem",
        "id": build.id,
        "url": f"queue/item/{build.id}/",
        "task": {
            "_class": "hudson.model.FreeStyleProject",
            "name": build.job_name.rsplit("/", 1)[-1],
            "url": job_url(base, build.job_name),
        },
        "inQueueSince": _ms(build.queued_at),
        "params": "".join(f"\n{k}={v}" for k, v in build.parameters.items()),
        "why": (why or "Waiting for next available executor") if waiting else None,
        "blocked": False,
        "buildable": waiting,
        "stuck": False,
        "cancelled": cancelled,
        "executable": _ref(base, build) if started else None,
        "actions": [
            {
                "_class": "hudson.model.ParametersAction",
                "parameters": [{"name": k, "value": v} for k, v in build.parameters.items()],
            }
        ],
    }


# ------------------------------------------------------------------------- top level


@router.get("/api/json")
async def root(request: Request) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    depth = _depth(request)
    base = _base(request)
    readable = [
        j for j in await runtime.store.list_jobs() if principal.can(Permission.JOB_READ, j.name)
    ]
    items = await _children(runtime, base, "", readable)
    if depth >= 1:  # depth=1: the top-level jobs in full
        by_name = {j.name: j for j in readable}
        items = [
            await job_json(runtime, base, by_name[i["name"]], depth) if i["name"] in by_name else i
            for i in items
        ]
    return _json(
        request,
        {
            "_class": "hudson.model.Hudson",
            "mode": "NORMAL",
            "nodeName": "",
            "nodeDescription": "Conveyor controller",
            "numExecutors": 0,
            "description": "Conveyor (Jenkins-compatible API subset)",
            "quietingDown": False,
            "useCrumbs": True,
            "useSecurity": True,
            "url": base,
            "jobs": items,
            "primaryView": {"_class": "hudson.model.AllView", "name": "all", "url": base},
            "views": [{"_class": "hudson.model.AllView", "name": "all", "url": base}],
        },
    )


async def _children(
    runtime: Runtime, base: str, prefix: str, jobs: list[JobRecord]
) -> list[dict[str, Any]]:
    """The items directly in a folder (``prefix`` ends with '/', or is '' for the top):
    jobs as summaries, sub-folders with their own items, so that a ``tree=`` asking
    for ``jobs[name,jobs[name]]`` is answered in one request, as Jenkins does."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for job in sorted(jobs, key=lambda j: j.name):
        if not job.name.startswith(prefix):
            continue
        child, _, rest = job.name[len(prefix) :].partition("/")
        if child in seen:
            continue
        seen.add(child)
        if rest:
            items.append(await _folder_json(runtime, base, prefix + child, jobs))
        else:
            items.append(await job_json(runtime, base, job, depth=0))
    return items


async def _folder_json(
    runtime: Runtime, base: str, folder: str, jobs: list[JobRecord]
) -> dict[str, Any]:
    name = folder.rsplit("/", 1)[-1]
    return {
        "_class": FOLDER_CLASS,
        "name": name,
        "fullName": folder,
        "displayName": name,
        "url": job_url(base, folder),
        "jobs": await _children(runtime, base, folder + "/", jobs),
    }


@router.get("/crumbIssuer/api/json")
async def crumb_issuer(request: Request) -> Response:
    principal = _principal(request)
    return _json(
        request,
        {
            "_class": "hudson.security.csrf.DefaultCrumbIssuer",
            "crumb": crumb_for(principal),
            "crumbRequestField": CRUMB_FIELD,
        },
    )


@router.get("/whoAmI/api/json")
@router.get("/me/api/json")
async def who_am_i(request: Request) -> Response:
    principal = _principal(request)
    return _json(
        request,
        {
            "_class": "hudson.security.WhoAmI",
            "anonymous": False,
            "authenticated": True,
            "authorities": ["authenticated"],
            "name": principal.name,
            "id": principal.name,
            "fullName": principal.name,
        },
    )


@router.get("/queue/api/json")
async def queue(request: Request) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    base = _base(request)
    waiting = await runtime.store.list_builds(None, (BuildState.QUEUED,), None, 500)
    items = [
        queue_item_json(base, b)
        for b in reversed(waiting)
        if principal.can(Permission.JOB_READ, b.job_name)
    ]
    return _json(request, {"_class": "hudson.model.Queue", "discoverableItems": [], "items": items})


@router.get("/queue/item/{item}/api/json")
async def queue_item(item: int, request: Request) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    build = await _queued_build(runtime, item)
    principal.require(Permission.JOB_READ, build.job_name)
    return _json(request, queue_item_json(_base(request), build))


@router.post("/queue/cancelItem")
async def cancel_queue_item(request: Request, id: int) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    _check_crumb(request, principal)
    build = await _queued_build(runtime, id)
    principal.require(Permission.BUILD_CANCEL, build.job_name)
    if build.state is BuildState.QUEUED:
        build = await runtime.builds.cancel(build.id, principal.name)
    return _json(request, queue_item_json(_base(request), build))


async def _queued_build(runtime: Runtime, item: int) -> BuildRecord:
    if not 0 < item <= INT64_MAX:
        raise NotFound(f"queue item {item} does not exist")
    return await runtime.store.get_build(item)


@router.get("/computer/api/json")
async def computers(request: Request) -> Response:
    runtime = _runtime(request)
    agents = await runtime.store.list_agents()
    computer = [
        {
            "_class": "hudson.slaves.SlaveComputer",
            "displayName": a.name,
            "description": f"Conveyor agent {a.id}" + (f" (pool {a.pool})" if a.pool else ""),
            "assignedLabels": [{"name": label} for label in [a.name, *a.labels]],
            "idle": a.busy == 0,
            "numExecutors": a.executors,
            "offline": not a.online,
            "offlineCause": None,
            "offlineCauseReason": "" if a.online else "agent stopped heartbeating",
            "temporarilyOffline": a.draining,
            "icon": "symbol-computer" if a.online else "symbol-computer-offline",
            "jnlpAgent": True,
            "launchSupported": False,
            "manualLaunchAllowed": False,
        }
        for a in agents
    ]
    online = [a for a in agents if a.online]
    return _json(
        request,
        {
            "_class": "hudson.model.ComputerSet",
            "displayName": "Nodes",
            "busyExecutors": sum(a.busy for a in online),
            "totalExecutors": sum(a.executors for a in online),
            "computer": computer,
        },
    )


# ------------------------------------------------------------------------- /job/...


@dataclass(frozen=True)
class JobPath:
    """``/job/A/job/B/12/consoleText`` → job ``A/B``, rest ``["12", "consoleText"]``."""

    job: str
    rest: list[str]


def split_job_path(path: str) -> JobPath:
    parts = [p for p in path.split("/") if p]
    names = [parts[0]] if parts else []
    i = 1
    while i + 1 < len(parts) and parts[i] == "job":
        names.append(parts[i + 1])
        i += 2
    if not names:
        raise NotFound("no job in the path")
    return JobPath("/".join(names), parts[i:])


async def _build_of(runtime: Runtime, job: str, ref: str) -> BuildRecord:
    permalinks = {
        "lastBuild": (),
        "lastSuccessfulBuild": (BuildState.SUCCEEDED,),
        "lastFailedBuild": (BuildState.FAILED, BuildState.TIMED_OUT, BuildState.LOST),
        "lastCompletedBuild": (
            BuildState.SUCCEEDED,
            BuildState.FAILED,
            BuildState.TIMED_OUT,
            BuildState.LOST,
            BuildState.CANCELLED,
        ),
    }
    if ref in permalinks:
        found = await runtime.store.list_builds(job, permalinks[ref], None, 1)
        if not found:
            raise NotFound(f"job {job!r} has no {ref}")
        return found[0]
    if not (ref.isascii() and ref.isdigit()) or int(ref) > INT64_MAX:
        raise NotFound(f"no such page: {ref}")
    return await runtime.store.get_build_by_number(job, int(ref))


@router.get("/job/{path:path}")
async def job_get(path: str, request: Request) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    target = split_job_path(path)
    principal.require(Permission.JOB_READ, target.job)
    base = _base(request)
    rest = target.rest
    if rest == ["config.xml"]:
        job = await runtime.store.get_job(target.job)
        try:
            xml = pipeline_to_config(job.spec, disabled=job.disabled)
        except NotFreestyle as exc:
            raise Conflict(f"job {target.job!r} has no freestyle config.xml: {exc}") from None
        return Response(xml, media_type="application/xml", headers={"X-Jenkins": JENKINS_VERSION})
    if rest in ([], ["api", "json"], ["api", "python"]):
        try:
            job = await runtime.store.get_job(target.job)
        except NotFound:
            jobs = await runtime.store.list_jobs(target.job + "/")
            readable = [j for j in jobs if principal.can(Permission.JOB_READ, j.name)]
            if not readable:
                raise
            return _json(request, await _folder_json(runtime, base, target.job, readable))
        return _json(request, await job_json(runtime, base, job, depth=max(1, _depth(request))))
    build = await _build_of(runtime, target.job, rest[0])
    page = rest[1:]
    if page in ([], ["api", "json"]):
        artifacts = [a.path for a in await runtime.store.list_artifacts(build.id)]
        agents = await _agent_names(runtime)
        job_class = _job_class(await runtime.store.get_job(target.job))
        return _json(request, build_json(base, build, agents, artifacts, job_class))
    if page == ["consoleText"]:
        data = await read_log(runtime, build, 0, MAX_CONSOLE)
        return Response(
            data, media_type="text/plain;charset=utf-8", headers={"X-Jenkins": JENKINS_VERSION}
        )
    if page == ["logText", "progressiveText"]:
        return await _progressive(request, runtime, build)
    if len(page) >= 2 and page[0] == "artifact":
        artifact = await runtime.store.get_artifact(build.id, "/".join(page[1:]))
        return StreamingResponse(
            runtime.blobs.stream(artifact.blob_key),
            media_type=artifact.content_type,
            headers={"Content-Length": str(artifact.size), "X-Jenkins": JENKINS_VERSION},
        )
    raise NotFound(f"no such page: /job/{path}")


async def _progressive(request: Request, runtime: Runtime, build: BuildRecord) -> Response:
    try:
        start = min(max(0, int(request.query_params.get("start", "0"))), 2**62)
    except ValueError:
        raise InvalidInput("start: expected a byte offset") from None
    data = await read_log(runtime, build, start, MAX_CONSOLE)
    size = start + len(data)
    headers = {"X-Text-Size": str(size), "X-Jenkins": JENKINS_VERSION}
    if not build.state.finished or size < build.log_size:
        headers["X-More-Data"] = "true"  # Jenkins sends the header only while there is more
    return Response(data, media_type="text/plain;charset=utf-8", headers=headers)


async def _build_parameters(request: Request) -> dict[str, str]:
    params = {k: v for k, v in request.query_params.items() if k not in _NOT_PARAMETERS}
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        for key, value in form.items():
            if key == "json" and isinstance(value, str):
                try:
                    entries = json.loads(value).get("parameter", [])
                    entries = [entries] if isinstance(entries, dict) else entries
                    params.update({str(e["name"]): str(e["value"]) for e in entries})
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise InvalidInput('json: expected {"parameter": [{name, value}]}') from None
            elif key not in _NOT_PARAMETERS and isinstance(value, str):
                params[key] = value
    return params


@router.post("/job/{path:path}")
async def job_post(path: str, request: Request) -> Response:
    runtime, principal = _runtime(request), _principal(request)
    _check_crumb(request, principal)
    target = split_job_path(path)
    base = _base(request)
    rest = target.rest
    if rest in (["build"], ["buildWithParameters"]):
        principal.require(Permission.BUILD_TRIGGER, target.job)
        parameters = await _build_parameters(request)
        if rest == ["build"] and not parameters:
            parameters = {}
        build = await runtime.builds.trigger(
            target.job, parameters, f"jenkins-api:{principal.name}"
        )
        location = f"{base}queue/item/{build.id}/"
        response = _json(request, queue_item_json(base, build), status=201)
        response.headers["Location"] = location
        return response
    if rest == ["config.xml"]:
        principal.require(Permission.JOB_WRITE, target.job)
        await runtime.store.get_job(target.job)  # 404 for a job that does not exist
        await save_config_xml(request, runtime, principal, target.job, create=False)
        return Response("", headers={"X-Jenkins": JENKINS_VERSION})
    if rest == ["createItem"]:
        name = f"{target.job}/{_item_name(request)}"
        principal.require(Permission.JOB_WRITE, name)
        await save_config_xml(request, runtime, principal, name, create=True)
        return Response("", headers={"X-Jenkins": JENKINS_VERSION})
    if rest in (["enable"], ["disable"]):
        principal.require(Permission.JOB_WRITE, target.job)
        await set_job_disabled(runtime.store, runtime.clock, target.job, rest == ["disable"])
        return Response("", headers={"X-Jenkins": JENKINS_VERSION})
    if len(rest) == 2 and rest[1] == "doDelete":
        principal.require(Permission.JOB_WRITE, target.job)
        build = await _build_of(runtime, target.job, rest[0])
        await delete_build_audited(request, runtime, build, False, False)  # never forced
        return Response("", headers={"X-Jenkins": JENKINS_VERSION})
    if rest == ["doDelete"]:
        principal.require(Permission.JOB_WRITE, target.job)
        await guard_managed_edit(runtime.store, target.job, principal.name, False, False, "delete")
        for key in await runtime.store.delete_job(target.job):
            await runtime.blobs.delete(key)
        return Response("", headers={"X-Jenkins": JENKINS_VERSION})
    if len(rest) == 2 and rest[1] in ("stop", "term", "kill"):
        build = await _build_of(runtime, target.job, rest[0])
        principal.require(Permission.BUILD_CANCEL, target.job)
        if not build.state.finished:
            build = await runtime.builds.cancel(build.id, principal.name)
        agents = await _agent_names(runtime)
        return _json(request, build_json(base, build, agents, []))
    raise NotFound(f"no such action: POST /job/{path}")


@router.post("/createItem")
async def create_item(request: Request) -> Response:
    """``POST /createItem?name=NAME`` with a freestyle config.xml body."""
    runtime, principal = _runtime(request), _principal(request)
    _check_crumb(request, principal)
    name = _item_name(request)
    principal.require(Permission.JOB_WRITE, name)
    await save_config_xml(request, runtime, principal, name, create=True)
    return Response("", headers={"X-Jenkins": JENKINS_VERSION})


def _item_name(request: Request) -> str:
    name = request.query_params.get("name", "").strip()
    if not name or "/" in name:
        raise InvalidInput("createItem needs ?name=NAME (one path segment)")
    if request.query_params.get("mode"):
        raise InvalidInput("createItem: copying (mode=copy) is not supported")
    return name


async def save_config_xml(
    request: Request, runtime: Runtime, principal: Principal, name: str, create: bool
) -> None:
    """Translate the body (a freestyle config.xml) and create or replace the job;
    anything that cannot be translated is a 400 naming it, and nothing is stored."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        spec = dump_pipeline(config_to_pipeline(body, name))
        disabled = config_disabled(body)
    except UnsupportedConfig as exc:
        raise InvalidInput("config.xml: " + "; ".join(exc.problems)) from None
    _, fields = job_fields(spec)
    now = runtime.clock()
    if create:
        await runtime.store.create_job(fields, principal.name, now, disabled=disabled)
        return
    can_config = principal.can(Permission.CONFIG_MANAGE)
    await guard_managed_edit(runtime.store, name, principal.name, can_config, False, "update")
    await runtime.store.update_job(fields, None, principal.name, now)
    # <disabled> is honoured as Jenkins does (an operational state, not in the spec).
    job = await runtime.store.get_job(name)
    if job.disabled != disabled:
        await set_job_disabled(runtime.store, runtime.clock, name, disabled)
