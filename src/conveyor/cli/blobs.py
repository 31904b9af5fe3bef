"""`conveyor blobs copy`: move every log and artifact between blob stores (a folder and
an S3 bucket, either way), resumably, with checksums (docs/storage.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from conveyor.cli.client import fail

app = typer.Typer(
    help="Blob store tools: where finished logs and artifacts live (docs/storage.md).",
    no_args_is_help=True,
)
err = Console(stderr=True)


@app.callback()
def blobs() -> None:
    """Blob store tools (a group even while `copy` is its only command)."""


EXIT_MISMATCH = 1


def _folder_of(url: str) -> Path | None:
    """The folder a folder URL names (None for other URLs)."""
    if url.startswith("s3://") or ("://" in url and not url.startswith("file:")):
        return None
    if url.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(url).path))
    return Path(url).expanduser().resolve()


@app.command("copy")
def copy(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="blob store to read: PATH, file:///PATH or s3://BUCKET/PREFIX?..."
        ),
    ],
    dest: Annotated[str, typer.Option("--to", help="blob store to write (same forms)")],
    verify: Annotated[
        bool, typer.Option(help="read every copied blob back and compare its SHA-256")
    ] = False,
    prefix: Annotated[
        str, typer.Option(help="copy only keys starting with this (e.g. logs/)")
    ] = "",
    parallel: Annotated[int, typer.Option(min=1, max=64, help="blobs copied at once")] = 4,
) -> None:
    """Copy every blob (logs/, artifacts/) from one store to another.

    Resumable: keys already at the destination with the same size and SHA-256 are
    skipped, so run it again after an interruption. Exit 2 on a bad URL or an
    unreachable store, 1 if a blob did not arrive intact.
    """
    from conveyor.blobs import open_blob_store, redact_url
    from conveyor.blobs.copy import CopyReport, copy_blobs
    from conveyor.errors import ConveyorError

    folder = _folder_of(source)
    if folder is not None and not folder.is_dir():
        fail(f"--from: no such folder {folder}")
    if source.strip() == dest.strip():
        fail("--from and --to are the same store")
    stores = []
    for option, url in (("--from", source), ("--to", dest)):
        try:
            stores.append(open_blob_store(url))
        except ConveyorError as exc:
            fail(f"{option} {redact_url(url)}: {exc}")
    src, dst = stores

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("listing", total=None)

        def on_start(count: int, size: int) -> None:
            progress.update(task, description=f"{count} blobs", total=size)

        async def run() -> CopyReport:
            try:
                return await copy_blobs(
                    src,
                    dst,
                    prefix=prefix,
                    verify=verify,
                    on_start=on_start,
                    on_bytes=lambda n: progress.advance(task, n),
                    parallel=parallel,
                )
            finally:
                await src.close()
                await dst.close()

        try:
            report = asyncio.run(run())
        except ConveyorError as exc:
            progress.stop()
            fail(str(exc))
    err.print(
        f"{report.blobs} blobs from {src.describe()} to {dst.describe()}: "
        f"copied {report.copied} ({report.copied_bytes} bytes), "
        f"skipped {report.skipped} already there ({report.skipped_bytes} bytes)"
        + (f", verified {report.verified}" if verify else ""),
        highlight=False,
    )
    if report.failures:
        for failure in report.failures:
            err.print(f"[bold red]mismatch:[/] {failure}", highlight=False)
        raise typer.Exit(EXIT_MISMATCH)
