"""`conveyor job ...`: apply, list, show, delete, disable, enable, rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from conveyor.cli.client import ApiClient, fail
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Manage jobs (pipelines).", no_args_is_help=True)
out = Console()


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="pipeline spec (conveyor.yml)")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create the job a spec file describes, or update it to this spec."""
    try:
        spec = file.read_text()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    client = ApiClient.from_options(url, token)
    # Validate and learn the name server-side: the spec's own name decides the job.
    created = client.http.post("/api/v1/jobs", json={"spec": spec})
    if created.status_code == 201:
        job = created.json()
        out.print(f"created job [bold]{job['name']}[/] (version {job['version']})")
        return
    if created.status_code != 409:
        client.request("POST", "/api/v1/jobs", json={"spec": spec})  # prints the problem
        return
    name = _name_of(spec)
    current = client.json("GET", f"/api/v1/jobs/{name}")
    job = client.json(
        "PUT",
        f"/api/v1/jobs/{name}",
        json={"spec": spec},
        headers={"If-Match": f'"{current["version"]}"'},
    )
    if job["version"] == current["version"]:
        out.print(f"job [bold]{name}[/] unchanged")
    else:
        out.print(f"updated job [bold]{name}[/] to version {job['version']}")


def _name_of(spec: str) -> str:
    from conveyor.core.pipeline import SpecError, parse_pipeline

    try:
        return parse_pipeline(spec).name
    except SpecError as exc:
        fail(str(exc))


@app.command("list")
def list_jobs(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """List jobs."""
    client = ApiClient.from_options(url, token)
    jobs = client.json("GET", "/api/v1/jobs")
    table = Table("name", "version", "agent", "state", "description")
    for job in jobs:
        table.add_row(
            job["name"],
            str(job["version"]),
            job["agent"] or "any",
            "disabled" if job.get("disabled") else "enabled",
            job["description"] or "",
        )
    out.print(table)


@app.command("show")
def show(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show a job's spec and versions."""
    client = ApiClient.from_options(url, token)
    job = client.json("GET", f"/api/v1/jobs/{name}")
    versions = client.json("GET", f"/api/v1/jobs/{name}/versions")
    state = " [yellow](disabled)[/]" if job.get("disabled") else ""
    out.print(
        f"[bold]{job['name']}[/]{state} version {job['version']}, updated {job['updated_at']}"
    )
    out.print(job["spec"], highlight=False, markup=False)
    out.print(f"{len(versions)} version(s): " + ", ".join(str(v["version"]) for v in versions))


@app.command("delete")
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a job with its builds, logs and artifacts."""
    if not yes:
        typer.confirm(f"Delete job {name} and all its builds?", abort=True)
    client = ApiClient.from_options(url, token)
    client.request("DELETE", f"/api/v1/jobs/{name}")
    out.print(f"deleted job [bold]{name}[/]")


@app.command("disable")
def disable(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Disable a job: it starts no builds (API, cron, polling, upstream, webhooks)."""
    client = ApiClient.from_options(url, token)
    client.json("POST", f"/api/v1/jobs/{name}/disable")
    out.print(f"job [bold]{name}[/] is disabled")


@app.command("enable")
def enable(name: str, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Enable a disabled job again."""
    client = ApiClient.from_options(url, token)
    client.json("POST", f"/api/v1/jobs/{name}/enable")
    out.print(f"job [bold]{name}[/] is enabled")


@app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="job name")],
    to: Annotated[int, typer.Option("--to", min=1, help="the version whose spec to restore")],
    force: Annotated[
        bool, typer.Option(help="admin only: also for a job managed in a config repository")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Restore the exact spec of an earlier version (as a new version)."""
    client = ApiClient.from_options(url, token)
    result = client.json(
        "POST",
        f"/api/v1/jobs/{name}/rollback",
        json={"to": to},
        params={"force": "true"} if force else None,
    )
    if result["changed"]:
        out.print(f"job [bold]{name}[/] is at version {result['version']} (the spec of v{to})")
    else:
        out.print(
            f"job [bold]{name}[/] already has the spec of v{to} (version {result['version']})"
        )
