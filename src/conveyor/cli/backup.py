"""`conveyor backup create|list|verify|prune`, `conveyor restore`, `conveyor store migrate`
and `conveyor drill` (docs/backup.md, docs/disaster-recovery.md).

These commands work on the database and blob store directly (like `conveyor server`),
not through a controller: they are what you run when the controller is gone.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from conveyor.backup.progress import Reporter

app = typer.Typer(
    help="Backups: create, list, verify, prune (docs/backup.md).", no_args_is_help=True
)
store_app = typer.Typer(help="Database tools (docs/backup.md).", no_args_is_help=True)
err = Console(stderr=True)
out = Console()

EXIT_ERROR = 2
EXIT_DAMAGED = 1


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


HomeOpt = Annotated[
    Path, typer.Option(envvar="CONVEYOR_HOME", help="state folder (SQLite, blobs, backups)")
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", envvar="CONVEYOR_DATABASE_URL", help="sqlite:///PATH or postgresql://..."
    ),
]
BlobDirOpt = Annotated[
    Path | None, typer.Option(envvar="CONVEYOR_BLOB_DIR", help="blob folder (default HOME/blobs)")
]
BlobUrlOpt = Annotated[
    str | None,
    typer.Option(envvar="CONVEYOR_BLOB_URL", help="blob store URL (wins over --blob-dir)"),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        "--target",
        envvar="CONVEYOR_BACKUP_TARGET",
        help="backup target: a folder or s3://BUCKET/PREFIX?... (default HOME/backups)",
    ),
]
PassphraseOpt = Annotated[
    str | None,
    typer.Option(
        envvar="CONVEYOR_BACKUP_PASSPHRASE", help="passphrase for secrets (--include-key)"
    ),
]


class RichReporter(Reporter):
    """One progress bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def stage(self, description: str, total: float | None) -> None:
        if self.task is not None:
            current = self.progress.tasks[-1]
            self.progress.update(
                self.task, total=current.completed or 1, completed=current.completed or 1
            )
        self.task = self.progress.add_task(description, total=total)

    def advance(self, amount: float) -> None:
        if self.task is not None:
            self.progress.advance(self.task, amount)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def run(make: Any, *, damaged_exit: bool = True) -> Any:
    """Run ``make(reporter)`` under a progress display; Conveyor errors become a message."""
    from conveyor.backup.manifest import BackupDamaged
    from conveyor.errors import ConveyorError

    with _progress() as progress:
        try:
            return asyncio.run(make(RichReporter(progress)))
        except BackupDamaged as exc:
            progress.stop()
            fail(str(exc), EXIT_DAMAGED if damaged_exit else EXIT_ERROR)
        except ConveyorError as exc:
            progress.stop()
            fail(str(exc))
        except (OSError, ValueError) as exc:
            progress.stop()
            fail(f"{type(exc).__name__}: {exc}")


def _settings(**values: object) -> Any:
    from pydantic import ValidationError

    from conveyor.settings import Settings

    try:
        return Settings(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        fail(str(exc))


def _blob_store(url: str, option: str) -> Any:
    from conveyor.blobs import open_blob_store, redact_url
    from conveyor.errors import ConveyorError

    try:
        return open_blob_store(url)
    except ConveyorError as exc:
        fail(f"{option} {redact_url(url)}: {exc}")


def _source_blobs(settings: Any) -> Any:
    if settings.blob_url:
        return _blob_store(settings.blob_url, "--blob-url")
    from conveyor.blobs import FolderBlobStore

    return FolderBlobStore(settings.resolved_blob_dir())


def _check_database(url: str) -> None:
    from conveyor.backup.logical import dialect_of
    from conveyor.errors import InvalidInput

    try:
        dialect_of(url)
    except InvalidInput as exc:
        fail(str(exc))


# ------------------------------------------------------------------ create


@app.command("create")
def create(
    full: Annotated[
        bool,
        typer.Option(
            "--full/--incremental",
            help="full: everything; incremental: only blobs no earlier backup holds",
        ),
    ] = True,
    to: TargetOpt = None,
    artifacts: Annotated[
        bool, typer.Option("--artifacts/--no-artifacts", help="include artifacts")
    ] = True,
    include_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--include-key",
            help="a key file (e.g. the credentials key) kept encrypted with --passphrase;"
            " repeatable",
        ),
    ] = None,
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", help="another configuration file to include; repeatable"),
    ] = None,
    passphrase: PassphraseOpt = None,
    home: HomeOpt = Path(".conveyor"),
    database: DatabaseOpt = None,
    blob_dir: BlobDirOpt = None,
    blob_url: BlobUrlOpt = None,
    trigger: Annotated[
        str, typer.Option(hidden=True, help="who started it: cli or schedule")
    ] = "cli",
) -> None:
    """Take a consistent backup while Conveyor runs: database snapshot, finished logs,
    artifacts, configuration. Workspaces are never included."""
    from conveyor.backup.archive import BackupSources
    from conveyor.backup.schedule import run_backup
    from conveyor.backup.secrets import check_passphrase
    from conveyor.errors import InvalidInput

    settings = _settings(home=home, database_url=database, blob_dir=blob_dir, blob_url=blob_url)
    url = settings.resolved_database_url()
    _check_database(url)
    secret_files = [*(include_key or [])]
    if secret_files:
        try:
            check_passphrase(passphrase)
        except InvalidInput as exc:
            fail(str(exc))
    config_files = [*(config or []), *_configured_files(settings)]
    target = _blob_store(to or settings.resolved_backup_target(), "--to")
    sources = BackupSources(
        database_url=url,
        blobs=_source_blobs(settings),
        config_files=config_files,
        secret_files=secret_files,
        passphrase=passphrase,
        artifacts=artifacts,
    )

    async def go(reporter: Reporter) -> Any:
        try:
            return await run_backup(
                sources, target, "full" if full else "incremental", trigger, reporter=reporter
            )
        finally:
            await sources.blobs.close()
            await target.close()

    manifest = run(go)
    out.print(
        f"backup {manifest.id} ({manifest.kind}"
        + (f", on {manifest.parent}" if manifest.parent else "")
        + f"): {sum(manifest.row_counts.values())} rows, {len(manifest.blobs)} blobs,"
        f" {manifest.size} bytes stored at {target.describe()}",
        highlight=False,
    )


def _configured_files(settings: Any) -> list[Path]:
    found = []
    for path in (settings.notifications_file, settings.failure_patterns_file):
        if path is not None and Path(path).is_file():
            found.append(Path(path))
    return found


# -------------------------------------------------------------- list/verify


@app.command("list")
def list_(to: TargetOpt = None, home: HomeOpt = Path(".conveyor")) -> None:
    """List the complete backups at the target, oldest first."""
    from conveyor.backup.archive import incomplete_backups, list_backups

    settings = _settings(home=home)
    target = _blob_store(to or settings.resolved_backup_target(), "--to")

    async def go(_reporter: Reporter) -> Any:
        try:
            return await list_backups(target), await incomplete_backups(target)
        finally:
            await target.close()

    backups, incomplete = run(go)
    table = Table("id", "kind", "parent", "created", "database", "rows", "blobs", "size")
    for m in backups:
        table.add_row(
            m.id,
            m.kind,
            m.parent or "",
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{m.database} {m.revision}",
            str(sum(m.row_counts.values())),
            str(len(m.blobs)),
            _size(m.size),
        )
    out.print(table)
    for backup_id in incomplete:
        err.print(f"incomplete (no manifest, ignored): {backup_id}", highlight=False)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


async def _resolve_id(target: Any, backup: str) -> str:
    if backup != "latest":
        return backup
    from conveyor.backup.archive import latest_backup

    return (await latest_backup(target)).id


@app.command("verify")
def verify(
    backup: Annotated[str, typer.Argument(help="backup id, or latest")] = "latest",
    to: TargetOpt = None,
    home: HomeOpt = Path(".conveyor"),
) -> None:
    """Check every file's size and SHA-256, then restore into a scratch SQLite store.
    Exit 1 if the backup is damaged."""
    from conveyor.backup.archive import verify_backup

    settings = _settings(home=home)
    target = _blob_store(to or settings.resolved_backup_target(), "--to")

    async def go(reporter: Reporter) -> Any:
        try:
            return await verify_backup(target, await _resolve_id(target, backup), reporter)
        finally:
            await target.close()

    report = run(go)
    out.print(
        f"backup {report.backup_id} is intact: {report.files_checked} files"
        f" ({report.bytes_checked} bytes) match their checksums; trial restore loaded"
        f" {sum(report.rows_restored.values())} rows",
        highlight=False,
    )


@app.command("prune")
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would go")] = False,
    keep_weekly: Annotated[
        int | None, typer.Option(min=1, help="weekly full backups to keep (default 4)")
    ] = None,
    keep_incremental_days: Annotated[
        int | None, typer.Option(min=0, help="days to keep incrementals (default 30)")
    ] = None,
    to: TargetOpt = None,
    home: HomeOpt = Path(".conveyor"),
) -> None:
    """Delete backups the retention policy no longer keeps (never one a kept backup needs)."""
    from conveyor.backup.archive import prune_backups
    from conveyor.core.backup_retention import BackupRetention

    settings = _settings(home=home)
    policy = BackupRetention(
        keep_weekly_fulls=keep_weekly or settings.backup_keep_weekly_fulls,
        keep_incremental_days=keep_incremental_days
        if keep_incremental_days is not None
        else settings.backup_keep_incremental_days,
    )
    target = _blob_store(to or settings.resolved_backup_target(), "--to")

    async def go(_reporter: Reporter) -> Any:
        try:
            return await prune_backups(target, policy, datetime.now(UTC), dry_run=dry_run)
        finally:
            await target.close()

    decision = run(go)
    for backup_id in decision.keep:
        out.print(f"keep    {backup_id}  ({decision.reasons[backup_id]})", highlight=False)
    verb = "would delete" if dry_run else "deleted"
    for backup_id in decision.delete:
        out.print(f"{verb:<7} {backup_id}", highlight=False)
    out.print(f"{len(decision.keep)} kept, {len(decision.delete)} {verb}", highlight=False)


# ----------------------------------------------------------------- restore


def restore(
    backup: Annotated[str, typer.Argument(help="backup id at --from, or latest")],
    database: Annotated[
        str, typer.Option("--database", help="where to restore: sqlite:///PATH or postgresql://...")
    ],
    blobs: Annotated[
        str | None,
        typer.Option(help="blob store to restore logs and artifacts into: DIR or s3://..."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            envvar="CONVEYOR_BACKUP_TARGET",
            help="where the backups are (default HOME/backups)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace the contents of a non-empty database")
    ] = False,
    files_to: Annotated[
        Path | None,
        typer.Option(help="folder to write the backed-up configuration and secrets into"),
    ] = None,
    passphrase: PassphraseOpt = None,
    home: HomeOpt = Path(".conveyor"),
) -> None:
    """Restore a backup into an empty database and blob store (checked before any write)."""
    from conveyor.backup.archive import restore_backup

    _check_database(database)
    settings = _settings(home=home)
    target = _blob_store(source or settings.resolved_backup_target(), "--from")
    dest = _blob_store(blobs, "--blobs") if blobs else None

    async def go(reporter: Reporter) -> Any:
        try:
            return await restore_backup(
                target,
                await _resolve_id(target, backup),
                database,
                dest,
                force=force,
                files_to=files_to,
                passphrase=passphrase,
                reporter=reporter,
            )
        finally:
            await target.close()
            if dest is not None:
                await dest.close()

    report = run(go)
    out.print(
        f"restored backup {report.backup_id}: {sum(report.rows.values())} rows,"
        f" {report.blobs} blobs ({report.blob_bytes} bytes)"
        + (f", {len(report.files_written)} files into {files_to}" if report.files_written else ""),
        highlight=False,
    )


# ------------------------------------------------------------ store migrate


@store_app.callback()
def store_group() -> None:
    """Database tools."""


@store_app.command("migrate")
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="database to copy: sqlite:///PATH or postgresql://...")
    ],
    dest: Annotated[str, typer.Option("--to", help="empty database to copy into")],
    force: Annotated[
        bool, typer.Option("--force", help="replace the contents of a non-empty --to database")
    ] = False,
) -> None:
    """Move Conveyor's database (e.g. a one-machine SQLite onto a cluster's PostgreSQL),
    then compare every table's row count. Stop the controllers first. Blobs stay where
    they are (`conveyor blobs copy` moves them)."""
    from conveyor.backup.migrate import migrate_store

    _check_database(source)
    _check_database(dest)
    if source.strip() == dest.strip():
        fail("--from and --to are the same database")
    report = run(lambda reporter: migrate_store(source, dest, force=force, reporter=reporter))
    table = Table("table", "rows at --from", "rows at --to")
    for name, count in sorted(report.source_counts.items()):
        table.add_row(name, str(count), str(report.dest_counts.get(name, 0)))
    out.print(table)
    if report.mismatches:
        fail("row counts differ: " + ", ".join(report.mismatches), EXIT_DAMAGED)
    out.print(f"moved {sum(report.source_counts.values())} rows; every table's count matches")


# ------------------------------------------------------------------- drill


def drill(
    rto: Annotated[float, typer.Option(help="recovery time objective, seconds")] = 120,
    rpo: Annotated[float, typer.Option(help="recovery point objective, seconds")] = 86400,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            envvar="CONVEYOR_BACKUP_TARGET",
            help="where the backups are (default HOME/backups)",
        ),
    ] = None,
    backup: Annotated[str, typer.Option(help="backup id to drill with")] = "latest",
    workdir: Annotated[
        Path | None, typer.Option(help="scratch folder (default: a temporary one, removed)")
    ] = None,
    home: HomeOpt = Path(".conveyor"),
) -> None:
    """Disaster-recovery drill: restore a backup into a scratch database and blob folder,
    start a controller and an agent on it, run a smoke build, compare row counts with the
    backup, and print the measured RTO and RPO. Exit 1 when over a target."""
    from conveyor.backup.drill import run_drill

    settings = _settings(home=home)
    target = _blob_store(source or settings.resolved_backup_target(), "--from")

    async def go(reporter: Reporter) -> Any:
        try:
            return await run_drill(
                target,
                backup,
                workdir=workdir,
                reporter=reporter,
                log=lambda m: err.print(m, highlight=False),
            )
        finally:
            await target.close()

    result = run(go, damaged_exit=False)
    for line in result.lines():
        out.print(line, highlight=False)
    over = []
    if result.rto_seconds > rto:
        over.append(f"RTO {result.rto_seconds:.1f}s is over the {rto:g}s target")
    if result.rpo_seconds is not None and result.rpo_seconds > rpo:
        over.append(f"RPO {result.rpo_seconds:.0f}s is over the {rpo:g}s target")
    if result.count_mismatches:
        over.append("row counts differ from the backup: " + ", ".join(result.count_mismatches))
    if over:
        fail("drill failed: " + "; ".join(over), EXIT_DAMAGED)
    out.print("drill passed", highlight=False)
