"""The ``local`` provider: agents as `conveyor agent` subprocesses on this host.

Instances are PIDs. Children of this controller are tracked as ``Popen`` objects (and
reaped); PIDs recorded by an earlier leader on the same host are checked through
/proc, by the agent name on their command line, before anything is signalled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog

from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch, Provider

log = structlog.get_logger(__name__)

#: After SIGTERM, an (idle) agent gets this long before SIGKILL.
STOP_GRACE_SECONDS = 20.0


class LocalProvider(Provider):
    kind = "local"

    def __init__(self, config: dict[str, Any], home: Path) -> None:
        unknown = set(config) - {"workdir"}
        if unknown:
            raise InvalidInput(f"local provider: unknown config {', '.join(sorted(unknown))}")
        self.workdir = Path(config.get("workdir") or Path(home) / "agents").resolve()
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    async def create(self, launch: AgentLaunch) -> str:
        workdir = self.workdir / launch.agent_name
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **launch.env, "CONVEYOR_TOKEN": launch.token}
        proc = _spawn(
            [sys.executable, "-m", "conveyor", *launch.agent_args(), "--workdir", str(workdir)],
            env,
            workdir / "agent.log",
        )
        self.children[proc.pid] = proc
        log.info("provider.local.started", pool=launch.pool, agent=launch.agent_name, pid=proc.pid)
        return str(proc.pid)

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        """Recorded PIDs still running an agent (children of this controller, or ones an
        earlier leader on this host started: checked by name on their command line)."""
        del pool
        alive = set()
        for instance, agent_name in known.items():
            pid = int(instance)
            proc = self.children.get(pid)
            if proc is not None:
                if proc.poll() is None:
                    alive.add(instance)
                else:
                    self.children.pop(pid)  # reaped: no zombie left behind
            elif _is_agent_process(pid, agent_name):
                alive.add(instance)
        return alive

    async def delete(self, pool: str, instance: str) -> None:
        pid = int(instance)
        proc = self.children.pop(pid, None)
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        elif _is_agent_process(pid, None):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        log.info("provider.local.stopped", pool=pool, pid=pid)

    async def close(self) -> None:
        """Stop every child (the controller stops; agents must not outlive it)."""
        for pid in list(self.children):
            await self.delete("", str(pid))


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as logfile:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the controller's terminal does not reach it.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _is_agent_process(pid: int, agent_name: str | None) -> bool:
    """Only a `conveyor agent` process (with that name, when known) is ours to signal."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [part.decode(errors="replace") for part in cmdline]
    if "agent" not in text:
        return False
    return agent_name is None or agent_name in text


def _die_with_parent() -> None:
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass
