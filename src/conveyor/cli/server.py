"""`conveyor server` and `conveyor up`: run a controller (and, for `up`, local agents)."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import signal
import socket
from collections.abc import Generator
from pathlib import Path

import structlog
import uvicorn
from rich.console import Console

from conveyor import aio
from conveyor.api.app import create_app
from conveyor.cli.config import write_cli_file
from conveyor.logging import configure_logging
from conveyor.looplag import settle_gc
from conveyor.runtime import ADMIN_TOKEN_FILE, Runtime
from conveyor.settings import Settings

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
        # Each agent keeps two connections (heartbeats, long-poll): after a restart
        # 2,000 agents reconnect 4,000 at once; uvicorn's default backlog (2048) would
        # drop SYNs and make them retry a second later. The kernel caps it at somaxconn.
        backlog=4096,
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
            settle_gc()  # after start-up: see conveyor.looplag
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
        if load_examples:
            await _load_examples(runtime)
        # The pool's agents enrol with enrollment tokens of their own (providers.base).
        await _ensure_local_pool(runtime, agents, executors)
        out.print(f"{agents} local agent(s) with {executors} executor(s) each. Ctrl-C stops all.")
        out.print("Try: [bold]conveyor build start hello-world -p GREETING=hi --follow[/]")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        out.print("stopping agents…")
        await _stop_local_pool(runtime)
        server.should_exit = True
        await serving
        out.print("stopped.")

    aio.run(main())


#: The pool `conveyor up` keeps its local agents in (docs/scaling.md).
UP_POOL = "local"


async def _ensure_local_pool(runtime: Runtime, agents: int, executors: int) -> None:
    """`conveyor up`'s agents are a `local` pool of fixed size (min = max = --agents):
    the autoscaler starts them, and they can be made elastic with `conveyor pool set`."""
    from conveyor.errors import NotFound
    from conveyor.store.pools import create_pool, get_pool, update_pool

    values = {
        "labels": sorted({"local", platform.system().lower(), platform.machine().lower()}),
        "min_size": agents,
        "max_size": agents,
        "executors": executors,
    }
    try:
        await get_pool(runtime.store, UP_POOL)
    except NotFound:
        await create_pool(
            runtime.store,
            {
                "name": UP_POOL,
                "provider": "local",
                "provider_config": {},
                "policy": {},
                "ephemeral": False,
                **values,
            },
            runtime.clock(),
        )
    else:
        await update_pool(runtime.store, UP_POOL, values, runtime.clock())
    if runtime.autoscaler is not None:
        await runtime.autoscaler.run_once()  # start the agents now, not at the next step


async def _stop_local_pool(runtime: Runtime) -> None:
    """Stop the autoscaler, then its agents, while the controller still serves: running
    builds are cancelled and reported before the controller goes away."""
    for loop in runtime.loops:
        if loop.name == "autoscaler":
            await loop.stop()
    if runtime.autoscaler is not None:
        await runtime.autoscaler.close()


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
