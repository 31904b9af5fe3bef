"""`conveyor build artifacts BUILD [--download DIR]`: list a build's artifacts, or
download them all, checking each one's SHA-256 and keeping their relative paths."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from conveyor.cli.client import ApiClient, _problem, fail
from conveyor.cli.options import TokenOpt, UrlOpt

out = Console()
err = Console(stderr=True)

CHUNK = 1024 * 1024


def safe_target(root: Path, path: str) -> Path:
    """Where artifact ``path`` goes under ``root``; refuses anything that would land
    outside it (absolute paths, ``..``, drive letters, backslashes, symlinks out)."""
    pure = PurePosixPath(path)
    parts = pure.parts
    if (
        not path
        or pure.is_absolute()
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in path.split("/"))
        or (parts and ":" in parts[0])
    ):
        raise ValueError(f"refusing artifact path {path!r}: it would leave the download folder")
    base = root.resolve()
    target = base.joinpath(*parts)
    if not target.resolve().is_relative_to(base):
        raise ValueError(f"refusing artifact path {path!r}: it leads outside {root}")
    return target


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _download_one(
    client: ApiClient,
    build_id: int,
    artifact: dict[str, Any],
    target: Path,
    progress: Progress,
    overall: TaskID,
) -> None:
    path = artifact["path"]
    task = progress.add_task(escape(path), total=artifact["size"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    size = 0
    url = f"/api/v1/builds/{build_id}/artifacts/{quote(path)}"
    try:
        with (
            client.http.stream("GET", url, timeout=httpx.Timeout(60.0, connect=5.0)) as response,
            tmp.open("wb") as fh,
        ):
            if response.status_code >= 400:
                response.read()
                fail(escape(_problem(response)))
            for chunk in response.iter_bytes(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress.update(task, advance=len(chunk))
                progress.update(overall, advance=len(chunk))
        if digest.hexdigest() != artifact["sha256"] or size != artifact["size"]:
            fail(
                escape(
                    f"{path}: checksum mismatch: expected sha256 {artifact['sha256']}"
                    f" ({artifact['size']} bytes), got {digest.hexdigest()} ({size} bytes)"
                )
            )
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        fail(escape(f"downloading {path} from {client.config.url}: {exc}"))
    finally:
        tmp.unlink(missing_ok=True)
        progress.remove_task(task)


def artifacts(
    build_id: Annotated[int, typer.Argument(metavar="BUILD", help="the build's id")],
    download: Annotated[
        Path | None,
        typer.Option(
            "--download",
            "-d",
            metavar="DIR",
            help="download every artifact into DIR (relative paths kept, SHA-256 checked)",
        ),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List a build's artifacts, or download them all with --download DIR."""
    client = ApiClient.from_options(url, token)
    items: list[dict[str, Any]] = client.json("GET", f"/api/v1/builds/{build_id}/artifacts")
    if download is None and not out.is_terminal:
        # For scripts: path, size in bytes, sha256; tab-separated, one artifact a line.
        for a in items:
            print(f"{a['path']}\t{a['size']}\t{a['sha256']}")
        return
    if download is None:
        table = Table()
        table.add_column("path", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("sha256", no_wrap=True, min_width=64)  # whole, to compare
        for a in items:
            table.add_row(escape(a["path"]), _size(a["size"]), a["sha256"])
        out.print(table)
        return
    if not items:
        err.print(f"build {build_id} has no artifacts")
        return
    # Check every path before writing anything.
    try:
        targets = [safe_target(download, a["path"]) for a in items]
    except ValueError as exc:
        fail(escape(str(exc)))
    download.mkdir(parents=True, exist_ok=True)
    total = sum(a["size"] for a in items)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        overall = progress.add_task(f"{len(items)} artifact(s)", total=total)
        for artifact, target in zip(items, targets, strict=True):
            # Again, now that earlier downloads may have created folders (or links).
            try:
                target = safe_target(download, artifact["path"])
            except ValueError as exc:
                fail(escape(str(exc)))
            _download_one(client, build_id, artifact, target, progress, overall)
    err.print(
        f"downloaded {len(items)} artifact(s), {_size(total)},"
        f" into {escape(str(download))} (SHA-256 verified)",
        highlight=False,
        soft_wrap=True,
    )
