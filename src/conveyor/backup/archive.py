"""Backups at a target: create (full or incremental), list, verify, restore, prune.

The layout and the manifest are described in :mod:`conveyor.backup.manifest`. Order
of work, and why:

* create: database snapshot first, then blobs. Every blob the snapshot refers to
  existed when the snapshot was taken (logs and artifacts are written before the rows
  that name them), so a restore never has a row pointing at a missing blob; blobs
  written later are extra, harmless. The manifest is written last.
* restore: everything is checked first (manifest checksum, every file's size and
  SHA-256), then the database is loaded in one transaction, then the blobs are
  written. A damaged backup therefore fails before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as token_source
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor import __version__
from conveyor.backup import logical
from conveyor.backup.manifest import (
    MANIFEST,
    MANIFEST_SUM,
    BackupDamaged,
    BlobEntry,
    FileEntry,
    Manifest,
    digest,
    object_path,
)
from conveyor.backup.progress import QUIET, Reporter
from conveyor.backup.secrets import seal, unseal
from conveyor.blobs import BlobStore, FolderBlobStore
from conveyor.blobs.copy import sha256_of
from conveyor.core.backup_retention import BackupRetention, Kind, PruneDecision, decide
from conveyor.errors import InvalidInput, NotFound

PARALLEL = 4
#: Blobs up to this size are read once into memory (hash, then store); bigger ones are
#: hashed in a first streaming pass and copied in a second, only if needed.
IN_MEMORY = 16 * 1024 * 1024


@dataclass(frozen=True)
class BackupSources:
    """What a backup is taken from."""

    database_url: str
    blobs: BlobStore
    config_files: Sequence[Path] = ()
    #: Files kept only encrypted (needs ``passphrase``), e.g. the credentials key file.
    secret_files: Sequence[Path] = ()
    passphrase: str | None = None
    artifacts: bool = True


# ----------------------------------------------------------------- listing


async def list_backups(target: BlobStore) -> list[Manifest]:
    """Complete backups at ``target`` (those with a manifest), oldest first."""
    ids = [key.split("/")[0] async for key, _ in target.list() if _is_manifest_key(key)]
    manifests = [await read_manifest(target, backup_id) for backup_id in ids]
    return sorted(manifests, key=lambda m: (m.created_at, m.id))


async def incomplete_backups(target: BlobStore) -> list[str]:
    """Folders at ``target`` without a manifest (a backup interrupted mid-way)."""
    folders: set[str] = set()
    complete: set[str] = set()
    async for key, _ in target.list():
        if "/" in key:
            folders.add(key.split("/")[0])
            if _is_manifest_key(key):
                complete.add(key.split("/")[0])
    return sorted(folders - complete)


def _is_manifest_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 2 and parts[1] == MANIFEST


async def read_manifest(target: BlobStore, backup_id: str) -> Manifest:
    try:
        raw = await _read_all(target, f"{backup_id}/{MANIFEST}")
    except NotFound as exc:
        raise NotFound(
            f"no backup {backup_id!r} at {target.describe()} (or it is incomplete:"
            f" {MANIFEST} is missing)"
        ) from exc
    try:
        expected = (await _read_all(target, f"{backup_id}/{MANIFEST_SUM}")).decode().strip()
    except NotFound:
        raise BackupDamaged(backup_id, [f"{MANIFEST_SUM} is missing"]) from None
    if digest(raw) != expected:
        raise BackupDamaged(backup_id, [f"{MANIFEST} does not match its checksum"])
    return Manifest.from_bytes(raw, backup_id)


async def latest_backup(target: BlobStore) -> Manifest:
    backups = await list_backups(target)
    if not backups:
        raise NotFound(f"no backup at {target.describe()}")
    return backups[-1]


async def _read_all(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.stream(key)])


# ------------------------------------------------------------------ create


def new_backup_id(kind: Kind, now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{kind}-{token_source.token_hex(3)}"


async def create_backup(
    sources: BackupSources,
    target: BlobStore,
    kind: Kind,
    now: datetime,
    reporter: Reporter = QUIET,
) -> Manifest:
    """Take a backup of ``sources`` into ``target``. An incremental backup with no
    earlier backup at the target becomes a full one."""
    if sources.secret_files and not sources.passphrase:
        raise InvalidInput("including secrets needs a passphrase (--passphrase)")
    for path in (*sources.config_files, *sources.secret_files):
        if not path.is_file():
            raise InvalidInput(f"no such file to back up: {path}")
    parent: Manifest | None = None
    if kind == "incremental":
        existing = await list_backups(target)
        if existing:
            parent = existing[-1]
        else:
            kind = "full"
    manifest = Manifest(
        id=new_backup_id(kind, now),
        kind=kind,
        parent=parent.id if parent else None,
        created_at=now,
        database=logical.dialect_of(sources.database_url),
        revision=None,
        conveyor_version=__version__,
        artifacts=sources.artifacts,
        source_blobs=sources.blobs.describe(),
    )
    with tempfile.TemporaryDirectory(prefix="conveyor-backup-") as scratch:
        reporter.stage("database snapshot", None)
        export = await logical.export_database(
            sources.database_url, Path(scratch), lambda _t, n: reporter.advance(n)
        )
        manifest.revision = export.revision
        manifest.row_counts = export.row_counts
        files = sorted(export.files.items())
        reporter.stage("database upload", sum(p.stat().st_size for _, p in files))
        for table, path in files:
            await _put_file(target, manifest, f"db/{table}.jsonl.gz", path, reporter)
    await _backup_blobs(sources, target, manifest, parent, reporter)
    for path in sources.config_files:
        await _put_bytes(target, manifest, f"config/{path.name}", path.read_bytes())
        manifest.config.append(path.name)
    for path in sources.secret_files:
        sealed = seal(path.name, path.read_bytes(), sources.passphrase or "")
        await _put_bytes(target, manifest, f"secrets/{path.name}.sealed", sealed)
        manifest.secrets.append(path.name)
    raw = manifest.to_bytes()
    await target.put_bytes(f"{manifest.id}/{MANIFEST_SUM}", digest(raw).encode() + b"\n")
    await target.put_bytes(f"{manifest.id}/{MANIFEST}", raw)  # last: the backup now exists
    return manifest


async def _put_file(
    target: BlobStore, manifest: Manifest, name: str, path: Path, reporter: Reporter
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, 1024 * 1024):
                reporter.advance(len(chunk))
                yield chunk

    stored = await target.put_stream(f"{manifest.id}/{name}", chunks())
    manifest.files[name] = FileEntry(stored.size, stored.sha256)


async def _put_bytes(target: BlobStore, manifest: Manifest, name: str, data: bytes) -> None:
    stored = await target.put_bytes(f"{manifest.id}/{name}", data)
    manifest.files[name] = FileEntry(stored.size, stored.sha256)


async def _backup_blobs(
    sources: BackupSources,
    target: BlobStore,
    manifest: Manifest,
    parent: Manifest | None,
    reporter: Reporter,
) -> None:
    known: dict[str, str] = {}  # sha256 -> backup holding it
    if parent is not None:
        known = {entry.sha256: entry.holder for entry in parent.blobs.values()}
    items = [
        (key, size)
        async for key, size in sources.blobs.list()
        if sources.artifacts or not key.startswith("artifacts/")
    ]
    reporter.stage("blobs", sum(size for _, size in items))
    todo = iter(items)
    storing: dict[str, asyncio.Event] = {}

    async def one(key: str, listed: int) -> None:
        try:
            if listed <= IN_MEMORY:
                data = await _read_all(sources.blobs, key)
                size, sha = len(data), digest(data)
            else:
                data = None
                size, sha = await sha256_of(sources.blobs, key)
        except NotFound:
            reporter.advance(listed)
            return  # deleted since it was listed (retention): not part of this backup
        holder = known.get(sha)
        if holder is None and sha in storing:
            await storing[sha].wait()
            holder = manifest.id
        if holder is None:
            storing[sha] = asyncio.Event()
            name = object_path(sha)
            if data is not None:
                stored = await target.put_bytes(f"{manifest.id}/{name}", data)
            else:
                stored = await target.put_stream(f"{manifest.id}/{name}", sources.blobs.stream(key))
            if stored.sha256 != sha:
                raise InvalidInput(
                    f"blob {key} changed while it was backed up; run the backup again"
                )
            manifest.files[name] = FileEntry(stored.size, stored.sha256)
            storing[sha].set()
            holder = manifest.id
        manifest.blobs[key] = BlobEntry(sha, size, holder)
        reporter.advance(listed)

    async def worker() -> None:
        for key, size in todo:
            await one(key, size)

    await asyncio.gather(*(worker() for _ in range(PARALLEL)))


# ------------------------------------------------------------------ verify


@dataclass
class VerifyReport:
    backup_id: str
    files_checked: int = 0
    bytes_checked: int = 0
    rows_restored: dict[str, int] = field(default_factory=dict)


async def check_files(
    target: BlobStore,
    manifest: Manifest,
    reporter: Reporter = QUIET,
    keep_db_in: Path | None = None,
) -> VerifyReport:
    """Read every file the backup needs (its own and the blobs its ancestors hold) and
    compare sizes and SHA-256s. ``keep_db_in``: also save the table exports there.
    Raises ``BackupDamaged`` listing every problem."""
    report = VerifyReport(manifest.id)
    problems: list[str] = []
    wanted: dict[str, FileEntry] = {f"{manifest.id}/{n}": e for n, e in manifest.files.items()}
    holders: dict[str, Manifest] = {manifest.id: manifest}
    for key, blob in manifest.blobs.items():
        if blob.holder not in holders:
            try:
                holders[blob.holder] = await read_manifest(target, blob.holder)
            except (NotFound, BackupDamaged) as exc:
                problems.append(f"blob {key} is in backup {blob.holder}, which is unusable: {exc}")
                holders[blob.holder] = Manifest(
                    blob.holder, "full", None, manifest.created_at, "", None, ""
                )
                continue
        name = object_path(blob.sha256)
        entry = holders[blob.holder].files.get(name)
        if entry is None or entry.sha256 != blob.sha256:
            problems.append(f"blob {key}: backup {blob.holder} does not list {name}")
            continue
        wanted[f"{blob.holder}/{name}"] = entry
    for table in manifest.row_counts:
        if f"db/{table}.jsonl.gz" not in manifest.files:
            problems.append(f"table {table} has no export file in the manifest")
    reporter.stage("checksums", sum(e.size for e in wanted.values()))
    todo = iter(sorted(wanted.items()))

    async def one(key: str, entry: FileEntry) -> None:
        sink = None
        if keep_db_in is not None and key.startswith(f"{manifest.id}/db/"):
            sink = (keep_db_in / key.rsplit("/", 1)[1]).open("wb")
        try:
            size, sha = await _hash_stream(target, key, sink)
        except NotFound:
            problems.append(f"{key} is missing")
            reporter.advance(entry.size)
            return
        finally:
            if sink is not None:
                sink.close()
        if size != entry.size or sha != entry.sha256:
            problems.append(
                f"{key} is corrupt (sha256 {sha[:12]}…, {size} bytes; manifest says"
                f" {entry.sha256[:12]}…, {entry.size} bytes)"
            )
        report.files_checked += 1
        report.bytes_checked += size
        reporter.advance(entry.size)

    async def worker() -> None:
        for key, entry in todo:
            await one(key, entry)

    await asyncio.gather(*(worker() for _ in range(PARALLEL)))
    if problems:
        raise BackupDamaged(manifest.id, sorted(problems))
    return report


async def _hash_stream(store: BlobStore, key: str, sink: object | None) -> tuple[int, str]:
    import hashlib

    h = hashlib.sha256()
    size = 0
    async for chunk in store.stream(key):
        h.update(chunk)
        size += len(chunk)
        if sink is not None:
            await asyncio.to_thread(sink.write, chunk)  # type: ignore[attr-defined]
    return size, h.hexdigest()


def _table_files(folder: Path, manifest: Manifest) -> dict[str, Path]:
    return {table: folder / f"{table}.jsonl.gz" for table in manifest.row_counts}


async def verify_backup(
    target: BlobStore, backup_id: str, reporter: Reporter = QUIET
) -> VerifyReport:
    """Checksums of every file, then a trial restore into a scratch SQLite database
    whose row counts must match the manifest's."""
    manifest = await read_manifest(target, backup_id)
    with tempfile.TemporaryDirectory(prefix="conveyor-verify-") as scratch:
        folder = Path(scratch)
        report = await check_files(target, manifest, reporter, keep_db_in=folder)
        reporter.stage("trial restore", sum(manifest.row_counts.values()))
        try:
            loaded = await logical.import_database(
                f"sqlite:///{folder / 'trial.db'}",
                _table_files(folder, manifest),
                on_rows=lambda _t, n: reporter.advance(n),
            )
        except Exception as exc:
            raise BackupDamaged(backup_id, [f"trial restore failed: {exc}"]) from exc
    wrong = {
        t: (loaded.get(t, 0), n) for t, n in manifest.row_counts.items() if loaded.get(t, 0) != n
    }
    if wrong:
        raise BackupDamaged(
            backup_id,
            [
                f"table {t}: {got} rows restored, manifest says {want}"
                for t, (got, want) in wrong.items()
            ],
        )
    report.rows_restored = loaded
    return report


# ----------------------------------------------------------------- restore


@dataclass
class RestoreReport:
    backup_id: str
    rows: dict[str, int]
    blobs: int
    blob_bytes: int
    files_written: list[Path]


async def restore_backup(
    target: BlobStore,
    backup_id: str,
    database_url: str,
    blobs: BlobStore | None,
    *,
    force: bool = False,
    files_to: Path | None = None,
    passphrase: str | None = None,
    reporter: Reporter = QUIET,
) -> RestoreReport:
    """Restore a backup into an empty database (any kind) and blob store. Everything is
    checked before anything is written; ``force`` replaces a non-empty database's rows."""
    manifest = await read_manifest(target, backup_id)
    if manifest.secrets and files_to is not None and not passphrase:
        raise InvalidInput("the backup holds encrypted secrets: give --passphrase to restore them")
    if blobs is None and manifest.blobs:
        raise InvalidInput(
            f"backup {backup_id} holds {len(manifest.blobs)} blobs: say where they go (--blobs)"
        )
    with tempfile.TemporaryDirectory(prefix="conveyor-restore-") as scratch:
        folder = Path(scratch)
        await check_files(target, manifest, reporter, keep_db_in=folder)
        secrets: dict[str, bytes] = {}
        if files_to is not None:
            for name in manifest.secrets:  # unseal before writing: a wrong passphrase stops here
                sealed = await _read_all(target, f"{backup_id}/secrets/{name}.sealed")
                secrets[name] = unseal(name, sealed, passphrase or "")
        reporter.stage("database", sum(manifest.row_counts.values()))
        rows = await logical.import_database(
            database_url,
            _table_files(folder, manifest),
            force=force,
            on_rows=lambda _t, n: reporter.advance(n),
        )
    copied = 0
    if blobs is not None:
        reporter.stage("blobs", sum(b.size for b in manifest.blobs.values()))
        copied = await _restore_blobs(target, manifest, blobs, reporter)
    written: list[Path] = []
    if files_to is not None:
        files = {n: await _read_all(target, f"{backup_id}/config/{n}") for n in manifest.config}
        written = await asyncio.to_thread(_write_files, files_to, files, secrets)
    return RestoreReport(backup_id, rows, len(manifest.blobs), copied, written)


def _write_files(folder: Path, config: dict[str, bytes], secrets: dict[str, bytes]) -> list[Path]:
    """Configuration files as they were; secrets readable by their owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for files, mode in ((config, 0o644), (secrets, 0o600)):
        for name, data in files.items():
            path = folder / name
            path.touch(mode=mode)
            path.chmod(mode)
            path.write_bytes(data)
            written.append(path)
    return written


async def _restore_blobs(
    target: BlobStore, manifest: Manifest, dest: BlobStore, reporter: Reporter
) -> int:
    todo = iter(sorted(manifest.blobs.items()))
    total = 0

    async def worker() -> None:
        nonlocal total
        for key, blob in todo:
            stored = await dest.put_stream(
                key, target.stream(f"{blob.holder}/{object_path(blob.sha256)}")
            )
            if stored.sha256 != blob.sha256:
                raise BackupDamaged(manifest.id, [f"blob {key} changed while restoring"])
            total += stored.size
            reporter.advance(stored.size)

    await asyncio.gather(*(worker() for _ in range(PARALLEL)))
    return total


# ------------------------------------------------------------------- prune


async def prune_backups(
    target: BlobStore,
    policy: BackupRetention,
    now: datetime,
    *,
    dry_run: bool = False,
    on_delete: Callable[[str], None] | None = None,
) -> PruneDecision:
    backups = await list_backups(target)
    decision = decide([m.info for m in backups], policy, now)
    # Folders without a manifest (a backup killed mid-way, a delete interrupted) go
    # too once a day old: a backup still being written is younger than that.
    stale = [
        folder
        for folder in await incomplete_backups(target)
        if (started := backup_time(folder)) is not None and now - started > INCOMPLETE_AGE
    ]
    if not dry_run:
        for backup_id in (*decision.delete, *stale):
            await delete_backup(target, backup_id)
            if on_delete is not None:
                on_delete(backup_id)
    return PruneDecision(decision.keep, (*decision.delete, *stale), decision.reasons)


INCOMPLETE_AGE = timedelta(days=1)


def backup_time(backup_id: str) -> datetime | None:
    """When a backup started, from its id (None if the name is not a backup id)."""
    try:
        return datetime.strptime(backup_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


async def delete_backup(target: BlobStore, backup_id: str) -> None:
    # The manifest goes first: from then on the backup is invisible (incomplete), never
    # a listed backup with missing files.
    await target.delete(f"{backup_id}/{MANIFEST}")
    keys = [key async for key, _ in target.list(f"{backup_id}/")]
    for key in keys:
        await target.delete(key)
    if isinstance(target, FolderBlobStore):  # a folder keeps empty directories behind
        await asyncio.to_thread(_remove_empty_tree, target.path_of(backup_id))


def _remove_empty_tree(folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):  # not empty: something new was written
                path.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
