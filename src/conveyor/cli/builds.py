"""`conveyor build ...`: start (and follow), list, show, log, cancel."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Start and inspect builds.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

#: Exit status of `build start --follow` / `build log --follow` by build result.
EXIT_BY_RESULT = {"succeeded": 0, "failed": 1, "lost": 1, "timed_out": 124, "cancelled": 130}


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"parameter {pair!r} must look like KEY=VALUE")
        params[key] = value
    return params


def follow(client: ApiClient, build_id: int, offset: int = 0) -> int:
    """Print the live log until the build ends; returns the exit status for its result."""
    state = "unknown"
    for event, data in client.events(f"/api/v1/builds/{build_id}/log/stream", {"offset": offset}):
        if event == "log":
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        elif event == "end":
            state = data["state"]
            cause = f" ({data['cause']})" if data.get("cause") else ""
            colour = "green" if state == "succeeded" else "red"
            err.print(f"[bold {colour}]build {build_id} {state}[/]{cause}", highlight=False)
            break
    return EXIT_BY_RESULT.get(state, 1)


@app.command("start")
def start(
    job: str,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="KEY=VALUE, repeatable")
    ] = None,
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="print the live log; exit with the result")
    ] = False,
    priority: Annotated[int | None, typer.Option(help="override the job's priority")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Queue a build of JOB."""
    client = ApiClient.from_options(url, token)
    body: dict[str, Any] = {"parameters": _parse_params(param or [])}
    if priority is not None:
        body["priority"] = priority
    build = client.json("POST", f"/api/v1/jobs/{job}/builds", json=body)
    err.print(f"build [bold]{build['job']} #{build['number']}[/] queued (id {build['id']})")
    if follow_log:
        raise typer.Exit(follow(client, build["id"]))


@app.command("list")
def list_builds(
    job: Annotated[str | None, typer.Option(help="only this job")] = None,
    state: Annotated[list[str] | None, typer.Option(help="only these states")] = None,
    limit: int = 20,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List builds, newest first."""
    client = ApiClient.from_options(url, token)
    params: dict[str, Any] = {"limit": limit}
    if job:
        params["job"] = job
    if state:
        params["state"] = state
    page = client.json("GET", "/api/v1/builds", params=params)
    table = Table("id", "job", "#", "state", "queued", "duration")
    for b in page["items"]:
        duration = f"{b['duration_seconds']:.1f}s" if b["duration_seconds"] is not None else ""
        table.add_row(
            str(b["id"]), b["job"], str(b["number"]), b["state"], b["queued_at"], duration
        )
    out.print(table)


@app.command("show")
def show(build_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show a build with its steps and artifacts."""
    client = ApiClient.from_options(url, token)
    b = client.json("GET", f"/api/v1/builds/{build_id}")
    out.print(f"[bold]{b['job']} #{b['number']}[/] (id {b['id']}): {b['state']}", highlight=False)
    if b["cause"]:
        out.print(f"cause: {b['cause']}", highlight=False)
    if b["parameters"]:
        out.print("parameters: " + ", ".join(f"{k}={v}" for k, v in b["parameters"].items()))
    if b.get("commit"):
        c = b["commit"]
        subject = (c["message"] or "").splitlines()[0] if c["message"] else ""
        out.print(
            f"commit {c['sha'][:12]} ({c['branch']}) by {c['author']}: {subject}", highlight=False
        )
    table = Table("stage", "step", "state", "exit", "attempt")
    for s in b["steps"] or []:
        exit_code = "" if s["exit_code"] is None else str(s["exit_code"])
        table.add_row(s["stage"], s["name"], s["state"], exit_code, str(s["attempt"]))
    out.print(table)
    for a in b["artifacts"] or []:
        out.print(f"artifact {a['path']} ({a['size']} bytes, sha256 {a['sha256'][:12]}…)")


@app.command("log")
def log(
    build_id: int,
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="follow until it ends")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a build's log."""
    client = ApiClient.from_options(url, token)
    if follow_log:
        raise typer.Exit(follow(client, build_id))
    offset = 0
    while True:
        response = client.request(
            "GET", f"/api/v1/builds/{build_id}/log", params={"offset": offset}
        )
        sys.stdout.buffer.write(response.content)
        next_offset = int(response.headers["X-Next-Offset"])
        if next_offset == offset or response.headers.get("X-More-Data") != "true":
            break
        offset = next_offset
    sys.stdout.flush()


@app.command("cancel")
def cancel(build_id: int, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Cancel a queued or running build."""
    client = ApiClient.from_options(url, token)
    b = client.json("POST", f"/api/v1/builds/{build_id}/cancel")
    verb = "cancellation requested" if b["state"] in ("assigned", "running") else b["state"]
    out.print(f"build {build_id}: {verb}")


@app.command("delete")
def delete(
    build_id: int,
    force: Annotated[
        bool, typer.Option(help="admin only: also a pinned or released build")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a finished build with its log and artifacts."""
    if not yes:
        typer.confirm(f"Delete build {build_id} with its log and artifacts?", abort=True)
    client = ApiClient.from_options(url, token)
    params = {"force": "true"} if force else None
    b = client.json("DELETE", f"/api/v1/builds/{build_id}", params=params)
    out.print(f"deleted build {b['job']} #{b['number']} ({b['blobs_deleted']} blob(s))")


def _register_artifacts() -> None:
    from conveyor.cli import artifacts

    app.command("artifacts")(artifacts.artifacts)


def _register_publications() -> None:
    from conveyor.cli import publications

    app.command("publications")(publications.publications)


_register_artifacts()
_register_publications()
