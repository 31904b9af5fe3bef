"""The agent process: register, heartbeat, long-poll, run builds, report.

It connects out to the controller (or the load balancer in front of several),
so it works from behind NAT. Each assignment runs in its own task with its
own workspace; N executors run N builds at once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from conveyor import __version__
from conveyor.agent.client import AgentClient, ProtocolError
from conveyor.agent.executor import BuildContext, BuildExecutor
from conveyor.agent.shipper import LogShipper
from conveyor.core.plan import BuildPlan
from conveyor.core.states import BuildState, StepState

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


class RemoteReporter:
    """The executor's BuildReporter, speaking the agent protocol."""

    def __init__(self, client: AgentClient, assignment_id: str, shipper: LogShipper) -> None:
        self.client = client
        self.assignment_id = assignment_id
        self.shipper = shipper

    async def log(self, data: bytes) -> None:
        await self.shipper.write(data)

    async def step_started(self, key: str, attempt: int) -> None:
        await self._step(key, StepState.RUNNING, None, attempt)

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        await self._step(key, state, exit_code, attempt)

    async def _step(self, key: str, state: StepState, exit_code: int | None, attempt: int) -> None:
        await self.client.call(
            "POST",
            f"/agent/v1/assignments/{self.assignment_id}/steps",
            json={"key": key, "state": state.value, "exit_code": exit_code, "attempt": attempt},
        )

    async def upload_artifact(self, rel_path: str, file: Path) -> None:
        await self.client.upload(
            f"/agent/v1/assignments/{self.assignment_id}/artifacts", {"path": rel_path}, file
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:100]


class Agent:
    def __init__(self, config: AgentConfig, client: AgentClient | None = None) -> None:
        self.config = config
        self.client = client or AgentClient(config.url, config.token)
        self.running: dict[str, BuildExecutor | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._cancelled: set[str] = set()
        self.heartbeat_interval = 3.0
        self.poll_timeout = 25.0

    async def register(self) -> int:
        answer = await self.client.call(
            "POST",
            "/agent/v1/register",
            json={
                "name": self.config.name,
                "labels": self.config.labels,
                "executors": self.config.executors,
                "version": __version__,
            },
        )
        self.client.agent_id = int(answer["agent_id"])
        self.heartbeat_interval = float(answer.get("heartbeat_interval", 3.0))
        self.poll_timeout = float(answer.get("poll_timeout", 25.0))
        log.info("agent.registered", name=self.config.name, agent_id=self.client.agent_id)
        return self.client.agent_id

    async def run(self) -> None:
        """Run until stop(); then cancel running builds and report them."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        await self.register()
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
        if self._tasks:
            # Post steps (cancelled, always) get a short while; then they are cut short.
            _, pending = await asyncio.wait(self._tasks, timeout=self.config.kill_grace + 5)
            if pending:
                for executor in self.running.values():
                    if executor is not None:
                        executor.cancel()
                await asyncio.wait(pending, timeout=self.config.kill_grace + 10)
        await self.client.close()

    def stop(self) -> None:
        self._stopping.set()

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
                if exc.status_code == 404:
                    await self.register()
            except Exception as exc:
                log.warning("agent.heartbeat_failed", error=str(exc))

    async def _poll_loop(self) -> None:
        while True:
            try:
                answer = await self.client.call(
                    "POST",
                    f"/agent/v1/agents/{self.client.agent_id}/poll",
                    json={
                        "running": list(self.running),
                        "cancelling": list(self._cancelled),
                        "wait": self.poll_timeout,
                    },
                    timeout=self.poll_timeout + 15,
                )
            except ProtocolError as exc:
                log.warning("agent.poll_refused", error=str(exc))
                if exc.status_code == 404:
                    await self.register()
                else:
                    await asyncio.sleep(2)
                continue
            for item in answer.get("assignments", []):
                aid = item["assignment_id"]
                if aid in self.running:
                    continue
                if len(self.running) >= self.config.executors:
                    log.warning("agent.over_assigned", assignment=aid)
                    continue
                self.running[aid] = None
                task = asyncio.create_task(self._run_assignment(aid), name=f"build:{aid}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._abort(answer.get("cancel", []))
            self._abort(answer.get("abort", []))

    def _abort(self, assignment_ids: list[str]) -> None:
        for aid in assignment_ids:
            self._cancel(aid)

    def _cancel(self, aid: str) -> None:
        """Cancel once: a second cancel() would also cut the post steps short."""
        executor = self.running.get(aid)
        if executor is not None and aid not in self._cancelled:
            self._cancelled.add(aid)
            executor.cancel()

    async def _run_assignment(self, aid: str) -> None:
        try:
            await self._execute(aid)
        except ProtocolError as exc:
            log.warning("agent.assignment_refused", assignment=aid, error=str(exc))
        except Exception:
            log.exception("agent.assignment_crashed", assignment=aid)
        finally:
            self.running.pop(aid, None)
            self._cancelled.discard(aid)

    async def _execute(self, aid: str) -> None:
        start = await self.client.call("POST", f"/agent/v1/assignments/{aid}/start")
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
        )
        shipper = LogShipper(self.client, aid, lambda: self._cancel(aid))
        executor = BuildExecutor(ctx, RemoteReporter(self.client, aid, shipper))
        self.running[aid] = executor
        shipper.start()
        log.info("build.started", build_id=build_id, job=start["job"], number=start["number"])
        cause: str | None = None
        try:
            result = await executor.run()
        except Exception as exc:
            log.exception("build.executor_failed", build_id=build_id)
            result, cause = BuildState.FAILED, f"agent error: {exc}"
        if self._stopping.is_set() and result == BuildState.CANCELLED:
            cause = "agent stopped"
        await shipper.close()
        await self.client.call(
            "POST",
            f"/agent/v1/assignments/{aid}/finish",
            json={"result": result.value, "cause": cause},
        )
        log.info("build.finished", build_id=build_id, result=result.value)
        if not self.config.keep_workspaces:
            await asyncio.to_thread(shutil.rmtree, workspace, True)


def _system_metrics(workdir: Path) -> dict[str, object]:
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(workdir))
        disk_percent: float | None = disk.percent
    except OSError:
        disk_percent = None
    load1, _, _ = psutil.getloadavg()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "metrics": {
            "disk_percent": disk_percent,
            "load1": load1,
            "memory_total": memory.total,
        },
    }
