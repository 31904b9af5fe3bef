"""`conveyor agent`: run a build agent; `conveyor agent list|drain|resume`: the fleet."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.table import Table

from conveyor import aio
from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Run a build agent, or manage agents (list, drain, resume).")
out = Console()


@app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="load-balancer or controller URL, or a comma-separated list (env CONVEYOR_URL)"
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(help="token (env CONVEYOR_TOKEN)")] = None,
    name: Annotated[str | None, typer.Option(help="agent name (default: host name)")] = None,
    labels: Annotated[str, typer.Option(help="comma-separated labels, e.g. linux,docker")] = "",
    executors: Annotated[int, typer.Option(min=1, max=1024, help="builds at once")] = 2,
    workdir: Annotated[Path, typer.Option(help="workspaces live here")] = Path("conveyor-agent"),
    keep_workspaces: Annotated[bool, typer.Option(help="keep workspaces after builds")] = False,
    outbox_limit_mb: Annotated[
        int,
        typer.Option(
            "--outbox-limit-mb",
            min=1,
            help="disk space (MiB) for build output not yet delivered to the controller "
            "(during an outage); when it is full, builds' output waits",
        ),
    ] = 1024,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    log_format: Annotated[
        str | None,
        typer.Option(envvar="CONVEYOR_LOG_FORMAT", help="console (default) or json lines"),
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="the agent pool this agent belongs to (docs/scaling.md)")
    ] = None,
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="take one build, then exit (1 executor)")
    ] = False,
) -> None:
    """Run a build agent that connects out to the controller (no subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    from conveyor.agent.client import ProtocolError
    from conveyor.agent.service import Agent, AgentConfig
    from conveyor.logging import configure_logging

    url = url or os.environ.get("CONVEYOR_URL")
    token = token or os.environ.get("CONVEYOR_TOKEN")
    if not url or not token:
        fail("an agent needs --url and --token (or CONVEYOR_URL and CONVEYOR_TOKEN)")
    if log_format not in (None, "console", "json"):
        fail(f"--log-format must be console or json, not {log_format!r}")
    configure_logging(log_level, log_format)
    structlog.contextvars.bind_contextvars(agent=name or socket.gethostname())
    config = AgentConfig(
        url=url,
        token=token,
        name=name or socket.gethostname(),
        labels=[label.strip() for label in labels.split(",") if label.strip()],
        executors=executors,
        workdir=workdir,
        keep_workspaces=keep_workspaces,
        max_outbox_bytes=outbox_limit_mb * 1024 * 1024,
        pool=pool,
        ephemeral=ephemeral,
    )
    if ephemeral:
        config.executors = 1

    async def main() -> None:
        runner = Agent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        try:
            await runner.run()
        except ProtocolError as exc:  # registration refused (bad or revoked token)
            fail(f"the controller refused this agent: {exc}")
        if runner.token_refused:
            fail("the controller refused this agent's token (revoked or expired); stopped")

    aio.run(main())


@app.command("list")
def list_agents(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """List agents with their state and load."""
    client = ApiClient.from_options(url, token)
    table = Table("id", "name", "state", "busy", "labels", "pool", "cpu %", "mem %", "last seen")
    for a in client.json("GET", "/api/v1/agents"):
        table.add_row(
            str(a["id"]),
            a["name"],
            a["state"],
            f"{a['busy']}/{a['executors']}",
            ",".join(a["labels"]),
            a.get("pool") or "",
            "" if a["cpu_percent"] is None else str(a["cpu_percent"]),
            "" if a["memory_percent"] is None else str(a["memory_percent"]),
            a["last_seen_at"],
        )
    out.print(table)


@app.command("drain")
def drain(agent_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Stop giving new builds to an agent (running ones finish)."""
    ApiClient.from_options(url, token).json("POST", f"/api/v1/agents/{agent_id}/drain")
    out.print(f"agent {agent_id} draining")


@app.command("resume")
def resume(agent_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Give builds to a drained agent again."""
    ApiClient.from_options(url, token).json("POST", f"/api/v1/agents/{agent_id}/resume")
    out.print(f"agent {agent_id} resumed")
