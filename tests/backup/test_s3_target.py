"""Backups kept in S3 (a real local OpenStack Swift s3api server, as the blob tests use):
full + incremental to s3://, list, verify, restore into PostgreSQL with the blobs going
into another S3 prefix, and a damaged object caught."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from conveyor.blobs import open_blob_store
from tests.backup.conftest import Source, blob_files, logical_rows, run_cli
from tests.blobs.conftest import S3Server
from tests.blobs.conftest import s3_server as s3_server
from tests.conftest import run_sync


async def _s3_files(url: str) -> dict[str, bytes]:
    store = open_blob_store(url)
    try:
        return {
            key: b"".join([c async for c in store.stream(key)]) async for key, _ in store.list()
        }
    finally:
        await store.close()


def test_backup_to_s3_and_restore_from_it(
    sqlite_source: Source,
    s3_server: S3Server,
    tmp_path: Path,
    new_pg: Any,
) -> None:
    target = s3_server.url(f"backups-{uuid.uuid4().hex[:8]}")
    before_rows, before_blobs = (
        logical_rows(sqlite_source.database_url),
        blob_files(sqlite_source.blob_dir),
    )
    common = [
        "--home",
        str(sqlite_source.home),
        "--database",
        sqlite_source.database_url,
        "--blob-dir",
        str(sqlite_source.blob_dir),
    ]
    full = run_cli("backup", "create", "--to", target, *common)
    assert full.returncode == 0, full.stderr
    incremental = run_cli("backup", "create", "--incremental", "--to", target, *common)
    assert incremental.returncode == 0, incremental.stderr
    full_id, inc_id = full.stdout.split()[1], incremental.stdout.split()[1]

    listed = run_cli("backup", "list", "--to", target)
    assert listed.returncode == 0 and full_id in listed.stdout and inc_id in listed.stdout
    verified = run_cli("backup", "verify", inc_id, "--to", target)
    assert verified.returncode == 0, verified.stderr

    stored = run_sync(_s3_files(target))
    manifest = json.loads(stored[f"{inc_id}/manifest.json"])
    assert not any(f.startswith("objects/") for f in manifest["files"])  # nothing new

    database = new_pg()
    blobs = s3_server.url(f"restored-{uuid.uuid4().hex[:8]}")
    done = run_cli("restore", inc_id, "--from", target, "--database", database, "--blobs", blobs)
    assert done.returncode == 0, done.stderr
    after_rows = logical_rows(database)
    for table, rows in before_rows.items():
        if table != "backup_runs":  # the two backups above recorded themselves
            assert after_rows[table] == rows, table
    assert run_sync(_s3_files(blobs)) == before_blobs

    # A flipped byte in an object at the S3 target: verify and restore refuse it.
    key = next(k for k in stored if k.startswith(f"{full_id}/objects/"))
    data = bytearray(stored[key])
    data[0] ^= 0xFF
    bucket_prefix = target.split("?")[0].split("/", 3)[3]
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{bucket_prefix}/{key}", Body=bytes(data)
    )  # type: ignore[attr-defined]
    damaged = run_cli("backup", "verify", inc_id, "--to", target)
    assert damaged.returncode == 1 and "is corrupt" in damaged.stderr
    again = run_cli(
        "restore",
        inc_id,
        "--from",
        target,
        "--database",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--blobs",
        str(tmp_path / "b"),
    )
    assert again.returncode == 1 and not (tmp_path / "x.db").exists()
