"""`conveyor server` and `conveyor up`: run a controller (and, for `up`, local agents)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path

import structlog
import uvicorn
from rich.console import Console

from conveyor import aio
from conveyor.api.app import create_app
from conveyor.cli.config import write_cli_file
from conveyor.controller.clock import utcnow
from conveyor.logging import configure_logging
from conveyor.runtime import ADMIN_TOKEN_FILE, Runtime
from conveyor.settings import Settings
from conveyor.store import Store

out = Console(stderr=True)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class _QuietServer(uvicorn.Server):
    """A uvicorn server whose signals we handle ourselves (to stop agents first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        # TLS straight from the controller (docs/security.md); None: plain HTTP.
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )


def _announce(runtime: Runtime, url: str) -> None:
    home = runtime.settings.home
    token = runtime.first_admin_token
    if token is not None:
        write_cli_file(home, url, token)
        out.print(f"[bold]Admin token[/] (shown once; also saved in {home / ADMIN_TOKEN_FILE}):")
        out.print(f"  {token}", highlight=False)
    else:
        saved = home / ADMIN_TOKEN_FILE
        if saved.exists():
            write_cli_file(home, url, saved.read_text().strip())
    out.print(f"Conveyor controller at [bold]{url}[/] (database {runtime.store.dialect})")


def _build_runtime(settings: Settings) -> Runtime:
    """The runtime, or a clear message and exit 2 for bad configuration (a database URL,
    a failure-patterns or notifications file) instead of a traceback."""
    from conveyor.cli.client import fail

    try:
        return Runtime.build(settings)
    except ValueError as exc:
        fail(str(exc))


def run_server(settings: Settings, log_format: str | None = None) -> None:
    configure_logging(settings.log_level, log_format)
    runtime = _build_runtime(settings)
    structlog.contextvars.bind_contextvars(controller=runtime.controller_id)
    app = create_app(runtime)
    scheme = "https" if settings.tls_cert else "http"
    url = settings.public_url or f"{scheme}://{settings.host}:{settings.port}"

    async def main() -> None:
        server = uvicorn.Server(_uvicorn_config(app, settings))
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            _announce(runtime, url)
        await task

    aio.run(main())


def _free_port(host: str, preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
            return preferred
        except OSError:
            s.bind((host, 0))
            return int(s.getsockname()[1])


def run_up(
    settings: Settings,
    agents: int,
    executors: int,
    load_examples: bool,
    log_format: str | None = None,
) -> None:
    configure_logging(settings.log_level, log_format)
    settings.port = _free_port(settings.host, settings.port)
    runtime = _build_runtime(settings)
    structlog.contextvars.bind_contextvars(controller=runtime.controller_id)
    app = create_app(runtime)
    url = f"http://{settings.host}:{settings.port}"

    async def main() -> None:
        server = _QuietServer(_uvicorn_config(app, settings))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                raise SystemExit(1)
            await asyncio.sleep(0.05)
        _announce(runtime, url)
        # Local agents enrol with a pool token (the agent protocol takes agent tokens only).
        token = await local_agent_token(runtime.store, settings.home)
        if load_examples:
            await _load_examples(runtime)
        procs = [_spawn_agent(settings.home, url, token, i + 1, executors) for i in range(agents)]
        out.print(f"{agents} local agent(s) with {executors} executor(s) each. Ctrl-C stops all.")
        out.print("Try: [bold]conveyor build start hello-world -p GREETING=hi --follow[/]")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        out.print("stopping agents…")
        await asyncio.to_thread(_stop_agents, procs)
        server.should_exit = True
        await serving
        out.print("stopped.")

    aio.run(main())


async def local_agent_token(store: Store, home: Path) -> str:
    """The enrollment token of this home's local agents, saved in HOME/agent-token (0600)
    and reused while it is valid, so the agents keep their names across restarts."""
    from conveyor.security.agents import issue_enrollment_token
    from conveyor.security.auth import digest
    from conveyor.store.security import find_agent_token

    path = home / "agent-token"
    if path.exists():
        saved = path.read_text().strip()
        record = await find_agent_token(store, digest(saved))
        if record is not None and record.usable(utcnow()):
            return saved
    token = await issue_enrollment_token(store, pool="local", created_by="conveyor up")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _spawn_agent(
    home: Path, url: str, token: str, index: int, executors: int
) -> subprocess.Popen[bytes]:
    name = f"local-{index}"
    env = {**os.environ, "CONVEYOR_TOKEN": token}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "agent",
            "--url",
            url,
            "--name",
            name,
            "--labels",
            f"local,{platform.system().lower()},{platform.machine().lower()}",
            "--executors",
            str(executors),
            "--workdir",
            str((home / "agents" / name).resolve()),
        ],
        env=env,
        # Own process group: Ctrl-C reaches us, and we stop agents in order.
        start_new_session=True,
        # If `conveyor up` itself is killed (SIGKILL), its agents must not live on.
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # not Linux: Ctrl-C still stops agents in order
        pass


def _stop_agents(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _load_examples(runtime: Runtime) -> None:
    from conveyor.api.routes_jobs import job_fields
    from conveyor.errors import NotFound

    for path in sorted(EXAMPLES.glob("*.yml")):
        _, fields = job_fields(path.read_text())
        try:
            await runtime.store.get_job(fields.name)
        except NotFound:
            await runtime.store.create_job(fields, "examples", runtime.clock())
            out.print(f"loaded example job [bold]{fields.name}[/] from {path.name}")
