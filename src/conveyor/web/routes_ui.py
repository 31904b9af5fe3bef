"""The web UI's pages under /ui. Thin, like the API routes: read through the store and
services, hand typed rows to a template. Authentication is the API's (``CallerDep``);
a page that gets Unauthorized redirects to the login page instead of answering JSON.

Live parts of a page (``<div data-refresh=...>``) are re-rendered by the same route
with ``?fragment=live`` and swapped in by app.js when /ui/events (SSE) announces a
change, or every few seconds for parts it does not cover; the build page follows
its log through the API's SSE stream.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from conveyor import __version__
from conveyor.api import routes_builds, routes_cluster
from conveyor.api.deps import Caller, CallerDep, RuntimeDep
from conveyor.core.permissions import Permission
from conveyor.core.pipeline import parse_pipeline
from conveyor.core.states import ACTIVE_STATES, BuildState
from conveyor.errors import (
    ConveyorError,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from conveyor.runtime import Runtime
from conveyor.store import dashboard
from conveyor.store.failures import get_failure_analysis
from conveyor.store.migrate import current_revision, head_revision
from conveyor.store.records import AgentRecord, BuildRecord, StepRecord
from conveyor.web import charts, logwindow
from conveyor.web.logwindow import log_window
from conveyor.web.permissions import can

HERE = Path(__file__).parent
STATIC_FILES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
HISTORY_PAGE = 25
#: Lines shown above a linked line.
LINE_CONTEXT = 50
TREND_CACHE_SECONDS = 15.0
#: How often /ui/events looks for changes, and sends a keep-alive when there are none.
EVENTS_INTERVAL = 2.0
EVENTS_KEEPALIVE = 15.0
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

log = structlog.get_logger(__name__)
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["can"] = can
templates.env.filters["duration"] = charts.human_duration
templates.env.globals["figure"] = charts.figure


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["when"] = _when


class PageRoute(APIRoute):
    """Pages answer HTML: Unauthorized → 303 to /login?next=…, other Conveyor errors →
    an error page with their status (the API's handlers would answer JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthorized:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='/')}", 303)
            except ConveyorError as exc:
                return _secured(
                    templates.TemplateResponse(
                        request,
                        "error.html",
                        {"title": exc.title, "message": str(exc), "caller": None, "nav": ""},
                        status_code=exc.status,
                    )
                )

        return page_handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


def render(
    request: Request,
    name: str,
    caller: Caller,
    nav: str,
    context: dict[str, Any],
    fragment: str | None = None,
) -> Response:
    """The page, or only its live part when app.js asks for ``?fragment=live``."""
    base = {
        "caller": caller,
        "nav": nav,
        "csrf_token": request.cookies.get("conveyor_csrf", ""),
        "has_session": "conveyor_session" in request.cookies,
        "version": __version__,
        **context,
    }
    template = name.replace(".html", "_live.html") if fragment == "live" else name
    return _secured(templates.TemplateResponse(request, template, base))


def _secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", 303)


@router.get("/ui/static/{name}")
async def static(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        HERE / "static" / name,
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "max-age=300"},
    )


@router.get("/ui/events")
async def ui_events(request: Request, runtime: RuntimeDep, _: CallerDep) -> StreamingResponse:
    """Server-Sent Events for the live parts of list pages: ``ready`` once, then
    ``change`` whenever builds, the queue or the agents change (checked every
    EVENTS_INTERVAL seconds with one cheap read); pages then re-render their live
    parts. One stream per open page, instead of each part polling on its own."""

    async def stream() -> AsyncIterator[str]:
        yield "retry: 5000\nevent: ready\ndata: {}\n\n"
        last: tuple[Any, ...] | None = None
        quiet = 0.0
        while not await request.is_disconnected():
            marks: tuple[Any, ...] | None
            try:
                marks = await dashboard.change_marks(runtime.store)
            except StoreUnavailable:  # the database is away: say nothing, try again
                marks = last
            if last is not None and marks != last:
                yield "event: change\ndata: {}\n\n"
                quiet = 0.0
            last = marks
            await asyncio.sleep(EVENTS_INTERVAL)
            quiet += EVENTS_INTERVAL
            if quiet >= EVENTS_KEEPALIVE:
                yield ": keepalive\n\n"
                quiet = 0.0

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- dashboard ---------------------------------------------------------------------------


@dataclass
class _Cached:
    value: dict[str, Any]
    expires: float
    refresh: asyncio.Task[None] | None = None


_trend_cache: dict[int, _Cached] = {}


async def _compute_trends(runtime: Runtime) -> dict[str, Any]:
    trends = await dashboard.build_trends(runtime.store, runtime.clock())
    hours, days = trends.hours, trends.days
    return {
        "success_24h": charts.success_chart(hours, True, "Success rate, last 24 hours"),
        "duration_24h": charts.duration_chart(hours, True, "Mean duration, last 24 hours"),
        "success_7d": charts.success_chart(days, False, "Success rate, last 7 days"),
        "duration_7d": charts.duration_chart(days, False, "Mean duration, last 7 days"),
    }


async def _trends(runtime: Runtime) -> dict[str, Any]:
    """The four charts. They aggregate a week of history (a scan that grows with it),
    so they are computed at most every TREND_CACHE_SECONDS per runtime and, once the
    first is there, off the request path: a page gets the last charts while a
    background task refreshes them (stale-while-revalidate)."""
    entry = _trend_cache.get(id(runtime))
    if entry is None:
        entry = _Cached(await _compute_trends(runtime), time.monotonic() + TREND_CACHE_SECONDS)
        _trend_cache[id(runtime)] = entry
    elif entry.expires <= time.monotonic() and entry.refresh is None:
        entry.refresh = asyncio.create_task(_refresh_trends(runtime, entry))
    return entry.value


async def _refresh_trends(runtime: Runtime, entry: _Cached) -> None:
    try:
        entry.value = await _compute_trends(runtime)
    except Exception:  # keep showing the last charts; the next page view retries
        log.warning("ui.trends_refresh_failed", exc_info=True)
    finally:
        entry.expires = time.monotonic() + TREND_CACHE_SECONDS
        entry.refresh = None


async def _running(runtime: Runtime, caller: Caller) -> list[dict[str, Any]]:
    active = [
        b
        for b in await runtime.store.list_builds(None, list(ACTIVE_STATES), None, 200)
        if caller.can(Permission.JOB_READ, b.job_name)  # prefix grants see their jobs only
    ]
    stages = await dashboard.running_stages(runtime.store, [b.id for b in active])
    now = runtime.clock()
    return [
        {
            "build": b,
            "stage": stages.get(b.id, "starting" if b.state == BuildState.ASSIGNED else "–"),
            "elapsed": (now - (b.started_at or b.assigned_at or b.queued_at)).total_seconds(),
        }
        for b in active
    ]


async def _agents_for(runtime: Runtime, caller: Caller) -> list[AgentRecord]:
    """The fleet, for callers who may see it (a global agent.read grant)."""
    if not caller.can(Permission.AGENT_READ):
        return []
    return await runtime.store.list_agents()


def _agent_state(agent: AgentRecord) -> str:
    return "offline" if not agent.online else ("draining" if agent.draining else "online")


async def _cluster(runtime: Runtime, caller: Caller) -> dict[str, Any]:
    info = await routes_cluster.cluster(runtime, caller)
    started = time.perf_counter()
    try:
        await runtime.store.ping()
        db_ok, db_error = True, None
    except ConveyorError as exc:
        db_ok, db_error = False, str(exc)
    ping_ms = (time.perf_counter() - started) * 1000
    return {"info": info, "db_ok": db_ok, "db_error": db_error, "ping_ms": ping_ms}


@router.get("/ui/")
async def dashboard_page(
    request: Request, runtime: RuntimeDep, caller: CallerDep, fragment: str | None = None
) -> Response:
    # Independent reads, run together (each on its own pooled connection).
    queue, running, agents, cluster, trends = await asyncio.gather(
        routes_builds.queue(runtime, caller),
        _running(runtime, caller),
        _agents_for(runtime, caller),
        _cluster(runtime, caller),
        _trends(runtime),
    )
    context = {
        "running": running,
        "queue": queue,
        "agents": agents,
        "agent_state": _agent_state,
        "cluster": cluster,
        "trends": trends,
    }
    return render(request, "dashboard.html", caller, "dashboard", context, fragment)


# ---- jobs --------------------------------------------------------------------------------


@router.get("/ui/jobs")
async def jobs_page(
    request: Request, runtime: RuntimeDep, caller: CallerDep, fragment: str | None = None
) -> Response:
    # Only the jobs the caller may read (prefix grants such as team-a/*).
    jobs = [j for j in await runtime.store.list_jobs() if caller.can(Permission.JOB_READ, j.name)]
    recent = await dashboard.recent_builds_per_job(runtime.store, [j.name for j in jobs])
    folders: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        folder, _, short = job.name.rpartition("/")
        builds = recent.get(job.name, [])
        last = next((b for b in builds if b.state.finished), None)
        active = next((b for b in builds if not b.state.finished), None)
        folders.setdefault(folder, []).append(
            {
                "job": job,
                "short": short,
                "last": last,
                "active": active,
                "spark": charts.sparkline(builds),
            }
        )
    context = {"folders": sorted(folders.items())}
    return render(request, "jobs.html", caller, "jobs", context, fragment)


def _diff(old: str, new: str, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """Unified diff lines with a CSS class each (add, del, hunk, meta)."""
    lines = []
    for line in difflib.unified_diff(
        old.splitlines(), new.splitlines(), old_name, new_name, lineterm=""
    ):
        if line.startswith(("+++", "---")):
            cls = "meta"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = "ctx"
        lines.append((cls, line))
    return lines


@router.get("/ui/jobs/{name:path}")
async def job_page(
    name: str,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    cursor: Annotated[int | None, Query(ge=1)] = None,
    version: Annotated[int | None, Query(ge=1)] = None,
    diff_from: Annotated[int | None, Query(ge=1)] = None,
    diff_to: Annotated[int | None, Query(ge=1)] = None,
    fragment: str | None = None,
) -> Response:
    job = await runtime.store.get_job(name)
    pipeline = parse_pipeline(job.spec, f"{job.name}.yml")
    history, versions = await asyncio.gather(
        runtime.store.list_builds(job.name, (), cursor, HISTORY_PAGE),
        runtime.store.job_versions(job.name),
    )
    next_cursor = history[-1].id if len(history) == HISTORY_PAGE else None
    by_number = {v.version: v for v in versions}
    shown = by_number.get(version or job.version)
    if shown is None:
        raise NotFound(f"job {job.name!r} has no version {version}")
    diff = None
    if diff_from is not None or diff_to is not None:
        old = by_number.get(diff_from or max(1, job.version - 1))
        new = by_number.get(diff_to or job.version)
        if old is None or new is None:
            raise InvalidInput(f"job {job.name!r} has versions 1 to {job.version}")
        diff = {
            "old": old.version,
            "new": new.version,
            "lines": _diff(old.spec, new.spec, f"version {old.version}", f"version {new.version}"),
        }
    context = {
        "job": job,
        "pipeline": pipeline,
        "history": history,
        "cursor": cursor,
        "next_cursor": next_cursor,
        "versions": versions,
        "shown": shown,
        "diff": diff,
    }
    return render(request, "job.html", caller, "jobs", context, fragment)


# ---- builds ------------------------------------------------------------------------------


def _timeline(build: BuildRecord, steps: list[StepRecord], now: datetime) -> list[dict[str, Any]]:
    """Stages in plan order, each with its steps and where they sit on the build's
    time axis (fractions 0..1 of the build's span, for the SVG bars)."""
    origin = build.started_at or build.queued_at
    finish = build.finished_at or now
    span = max((finish - origin).total_seconds(), 0.001)
    stages: dict[str, dict[str, Any]] = {}
    for step in steps:
        stage = stages.setdefault(step.stage, {"name": step.stage, "steps": []})
        duration = None
        left = width = 0.0
        if step.started_at is not None:
            end = step.finished_at or (now if not step.state.finished else step.started_at)
            duration = (end - step.started_at).total_seconds()
            left = max(0.0, (step.started_at - origin).total_seconds() / span)
            width = min(1.0 - left, max(duration / span, 0.004))
        stage["steps"].append({"step": step, "duration": duration, "left": left, "width": width})
    return list(stages.values())


async def _build_context(runtime: Runtime, build: BuildRecord) -> dict[str, Any]:
    steps = await runtime.store.build_steps(build.id)
    artifacts = await runtime.store.list_artifacts(build.id)
    agent = None
    if build.agent_id is not None:
        try:
            agent = await runtime.store.get_agent(build.agent_id)
        except NotFound:
            agent = None
    failure = await get_failure_analysis(runtime.store, build.id)
    duration = None
    if build.started_at is not None:
        duration = ((build.finished_at or runtime.clock()) - build.started_at).total_seconds()
    return {
        "build": build,
        "timeline": _timeline(build, steps, runtime.clock()),
        "artifacts": artifacts,
        "agent": agent,
        "failure": failure,
        "duration": duration,
    }


@router.get("/ui/builds/{build_id}")
async def build_page(
    build_id: int,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    fragment: str | None = None,
) -> Response:
    build = await runtime.store.get_build(build_id)
    context = await _build_context(runtime, build)
    return render(request, "build.html", caller, "jobs", context, fragment)


@router.get("/ui/builds/{build_id}/log-window")
async def build_log_window(
    build_id: int,
    runtime: RuntimeDep,
    _: CallerDep,
    end: Annotated[int | None, Query(ge=0)] = None,
    end_line: Annotated[int | None, Query(ge=1)] = None,
    start: Annotated[int | None, Query(ge=0)] = None,
    start_line: Annotated[int | None, Query(ge=1)] = None,
    line: Annotated[int | None, Query(ge=1)] = None,
) -> JSONResponse:
    """JSON for the log viewer: {start, end, first_line, text, size, state}. The tail
    by default; ``end`` (+ ``end_line``): the part before; ``start`` + ``start_line``:
    the part after; ``line``: the part around that line (the tail if there is none)."""
    build = await runtime.store.get_build(build_id)
    size = logwindow.WINDOW
    found = None
    if line is not None:
        found = await logwindow.line_offset(runtime, build, max(1, line - LINE_CONTEXT))
    if found is not None:
        window = await logwindow.log_window_after(runtime, build, found[0], found[1], size)
    elif start is not None:
        if start_line is None:
            raise InvalidInput("start needs start_line, the number of the line at start")
        window = await logwindow.log_window_after(runtime, build, start, start_line, size)
    else:
        window = await log_window(runtime, build, end, end_line, size)
    return JSONResponse(window.__dict__, headers={"Cache-Control": "no-store"})


# ---- agents and cluster ------------------------------------------------------------------


@router.get("/ui/agents")
async def agents_page(
    request: Request, runtime: RuntimeDep, caller: CallerDep, fragment: str | None = None
) -> Response:
    agents = await runtime.store.list_agents()
    active = await runtime.store.list_builds(None, list(ACTIVE_STATES), None, 500)
    current: dict[int, list[BuildRecord]] = {}
    for b in active:
        if b.agent_id is not None:
            current.setdefault(b.agent_id, []).append(b)
    context = {
        "agents": agents,
        "agent_state": _agent_state,
        "current": current,
        "figures": await runtime.store.agent_system_figures(),
    }
    return render(request, "agents.html", caller, "agents", context, fragment)


@router.get("/ui/cluster")
async def cluster_page(
    request: Request, runtime: RuntimeDep, caller: CallerDep, fragment: str | None = None
) -> Response:
    context = await _cluster(runtime, caller)
    # The read engine: on SQLite the write engine is one connection that writers queue for.
    context["schema_current"] = await current_revision(runtime.store.read_engine)
    context["schema_head"] = head_revision()
    context["is_leader"] = runtime.lease.is_leader
    return render(request, "cluster.html", caller, "cluster", context, fragment)
