"""The agent process: register, heartbeat, long-poll, run builds, report.

It connects out to the controller (or the load balancer in front of several),
so it works from behind NAT. Each assignment runs in its own task with its
own workspace; N executors run N builds at once.

What a build reports goes to its durable outbox on the agent's disk
(:mod:`conveyor.agent.outbox`) and is delivered from there, so a build goes on
while no controller is reachable. The workspace is removed once the outbox is
delivered (an artifact may still be read from it), in the background: the
build stops counting against the agent once its finish is acknowledged.
Outboxes left behind by an earlier agent process are delivered when the agent
starts.

When it has a free executor the agent polls with ``"start": true``: the
controller starts the offered builds in the same request (no ``/start`` round
trip). An assignment received while every executor is busy (the controller
counted an executor free a moment before the agent did) waits in a local queue
and runs when one frees, instead of being dropped and offered again."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog

from conveyor import __version__
from conveyor.agent.client import AgentClient, ProtocolError
from conveyor.agent.credentials import MaskingReporter, build_patterns, clear_secrets_dir
from conveyor.agent.executor import BuildContext, BuildExecutor
from conveyor.agent.outbox import (
    DEFAULT_MAX_OUTBOX_BYTES,
    MAX_BACKOFF,
    BuildOutbox,
    OutboxBudget,
    OutboxReporter,
    list_outboxes,
)
from conveyor.core.plan import BuildPlan
from conveyor.core.states import BuildState

log = structlog.get_logger(__name__)


@dataclass
class AgentConfig:
    url: str
    token: str
    name: str = field(default_factory=socket.gethostname)
    labels: list[str] = field(default_factory=list)
    executors: int = 2
    workdir: Path = Path("conveyor-agent")
    keep_workspaces: bool = False
    kill_grace: float = 3.0
    #: Bound on build output buffered on disk for delivery (all builds together).
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    #: The pool this agent belongs to (elastic agents, docs/scaling.md).
    pool: str | None = None
    #: Take one build, then exit (its executors are 1).
    ephemeral: bool = False


#: On stop, builds whose executors ended get this long to deliver their outbox;
#: what is left (controller unreachable) is delivered by the next agent process.
STOP_DELIVERY_SECONDS = 5.0
INTERRUPTED_CAUSE = "the agent restarted while the build was running"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:100]


class Agent:
    def __init__(self, config: AgentConfig, client: AgentClient | None = None) -> None:
        self.config = config
        self.client = client or AgentClient(config.url, config.token)
        # Outbox delivery retries with a short backoff cap, so that it resumes
        # within seconds of a controller coming back.
        self.delivery_client = client or AgentClient(
            config.url, config.token, max_backoff=MAX_BACKOFF
        )
        self.outbox_budget = OutboxBudget(config.max_outbox_bytes)
        #: assignment id -> its executor while the build runs, None before it
        #: starts (queued) and while its outbox is delivered: every build the
        #: controller counts against this agent, until its finish is acknowledged.
        self.running: dict[str, BuildExecutor | None] = {}
        #: Assignments received, waiting for an executor: (id, the start answer when
        #: the poll started it already, else None: /start is called when it runs).
        self._queue: deque[tuple[str, dict[str, Any] | None]] = deque()
        self._executing = 0  # builds holding an executor (taken off the queue, not done)
        #: Whether the controller told, at registration, that it supports the fast paths.
        self.features: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._cancelled: set[str] = set()
        self._delivering: set[str] = set()  # executor done, outbox not delivered yet
        self.heartbeat_interval = 3.0
        self.poll_timeout = 25.0
        self._took_build = False
        #: Set when the controller refused the token (401): the agent stops.
        self.token_refused = False

    async def register(self) -> int:
        answer = await self.client.call(
            "POST",
            "/agent/v1/register",
            json={
                "name": self.config.name,
                "labels": self.config.labels,
                "executors": self.config.executors,
                "version": __version__,
                **({"pool": self.config.pool} if self.config.pool else {}),
                **({"ephemeral": True} if self.config.ephemeral else {}),
            },
        )
        self.client.agent_id = self.delivery_client.agent_id = int(answer["agent_id"])
        self.heartbeat_interval = float(answer.get("heartbeat_interval", 3.0))
        self.features = set(answer.get("features") or [])
        self.poll_timeout = float(answer.get("poll_timeout", 25.0))
        log.info("agent.registered", name=self.config.name, agent_id=self.client.agent_id)
        return self.client.agent_id

    @property
    def secrets_root(self) -> Path:
        """Where ``file`` credential bindings live while their step runs."""
        return self.config.workdir / "secrets"

    @property
    def outbox_root(self) -> Path:
        return self.config.workdir / "outbox"

    async def run(self) -> None:
        """Run until stop(); then cancel running builds and report them."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        clear_secrets_dir(self.secrets_root)  # files of a killed earlier process
        await self.register()
        await self._resume_outboxes()
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        poller = asyncio.create_task(self._poll_loop(), name="poll")
        await self._stopping.wait()
        poller.cancel()
        heartbeat.cancel()
        for task in (poller, heartbeat):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for aid in list(self.running):
            self._cancel(aid)
        # Builds still queued were given to this agent: they run now, cancelled at
        # once (only their post steps run), and are reported like the others.
        self._run_queued(force=True)
        # Post steps (cancelled, always) get a short while; then they are cut short.
        if not await self._executors_done(self.config.kill_grace + 5):
            for executor in self.running.values():
                if executor is not None:
                    executor.cancel()
            await self._executors_done(self.config.kill_grace + 10)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_DELIVERY_SECONDS)
            if pending:
                # Undelivered outboxes stay on disk; the next agent process delivers them.
                log.warning("agent.stopping_with_undelivered_builds", assignments=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=10)
        await self.client.close()
        if self.delivery_client is not self.client:
            await self.delivery_client.close()

    async def _executors_done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every build to leave its executor (not counting
        outbox delivery, which may wait for an unreachable controller)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._executing or any(aid not in self._delivering for aid in self.running):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def stop(self) -> None:
        self._stopping.set()

    def _refused(self, exc: ProtocolError) -> bool:
        """401: the enrollment token was revoked (or expired): this agent is disconnected
        and stops, rather than calling a controller that will keep refusing it."""
        if exc.status_code != 401:
            return False
        if not self.token_refused:
            self.token_refused = True
            log.error(
                "agent.token_refused",
                error=str(exc),
                hint="the enrollment token was revoked or expired; stopping this agent",
            )
        self.stop()
        return True

    async def _heartbeat_loop(self) -> None:
        psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                answer = await self.client.call(
                    "POST",
                    f"/agent/v1/agents/{self.client.agent_id}/heartbeat",
                    json={"running": list(self.running), **_system_metrics(self.config.workdir)},
                    timeout=10.0,
                    attempts=1,
                )
                self._abort(answer.get("abort", []))
            except ProtocolError as exc:
                if self._refused(exc):
                    return
                if exc.status_code == 404:
                    await self.register()
            except Exception as exc:
                log.warning("agent.heartbeat_failed", error=str(exc))

    @property
    def free_executors(self) -> int:
        return self.config.executors - self._executing - len(self._queue)

    async def _poll_loop(self) -> None:
        while True:
            body: dict[str, Any] = {
                "running": list(self.running),
                "cancelling": list(self._cancelled),
                "wait": self.poll_timeout,
            }
            if self.free_executors > 0:
                # Only when it can run them at once: they are started by this request.
                body["start"] = True
            try:
                answer = await self.client.call(
                    "POST",
                    f"/agent/v1/agents/{self.client.agent_id}/poll",
                    json=body,
                    timeout=self.poll_timeout + 15,
                )
            except ProtocolError as exc:
                if self._refused(exc):
                    return
                log.warning("agent.poll_refused", error=str(exc))
                if exc.status_code == 404:
                    await self.register()
                else:
                    await asyncio.sleep(2)
                continue
            self._accept(answer.get("assignments", []))
            for aid in answer.get("cancel", []):
                self._cancel(aid)
            self._abort(answer.get("abort", []))

    def _accept(self, assignments: list[dict[str, Any]]) -> None:
        """Take offered assignments: run them, or queue them until an executor frees
        (never drop one: it may have been started for us already)."""
        for item in assignments:
            aid = item["assignment_id"]
            if aid in self.running:
                continue
            if self.config.ephemeral and not self._took_build:
                self._took_build = True
                self._spawn(self._request_drain(), "drain")
            started = item if item.get("plan") is not None else None
            if self.free_executors <= 0:
                log.info("agent.assignment_queued", assignment=aid, started=started is not None)
            self.running[aid] = None
            self._queue.append((aid, started))
        self._run_queued()

    def _run_queued(self, force: bool = False) -> None:
        """Start queued builds while executors are free; ``force`` (stopping): start
        every build the controller started for us (to report it cancelled) and leave
        the others assigned (a later agent process gets them again)."""
        while self._queue and (force or self._executing < self.config.executors):
            aid, started = self._queue.popleft()
            if force and started is None:
                self._forget(aid)
                continue
            self._executing += 1
            task = asyncio.create_task(self._run_assignment(aid, started), name=f"build:{aid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _executor_freed(self) -> None:
        self._executing -= 1
        if not self._stopping.is_set():
            self._run_queued()

    def _abort(self, assignment_ids: list[str]) -> None:
        """The controller no longer counts these as ours: stop them, forget queued ones."""
        for aid in assignment_ids:
            queued = [entry for entry in self._queue if entry[0] == aid]
            if queued:
                self._queue.remove(queued[0])
                self._forget(aid)
                log.info("agent.queued_assignment_dropped", assignment=aid)
            else:
                self._cancel(aid)

    def _forget(self, aid: str) -> None:
        self.running.pop(aid, None)
        self._cancelled.discard(aid)
        self._delivering.discard(aid)

    def _cancel(self, aid: str) -> None:
        """Cancel once: a second cancel() would also cut the post steps short."""
        if aid in self._delivering:
            # Over already; only its outbox is being delivered. Say "cancelling" in
            # polls so that the controller does not ask again and again.
            self._cancelled.add(aid)
            return
        if aid not in self.running or aid in self._cancelled:
            return
        self._cancelled.add(aid)
        executor = self.running.get(aid)
        if executor is not None:
            executor.cancel()
        # else: not started yet; cancelled as soon as its executor exists.

    async def _run_assignment(self, aid: str, started: dict[str, Any] | None = None) -> None:
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._executor_freed()

        try:
            await self._execute(aid, started, free)
        except ProtocolError as exc:
            log.warning("agent.assignment_refused", assignment=aid, error=str(exc))
        except Exception:
            log.exception("agent.assignment_crashed", assignment=aid)
        finally:
            self._forget(aid)
            free()
            if self.config.ephemeral and self._took_build and not self.running:
                log.info("agent.ephemeral_done")
                self.stop()  # its one build is over and reported: exit

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request_drain(self) -> None:
        """An ephemeral agent asks to be drained as soon as it has its build, so that
        the controller gives it no second one (it exits after the first)."""
        try:
            await self.client.call("POST", f"/agent/v1/agents/{self.client.agent_id}/drain")
        except Exception as exc:
            log.warning("agent.drain_request_failed", error=str(exc))

    async def _execute(
        self, aid: str, started: dict[str, Any] | None, free: Callable[[], None]
    ) -> None:
        start = started or await self.client.call("POST", f"/agent/v1/assignments/{aid}/start")
        plan = BuildPlan.model_validate(start["plan"])
        build_id = int(start["build_id"])
        workspace = self.config.workdir / "workspace" / f"{_slug(start['job'])}-{build_id}"
        ctx = BuildContext(
            build_id=build_id,
            plan=plan,
            workspace=workspace,
            base_env={
                "CI": "true",
                "CONVEYOR": "true",
                "CONVEYOR_URL": self.client.url,
                "CONVEYOR_BUILD_ID": str(build_id),
                "CONVEYOR_BUILD_NUMBER": str(start["number"]),
                "CONVEYOR_JOB_NAME": start["job"],
                "CONVEYOR_AGENT_NAME": self.config.name,
                "CONVEYOR_WORKSPACE": str(workspace.resolve()),
            },
            kill_grace=self.config.kill_grace,
            credentials=start.get("credentials") or {},
            secrets_dir=self.secrets_root,
            mirror_root=self.config.workdir / "mirrors",
        )
        outbox = self._outbox(
            aid, meta={"build_id": build_id, "workspace": str(workspace.resolve())}
        )
        await self._open_outbox(aid, outbox)
        outbox.start()
        try:
            # Output is masked before it reaches the outbox, so before it leaves the agent.
            reporter = MaskingReporter(OutboxReporter(outbox), build_patterns(ctx.credentials))
            executor = BuildExecutor(ctx, reporter)
            self.running[aid] = executor
            if aid in self._cancelled:  # cancelled (or the agent stopping) before it ran
                executor.cancel()
            log.info("build.started", build_id=build_id, job=start["job"], number=start["number"])
            cause: str | None = None
            try:
                result = await executor.run()
            except Exception as exc:
                log.exception("build.executor_failed", build_id=build_id)
                result, cause = BuildState.FAILED, f"agent error: {exc}"
            if cause is None and result == BuildState.FAILED:
                cause = executor.cause
            if self._stopping.is_set() and result == BuildState.CANCELLED:
                cause = "agent stopped"
            await reporter.flush()
            await outbox.finish(result.value, reporter.mask(cause))
            self._delivering.add(aid)
            self.running[aid] = None
            free()  # the executor is done: a queued build may run
            log.info("build.finished", build_id=build_id, result=result.value)
            await self._deliver(aid, outbox, workspace)
        finally:
            await outbox.close()

    async def _open_outbox(self, aid: str, outbox: BuildOutbox) -> None:
        """Open a started build's outbox, retrying a disk error a few times; if it
        cannot be opened the build is reported failed directly (nothing ran), so that it
        does not stay running on the controller."""
        for attempt in range(3):
            try:
                await outbox.open()
                return
            except OSError as exc:
                log.warning("agent.outbox_open_failed", assignment=aid, error=str(exc))
                if attempt == 2:
                    await self.delivery_client.call(
                        "POST",
                        f"/agent/v1/assignments/{aid}/finish",
                        json={"result": "failed", "cause": f"agent error: {exc}"},
                    )
                    raise
                await asyncio.sleep(0.5)

    def _outbox(self, aid: str, meta: dict[str, object] | None = None) -> BuildOutbox:
        return BuildOutbox(
            self.outbox_root,
            aid,
            self.delivery_client,
            budget=self.outbox_budget,
            on_cancel=lambda: self._cancel(aid),
            on_rejected=lambda: self._cancel(aid),
            meta=meta,
            batch_events="events" in self.features,
        )

    async def _deliver(self, aid: str, outbox: BuildOutbox, workspace: Path | None) -> None:
        """Wait for the outbox to be delivered (or refused); then the build no longer
        counts against this agent, and its workspace is removed in the background."""
        delivered = await outbox.wait()
        if delivered is None:
            return  # closed: the agent is stopping; the next process delivers it
        if delivered:
            log.info("build.delivered", assignment=outbox.assignment_id)
        self._forget(aid)
        if workspace is not None and not self.config.keep_workspaces:
            task = asyncio.create_task(
                asyncio.to_thread(shutil.rmtree, workspace, True), name=f"rmtree:{aid}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resume_outboxes(self) -> None:
        """Deliver the outboxes an earlier agent process left behind. Their builds are
        not resumed: one whose result is missing (the agent stopped while it ran) is
        reported failed, after the output it had produced."""
        for aid in await asyncio.to_thread(list_outboxes, self.outbox_root):
            if aid in self.running:
                continue
            self.running[aid] = None
            self._delivering.add(aid)
            task = asyncio.create_task(self._run_resumed(aid), name=f"resume:{aid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_resumed(self, aid: str) -> None:
        outbox = self._outbox(aid)
        try:
            await outbox.open()
            if not outbox.finished:
                await outbox.write(f"\n==> {INTERRUPTED_CAUSE}; it did not go on\n".encode())
                await outbox.finish(BuildState.FAILED.value, INTERRUPTED_CAUSE)
            outbox.start()
            workspace = outbox.meta.get("workspace")
            await self._deliver(aid, outbox, Path(workspace) if workspace else None)
        except Exception:
            log.exception("agent.outbox_resume_failed", assignment=aid)
        finally:
            await outbox.close()
            self._forget(aid)


def _system_metrics(workdir: Path) -> dict[str, object]:
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(workdir))
        disk_percent: float | None = disk.percent
    except OSError:
        disk_percent = None
    load1, _, _ = psutil.getloadavg()
    net = psutil.net_io_counters()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "metrics": {
            "disk_percent": disk_percent,
            "load1": load1,
            "memory_total": memory.total,
            # Cumulative since the host booted: graph with rate().
            "net_sent_bytes": net.bytes_sent if net is not None else None,
            "net_recv_bytes": net.bytes_recv if net is not None else None,
        },
    }
