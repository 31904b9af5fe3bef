"""The agent protocol, /agent/v1 (HTTP/JSON, bearer token, agent id in X-Agent-Id).

Agents register, heartbeat, long-poll for assignments, start a build by its
assignment id, send sequenced log chunks (re-sending is harmless), step
results, artifacts and the final result (idempotent).

Fast paths (additions; the one-request-per-thing endpoints stay): a poll that says
``"start": true`` gets its assignments already started, with what ``/start``
answers; ``POST …/events`` carries several step results (and the finish, last) in
one request and one transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field, model_validator

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.log_limit import clip_chunk
from conveyor.api.routes_builds import guess_type
from conveyor.controller.wakeups import DISPATCH, agent_channel, build_channel
from conveyor.core.labels import is_valid_label
from conveyor.core.states import ACTIVE_STATES, AGENT_RESULTS, BuildState, StepState
from conveyor.errors import InvalidInput
from conveyor.security.agents import admit_agent, bind_registered_agent
from conveyor.store.heartbeats import heartbeat_groups
from conveyor.store.pools import get_pool, set_agent_pool

router = APIRouter(prefix="/agent/v1", tags=["agent protocol"])

MAX_LOG_CHUNK = 4 * 1024 * 1024
#: Most events one ``POST …/events`` may carry.
MAX_EVENTS = 1000
#: What this controller supports beyond the base protocol (told at registration).
FEATURES = ["poll_start", "events"]
AgentIdHeader = Annotated[int, Header(alias="X-Agent-Id")]


class RegisterIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    labels: list[str] = Field(default_factory=list, max_length=200)
    executors: int = Field(ge=1, le=1024)
    version: str = Field(default="?", max_length=50)
    pool: str | None = Field(default=None, max_length=100)
    ephemeral: bool = False


class RegisterOut(BaseModel):
    agent_id: int
    heartbeat_interval: float
    poll_timeout: float
    features: list[str] = Field(default_factory=lambda: list(FEATURES))


class HeartbeatIn(BaseModel):
    running: list[str] = Field(default_factory=list)
    cpu_percent: float | None = None
    memory_percent: float | None = None
    metrics: dict[str, Any] | None = None


class PollIn(BaseModel):
    running: list[str] = Field(default_factory=list)
    cancelling: list[str] = Field(
        default_factory=list, description="running assignments already being cancelled"
    )
    wait: float = Field(default=25.0, ge=0, le=120)
    start: bool = Field(
        default=False,
        description="start the offered assignments now and answer with what /start answers",
    )


class AssignmentOut(BaseModel):
    assignment_id: str
    build_id: int
    # Set only when the poll asked to start (the build is running already):
    job: str | None = None
    number: int | None = None
    parameters: dict[str, str] | None = None
    plan: dict[str, Any] | None = None
    # The values of the credentials the plan binds, only to the agent starting it.
    credentials: dict[str, dict[str, str]] | None = None


class InboxOut(BaseModel):
    assignments: list[AssignmentOut] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list)
    abort: list[str] = Field(default_factory=list)


class StartOut(BaseModel):
    build_id: int
    job: str
    number: int
    parameters: dict[str, str]
    plan: dict[str, Any]
    credentials: dict[str, dict[str, str]] = Field(default_factory=dict)


class StepIn(BaseModel):
    key: str = Field(max_length=200)
    state: StepState
    exit_code: int | None = None
    attempt: int = Field(default=1, ge=0)


class FinishIn(BaseModel):
    result: Literal["succeeded", "failed", "cancelled", "timed_out"]
    cause: str | None = Field(default=None, max_length=2000)


class StepEventIn(StepIn):
    kind: Literal["step"]


class FinishEventIn(FinishIn):
    kind: Literal["finish"]


class EventsIn(BaseModel):
    events: list[Annotated[StepEventIn | FinishEventIn, Field(discriminator="kind")]] = Field(
        min_length=1, max_length=MAX_EVENTS
    )

    @model_validator(mode="after")
    def _finish_last(self) -> EventsIn:
        for event in self.events[:-1]:
            if isinstance(event, FinishEventIn):
                raise ValueError("a finish event must be the last one")
        return self


class AckOut(BaseModel):
    cancel: bool = False


@router.post("/register")
async def register(
    body: RegisterIn, request: Request, runtime: RuntimeDep, _: CallerDep
) -> RegisterOut:
    bad = [label for label in body.labels if not is_valid_label(label)]
    if bad:
        raise InvalidInput(f"invalid label(s): {', '.join(bad)}")
    await admit_agent(request, runtime, body.name)  # may this enrollment token register it?
    if body.pool is not None:
        await get_pool(runtime.store, body.pool)  # 404 before anything is stored
    agent = await runtime.store.register_agent(
        body.name, sorted(set(body.labels)), body.executors, body.version, runtime.clock()
    )
    await bind_registered_agent(request, runtime, agent.id)
    if body.pool is not None or body.ephemeral or agent.pool is not None:
        await set_agent_pool(runtime.store, agent.id, body.pool, body.ephemeral)
    runtime.wakeups.notify(DISPATCH)
    return RegisterOut(
        agent_id=agent.id,
        heartbeat_interval=max(1.0, runtime.settings.agent_timeout / 5),
        poll_timeout=runtime.settings.poll_timeout,
    )


async def _aborts(runtime: Any, agent_id: int, running: list[str]) -> list[str]:
    states = await runtime.store.builds_of_agent(agent_id, running)
    return [aid for aid, state in states.items() if state not in ("assigned", "running")]


async def record_heartbeat(runtime: Any, agent_id: int, body: HeartbeatIn) -> list[str]:
    """What a heartbeat does, for the route and for its fast path
    (``conveyor.api.fast_heartbeat``): records it, wakes the dispatcher if the agent
    was offline, and answers the assignments it must abort. NotFound for an unknown
    agent (it registers again)."""
    # Written in groups with the other agents' heartbeats (one transaction each).
    came_back = await heartbeat_groups(runtime).touch(
        agent_id,
        runtime.clock(),
        cpu_percent=None if body.cpu_percent is None else round(body.cpu_percent),
        memory_percent=None if body.memory_percent is None else round(body.memory_percent),
        metrics=body.metrics or {},
    )
    if came_back:
        # Offline until now (reaped): the dispatcher may use it again.
        runtime.wakeups.notify(DISPATCH)
    return await _aborts(runtime, agent_id, body.running)


@router.post("/agents/{agent_id}/heartbeat")
async def heartbeat(
    agent_id: int, body: HeartbeatIn, runtime: RuntimeDep, _: CallerDep
) -> InboxOut:
    # Normally answered by conveyor.api.fast_heartbeat before routing; this route
    # serves the requests it passes on (bad bodies) and describes the API.
    return InboxOut(abort=await record_heartbeat(runtime, agent_id, body))


@router.post("/agents/{agent_id}/poll", response_model_exclude_none=True)
async def poll(
    agent_id: int, body: PollIn, request: Request, runtime: RuntimeDep, _: CallerDep
) -> InboxOut:
    """Hold until the agent has something to do (new assignment, cancel) or ``wait`` ends.

    A poll writes nothing unless it starts builds: liveness is the heartbeat's job
    (it also marks an agent that comes back online and wakes the dispatcher). While
    it waits it costs neither CPU nor queries: it reads the store at its start and
    after each wake-up of the agent's channel, nothing else."""
    deadline = time.monotonic() + min(body.wait, runtime.settings.poll_timeout)
    running = set(body.running)
    to_cancel = running - set(body.cancelling)
    aborts = await _aborts(runtime, agent_id, body.running)
    gone: asyncio.Task[None] | None = None
    try:
        while True:
            waiter = runtime.wakeups.waiter(agent_channel(agent_id))
            inbox = await runtime.store.poll_inbox(agent_id, with_running=body.start)
            out = InboxOut(abort=aborts)
            offered: list[str] = []
            for item, state in inbox:
                aid = item.assignment_id
                if aid in running:
                    if item.cancel and aid in to_cancel:
                        out.cancel.append(aid)
                elif state == BuildState.ASSIGNED.value or (
                    # Started by an earlier poll whose answer the agent did not get.
                    body.start and state == BuildState.RUNNING.value
                ):
                    offered.append(aid)
                    out.assignments.append(AssignmentOut(assignment_id=aid, build_id=item.build_id))
            if offered and body.start:
                out.assignments = await _start_offered(runtime, agent_id, offered)
            remaining = deadline - time.monotonic()
            if out.assignments or out.cancel or out.abort or remaining <= 0:
                return out
            # Purely event-driven: nothing runs for this poll until its channel is
            # notified (here, or by another controller through LISTEN/NOTIFY), its
            # agent disconnects, or the wait ends. Only a wake-up reads the store again:
            # at the end of the wait the agent polls again at once, and that poll's
            # first read finds whatever a lost wake-up (a NOTIFY is a hint) left behind.
            if gone is None:
                gone = asyncio.ensure_future(_disconnected(request))
            if await _hold(waiter, gone, remaining) is not True:
                return out  # the wait ended, or the agent went away
    finally:
        if gone is not None:
            gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects. The body has been read, so the server's
    next message is ``http.disconnect`` (uvicorn sends it when the connection is
    lost; nothing polls)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            await asyncio.Event().wait()  # not a server we know: never say "gone"


async def _hold(waiter: asyncio.Event, gone: asyncio.Task[None], timeout: float) -> bool | None:
    """Wait for a wake-up (True), the client going away (False) or ``timeout`` (None)."""
    if gone.done():
        return False
    woken = asyncio.ensure_future(waiter.wait())
    try:
        await asyncio.wait((woken, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
    if gone.done():
        return False
    return True if waiter.is_set() else None


async def _start_offered(
    runtime: Any, agent_id: int, assignment_ids: list[str]
) -> list[AssignmentOut]:
    """Start the offered assignments in one transaction; those that could not start
    (cancelled meanwhile) are left out: the agent must not run them."""
    started = await runtime.store.start_assignments(agent_id, assignment_ids, runtime.clock())
    for build in started:
        runtime.wakeups.notify(build_channel(build.id))
    return [
        AssignmentOut(
            assignment_id=build.assignment_id,
            build_id=build.id,
            job=build.job_name,
            number=build.number,
            parameters=build.parameters,
            plan=build.plan,
            credentials=await _credentials_for(runtime, build.plan),
        )
        for build in started
    ]


async def _credentials_for(runtime: Any, plan: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Decrypted now, for this answer only: never stored with the build."""
    vault = runtime.credentials
    return {} if vault is None else await vault.resolve(plan)


@router.post("/assignments/{assignment_id}/start")
async def start(
    assignment_id: str, agent_id: AgentIdHeader, runtime: RuntimeDep, _: CallerDep
) -> StartOut:
    build = await runtime.store.start_build(assignment_id, agent_id, runtime.clock())
    runtime.wakeups.notify(build_channel(build.id))
    return StartOut(
        build_id=build.id,
        job=build.job_name,
        number=build.number,
        parameters=build.parameters,
        plan=build.plan,
        credentials=await _credentials_for(runtime, build.plan),
    )


@router.post("/assignments/{assignment_id}/log")
async def append_log(
    assignment_id: str,
    request: Request,
    agent_id: AgentIdHeader,
    runtime: RuntimeDep,
    _: CallerDep,
    seq: Annotated[int, Query(ge=0)],
    offset: Annotated[int, Query(ge=0)],
) -> AckOut:
    data = await request.body()
    if len(data) > MAX_LOG_CHUNK:
        raise InvalidInput(f"log chunk too large ({len(data)} bytes > {MAX_LOG_CHUNK})")
    # The log size limit, should the agent not enforce it (conveyor.api.log_limit).
    clipped = await clip_chunk(runtime, assignment_id, agent_id, offset, data)
    if clipped is None:
        build = await runtime.store.get_build_for_assignment(assignment_id, agent_id)
        return AckOut(cancel=bool(build.cancel_requested))
    data = clipped
    build_id, cancel = await runtime.store.append_log(assignment_id, agent_id, seq, offset, data)
    # conveyor_log_bytes_total: bytes accepted (a re-sent chunk counts again)
    runtime.metrics.log_bytes(len(data))
    runtime.wakeups.notify(build_channel(build_id))
    return AckOut(cancel=cancel)


@router.post("/assignments/{assignment_id}/steps")
async def step(
    assignment_id: str, body: StepIn, agent_id: AgentIdHeader, runtime: RuntimeDep, _: CallerDep
) -> AckOut:
    build_id = await runtime.store.update_step(
        assignment_id,
        agent_id,
        body.key,
        body.state,
        body.exit_code,
        body.attempt,
        runtime.clock(),
    )
    runtime.wakeups.notify(build_channel(build_id))
    return AckOut()


@router.put("/assignments/{assignment_id}/artifacts")
async def upload_artifact(
    assignment_id: str,
    request: Request,
    agent_id: AgentIdHeader,
    runtime: RuntimeDep,
    _: CallerDep,
    path: Annotated[str, Query(min_length=1, max_length=1000)],
) -> dict[str, Any]:
    clean = normalise_artifact_path(path)
    build = await runtime.store.get_build_for_assignment(assignment_id, agent_id)
    key = f"artifacts/{build.id}/{clean}"

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    stored = await runtime.blobs.put_stream(key, body())
    artifact = await runtime.store.record_artifact(
        assignment_id,
        agent_id,
        clean,
        stored.size,
        stored.sha256,
        guess_type(clean),
        key,
        runtime.clock(),
    )
    return {"path": artifact.path, "size": artifact.size, "sha256": artifact.sha256}


@router.post("/assignments/{assignment_id}/finish")
async def finish(
    assignment_id: str, body: FinishIn, agent_id: AgentIdHeader, runtime: RuntimeDep, _: CallerDep
) -> AckOut:
    result = BuildState(body.result)
    assert result in AGENT_RESULTS
    build, changed = await runtime.store.finish_build(
        assignment_id, agent_id, result, body.cause, runtime.clock()
    )
    if changed:
        await runtime.builds.on_finished(build)
    return AckOut()


@router.post("/assignments/{assignment_id}/events")
async def events(
    assignment_id: str, body: EventsIn, agent_id: AgentIdHeader, runtime: RuntimeDep, _: CallerDep
) -> AckOut:
    """Several step results, and optionally the finish as the last one, in one
    transaction: the same effect as ``/steps`` for each, then ``/finish``."""
    steps = [
        (e.key, e.state, e.exit_code, e.attempt) for e in body.events if isinstance(e, StepEventIn)
    ]
    last = body.events[-1]
    finish = None
    if isinstance(last, FinishEventIn):
        result = BuildState(last.result)
        assert result in AGENT_RESULTS
        finish = (result, last.cause)
    build, changed = await runtime.store.apply_agent_events(
        assignment_id, agent_id, steps, finish, runtime.clock()
    )
    if changed:
        await runtime.builds.on_finished(build)
    else:
        runtime.wakeups.notify(build_channel(build.id))
    cancel = finish is None and build.cancel_requested and build.state in ACTIVE_STATES
    return AckOut(cancel=cancel)


def normalise_artifact_path(path: str) -> str:
    """A clean relative path with '/' separators; refuses absolute paths and '..'."""
    if "\\" in path or "\x00" in path:
        raise InvalidInput(f"invalid artifact path {path!r}")
    if path.startswith("/"):
        raise InvalidInput(f"artifact path {path!r} must be relative to the workspace")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise InvalidInput(f"artifact path {path!r} must stay inside the workspace")
    return "/".join(parts)
