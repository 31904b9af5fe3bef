"""`conveyor retention run [--dry-run]`: what the retention policies delete (builds
whole, or only their artifacts) and the space that frees."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from conveyor.cli.client import ApiClient
from conveyor.cli.options import TokenOpt, UrlOpt

app = typer.Typer(help="Build, log and artifact retention.", no_args_is_help=True)
out = Console()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@app.command("run")
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only show what would be deleted")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON answer")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Apply the retention policies now (on the leader), or show what they would delete."""
    client = ApiClient.from_options(url, token)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        transient=True,
        console=Console(stderr=True),  # stdout stays the answer alone
    ) as progress:
        progress.add_task("reading the build history" if dry_run else "applying retention")
        if dry_run:
            answer = client.json("GET", "/api/v1/retention/preview")
        else:
            answer = client.json("POST", "/api/v1/retention/run")
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    if not dry_run:
        out.print(
            f"freed {_size(answer['bytes_freed'])}: {_size(answer['history_bytes_freed'])} "
            f"from deleted builds, {_size(answer['artifact_bytes_freed'])} of artifacts",
            highlight=False,
        )
        return
    for b in answer["builds"]:
        out.print(
            f"delete build {escape(b['job'])} #{b['number']} "
            f"({_size(b['log_bytes'])} log, {_size(b['artifact_bytes'])} artifacts): "
            f"{escape(b['reason'])}",
            highlight=False,
            soft_wrap=True,
        )
    for a in answer["artifacts"]:
        out.print(
            f"delete artifacts of {escape(a['job'])} #{a['number']} "
            f"({_size(a['artifact_bytes'])}): {escape(a['reason'])}",
            highlight=False,
            soft_wrap=True,
        )
    more = " (more in later passes)" if answer["partial"] else ""
    out.print(
        f"would delete {len(answer['builds'])} builds and the artifacts of "
        f"{len(answer['artifacts'])} more, freeing {_size(answer['bytes_freed'])}{more}",
        highlight=False,
    )
