"""`conveyor cluster up|down|status`: controllers on PostgreSQL behind nginx, plus
agents, as background processes on this machine (see conveyor.cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import fail
from conveyor.cluster import (
    ClusterConfig,
    ClusterError,
    ProcessStatus,
    check_database_url,
    down,
    status,
    up,
)

app = typer.Typer(
    help="A high-availability cluster on this machine: N controllers on one PostgreSQL"
    " behind nginx, plus agents (background processes; `down` stops them).",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

HomeOpt = Annotated[
    Path,
    typer.Option(help="cluster folder: controllers' homes, blobs, logs, cluster.json, cli.json"),
]
DEFAULT_HOME = Path(".conveyor-cluster")


def _report(message: str) -> None:
    err.print(message, highlight=False)


@app.command("up")
def cluster_up(
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            envvar="CONVEYOR_DATABASE_URL",
            help="postgresql://USER@HOST/DB shared by every controller (required)",
            show_default=False,
        ),
    ] = None,
    controllers: Annotated[int, typer.Option(min=1, max=32, help="controllers to start")] = 3,
    agents: Annotated[int, typer.Option(min=0, max=64, help="agents to start")] = 2,
    executors: Annotated[int, typer.Option(min=1, max=64, help="executors per agent")] = 2,
    home: HomeOpt = DEFAULT_HOME,
    port: Annotated[int, typer.Option(min=1, max=65535, help="nginx port on 127.0.0.1")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            help="admin token, when the database already has tokens that this HOME does not"
            " hold (e.g. a database an earlier cluster or server used)",
            show_default=False,
        ),
    ] = None,
    nginx: Annotated[
        str | None, typer.Option(help="nginx binary (default: from PATH or /usr/sbin)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="seconds to wait for each step to be ready")
    ] = 90.0,
    log_level: Annotated[str, typer.Option(help="controllers' and agents' log level")] = "info",
    notifications_file: Annotated[
        Path | None,
        typer.Option(
            help="the controllers' notifications file (docs/notifications.md)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """Start controllers, nginx and agents in the background; print the URL."""
    try:
        config = ClusterConfig(
            home=home,
            database_url=check_database_url(database),
            controllers=controllers,
            agents=agents,
            executors=executors,
            port=port,
            token=token,
            nginx=nginx,
            timeout=timeout,
            log_level=log_level,
            notifications_file=notifications_file,
        )
        state = up(config, _report)
        _, rows = status(home)
    except ClusterError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: stopped what was started")
    _print_table(home, rows)
    out.print(f"Conveyor cluster at [bold]{state.url}[/] (nginx → {controllers} controllers)")
    out.print(
        f"CLI: [bold]CONVEYOR_HOME={home} conveyor job list[/]   "
        f"stop: [bold]conveyor cluster down --home {home}[/]",
        highlight=False,
    )


@app.command("down")
def cluster_down(
    home: HomeOpt = DEFAULT_HOME,
    timeout: Annotated[
        float, typer.Option(min=0, help="seconds to wait after SIGTERM before SIGKILL")
    ] = 30.0,
) -> None:
    """Stop the cluster: agents first, then nginx, controllers last."""
    try:
        results = down(home, timeout, _report)
    except ClusterError as exc:
        fail(str(exc))
    table = Table("role", "name", "pid", "outcome")
    for r in results:
        table.add_row(r.process.role, r.process.name, str(r.process.pid), r.outcome)
    out.print(table)
    out.print("cluster stopped.")


@app.command("status")
def cluster_status(home: HomeOpt = DEFAULT_HOME) -> None:
    """Show the cluster's processes, alive or dead. Exit 0 if all are alive, 1 if not."""
    try:
        state, rows = status(home)
    except ClusterError as exc:
        fail(str(exc))
    _print_table(home, rows)
    out.print(f"URL {state.url}   database {state.database}   started {state.created_at}")
    if not all(r.alive for r in rows):
        raise typer.Exit(1)


def _print_table(home: Path, rows: list[ProcessStatus]) -> None:
    table = Table("role", "name", "pid", "port", "state", "ready", "log")
    for row in rows:
        p = row.process
        state = "[green]alive[/]" if row.alive else "[red]dead[/]"
        ready = "" if row.ready is None else ("yes" if row.ready else "[red]no[/]")
        log = Path(p.log)
        if log.is_relative_to(home.absolute()):
            log = log.relative_to(home.absolute())
        table.add_row(p.role, p.name, str(p.pid), str(p.port or ""), state, ready, str(log))
    out.print(table)


if __name__ == "__main__":  # `python -m conveyor.cli.cluster` before it is registered
    app()
