"""`conveyor scaling decisions|trace|simulate`: what the autoscaler decided, and a
simulator to try a policy on a recorded workload before using it."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(
    help="Autoscaling: decisions, workload traces, the policy simulator.", no_args_is_help=True
)
out = Console()

TRACE_COLUMNS = ["arrival", "label", "duration"]


@app.command("decisions")
def decisions(
    pool: Annotated[str, typer.Argument(help="pool name")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="most recent N")] = 20,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A pool's autoscaling decisions, most recent first, with their reasons."""
    rows = ApiClient.from_options(url, token).json(
        "GET", f"/api/v1/pools/{pool}/decisions", params={"limit": limit}
    )
    table = Table("at", "size", "rule", "reason")
    for d in rows:
        table.add_row(d["at"], f"{d['current']} → {d['target']}", d["rule"], d["reason"])
    out.print(table)


@app.command("trace")
def trace(
    out_file: Annotated[Path, typer.Option("--out", help="CSV file to write")],
    since: Annotated[
        str | None, typer.Option(help="only builds queued since (ISO 8601, e.g. 2026-12-01)")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Export the recorded workload (arrival, label expression, run seconds) as CSV."""
    params: dict[str, Any] = {}
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            fail(f"--since {since!r} is not an ISO 8601 date or time")
        params["since"] = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
    rows = ApiClient.from_options(url, token).json("GET", "/api/v1/scaling/workload", params=params)
    try:
        with out_file.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(TRACE_COLUMNS)
            for r in rows:
                writer.writerow([r["arrival"], r["label"] or "", f"{r['duration']:.1f}"])
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror}")
    out.print(f"wrote {len(rows)} builds to {out_file}")


def read_trace(path: Path) -> list[Any]:
    """Trace rows from CSV; a clear message (exit 2) for a bad file."""
    from conveyor.core.simulation import TraceBuild

    try:
        text = path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    reader = csv.DictReader(text.splitlines())
    missing = set(TRACE_COLUMNS) - set(reader.fieldnames or [])
    if missing:
        fail(f"{path}: missing column(s) {', '.join(sorted(missing))} (need {TRACE_COLUMNS})")
    rows = []
    for line, r in enumerate(reader, start=2):
        try:
            arrival = datetime.fromisoformat(r["arrival"])
            duration = float(r["duration"])
        except (TypeError, ValueError):
            fail(f"{path}:{line}: bad arrival or duration: {r!r}")
        if duration < 0:
            fail(f"{path}:{line}: negative duration")
        if arrival.tzinfo is None:
            arrival = arrival.replace(tzinfo=UTC)
        rows.append(TraceBuild(arrival, (r["label"] or "").strip() or None, duration))
    if not rows:
        fail(f"{path}: no builds in the trace")
    return rows


def read_pool(path: Path) -> Any:
    from conveyor.core.scaling import PolicyError, parse_pool_document

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        fail(f"{path} is not valid YAML: {exc}")
    if isinstance(document, dict) and "name" not in document:
        document = {**document, "name": path.stem.lower().replace("_", "-")[:50] or "pool"}
    try:
        return parse_pool_document(document)
    except PolicyError as exc:
        fail(f"{path}: {exc}")


@app.command("simulate")
def simulate(
    trace_file: Annotated[Path, typer.Option("--trace", help="workload CSV (scaling trace)")],
    policy: Annotated[Path, typer.Option("--policy", help="pool YAML with its policy")],
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot here")] = None,
    interval: Annotated[float, typer.Option(min=1, help="seconds between autoscaler steps")] = 10.0,
    startup: Annotated[
        float, typer.Option(min=0, help="seconds a new agent takes to be ready")
    ] = 30.0,
    show_decisions: Annotated[
        int, typer.Option("--decisions", min=0, help="print the first N decisions")
    ] = 0,
) -> None:
    """Replay a workload through a policy (the autoscaler's own code, virtual clock):
    queue-wait p50/p95 and agent-hours, and optionally a plot."""
    from conveyor.core.simulation import simulate as run

    builds = read_trace(trace_file)
    pool = read_pool(policy)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), console=out, transient=True
    ) as progress:
        task = progress.add_task("builds", total=len(builds))
        result = run(
            pool,
            builds,
            interval=interval,
            startup_seconds=startup,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    served = len(result.waits)
    left_out = (
        f", {result.skipped} left out: labels the pool does not serve" if result.skipped else ""
    )
    report = [
        ("policy", f"{policy} (pool {pool.name}, {pool.min_size}–{pool.max_size} agents)"),
        ("builds", f"{result.builds} ({served} served{left_out})"),
        (
            "queue wait",
            f"p50 {result.wait_p50:.0f} s, p95 {result.wait_p95:.0f} s,"
            f" max {result.wait_max:.0f} s",
        ),
        ("agent-hours", f"{result.agent_hours:.1f} (peak {result.peak_agents} agents)"),
        ("decisions", str(result.decisions)),
    ]
    for key, value in report:
        out.print(f"{key:<12} {value}", highlight=False)
    for reason in result.reasons[:show_decisions]:
        out.print(reason, highlight=False)
    if plot is not None:
        from conveyor.simulation_plot import write_plot

        try:
            write_plot(result, plot, f"{pool.name} ({policy.name}) on {trace_file.name}")
        except OSError as exc:
            fail(f"cannot write {plot}: {exc.strerror}")
        out.print(f"plot written to {plot}")
