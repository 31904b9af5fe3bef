#!/usr/bin/env python3
"""Backup and restore throughput with 100,000 builds.

Builds a source Conveyor by bulk-inserting rows (N builds of 100 jobs, two steps per
build, a job version per job) into a freshly migrated database (SQLite or
PostgreSQL), plus B finished-log blobs of S KiB in a blob folder, then measures with
the real code paths (conveyor.backup.archive):

* backup: full backup to a folder target (database snapshot + export + blobs);
* verify: checksums + trial restore into scratch SQLite;
* restore: into an empty SQLite database and an empty PostgreSQL database.

MB/s = (database file size or PostgreSQL table size + blob bytes) / seconds, i.e. the
amount of live data handled per second; the stored backup size is printed too.

Run:  /work/venv/bin/python bench/backup.py [--builds 100000] [--blobs 1000]
      [--blob-kib 100] [--database sqlite|postgresql] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import asyncpg
from sqlalchemy import insert, text

from conveyor.backup.archive import (
    BackupSources,
    create_backup,
    restore_backup,
    verify_backup,
)
from conveyor.blobs import FolderBlobStore
from conveyor.store import open_store
from conveyor.store.migrate import upgrade
from conveyor.store.schema import build_steps, builds, job_versions, jobs

JOBS = 100
BATCH = 5000
SPEC = "name: j\nstages:\n  - name: s\n    steps:\n      - sh: make test\n"


async def populate(url: str, count: int) -> None:
    store = open_store(url)
    await upgrade(store.write_engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with store.write() as conn:
            await conn.execute(
                insert(jobs),
                [
                    dict(
                        id=j + 1,
                        name=f"team-{j}/service",
                        version=1,
                        spec=SPEC,
                        priority=0,
                        next_build_number=count // JOBS + 1,
                        created_at=start,
                        updated_at=start,
                    )
                    for j in range(JOBS)
                ],
            )
            await conn.execute(
                insert(job_versions),
                [dict(job_id=j + 1, version=1, spec=SPEC, created_at=start) for j in range(JOBS)],
            )
        for first in range(0, count, BATCH):
            rows, steps = [], []
            for i in range(first, min(count, first + BATCH)):
                queued = start + timedelta(seconds=i * 10)
                rows.append(
                    dict(
                        id=i + 1,
                        job_id=i % JOBS + 1,
                        job_name=f"team-{i % JOBS}/service",
                        number=i // JOBS + 1,
                        state="succeeded" if i % 7 else "failed",
                        priority=0,
                        parameters={"BRANCH": f"feature-{i % 50}", "N": i},
                        plan={"stages": [{"name": "s", "steps": ["make", "test"]}]},
                        spec_version=1,
                        trigger="api:admin",
                        attempt=1,
                        max_attempts=1,
                        queued_at=queued,
                        started_at=queued + timedelta(seconds=1),
                        finished_at=queued + timedelta(seconds=61),
                        agent_id=None,
                        cancel_requested=False,
                        cause=None if i % 7 else "step 'sh: make test' failed with exit code 2",
                        log_size=4096,
                        log_blob=f"logs/{i // 1000:06d}/{i + 1}-bench.log",
                    )
                )
                for position, name in enumerate(("make", "test")):
                    steps.append(
                        dict(
                            build_id=i + 1,
                            key=f"s/{name}",
                            position=position,
                            stage="s",
                            name=name,
                            kind="sh",
                            state="succeeded",
                            exit_code=0,
                            attempt=1,
                            started_at=queued,
                            finished_at=queued + timedelta(seconds=30),
                        )
                    )
            async with store.write() as conn:
                await conn.execute(insert(builds), rows)
                await conn.execute(insert(build_steps), steps)
        if store.dialect == "postgresql":
            async with store.write() as conn:
                await conn.execute(text("SELECT setval('builds_id_seq', :n)"), {"n": count})
    finally:
        await store.close()


def write_blobs(folder: Path, count: int, kib: int) -> int:
    total = 0
    for i in range(count):
        path = folder / "logs" / f"{i // 1000:06d}" / f"{i + 1}-bench.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (f"build {i} line " * 4 + "\n").encode() * (kib * 1024 // 64) + os.urandom(64)
        path.write_bytes(data)
        total += len(data)
    return total


async def database_bytes(url: str) -> int:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def new_pg(admin: str) -> str:
    name = f"bench_backup_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


async def drop_pg(admin: str, url: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def mbps(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--blobs", type=int, default=1000)
    parser.add_argument("--blob-kib", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    results: dict[str, object] = {"builds": args.builds, "source": args.database}
    pg_dbs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as scratch:
        root = Path(scratch)
        if args.database == "sqlite":
            source = f"sqlite:///{root / 'source.db'}"
        else:
            source = await new_pg(args.postgres_url)
            pg_dbs.append(source)
        try:
            t = time.perf_counter()
            await populate(source, args.builds)
            blob_bytes = write_blobs(root / "blobs", args.blobs, args.blob_kib)
            results["populate_seconds"] = round(time.perf_counter() - t, 1)
            db_bytes = await database_bytes(source)
            data = db_bytes + blob_bytes
            results["database_mb"] = round(db_bytes / 1e6, 1)
            results["blob_mb"] = round(blob_bytes / 1e6, 1)

            target = FolderBlobStore(root / "backups")
            t = time.perf_counter()
            manifest = await create_backup(
                BackupSources(source, FolderBlobStore(root / "blobs")),
                target,
                "full",
                datetime.now(UTC),
            )
            took = time.perf_counter() - t
            results["backup_seconds"] = round(took, 1)
            results["backup_mb_per_s"] = round(mbps(data, took), 1)
            results["backup_stored_mb"] = round(manifest.size / 1e6, 1)
            results["rows"] = sum(manifest.row_counts.values())

            t = time.perf_counter()
            await verify_backup(target, manifest.id)
            took = time.perf_counter() - t
            results["verify_seconds"] = round(took, 1)

            t = time.perf_counter()
            await restore_backup(
                target,
                manifest.id,
                f"sqlite:///{root / 'restored.db'}",
                FolderBlobStore(root / "restored-blobs-1"),
            )
            took = time.perf_counter() - t
            results["restore_sqlite_seconds"] = round(took, 1)
            results["restore_sqlite_mb_per_s"] = round(mbps(data, took), 1)

            dest = await new_pg(args.postgres_url)
            pg_dbs.append(dest)
            t = time.perf_counter()
            await restore_backup(
                target, manifest.id, dest, FolderBlobStore(root / "restored-blobs-2")
            )
            took = time.perf_counter() - t
            results["restore_postgresql_seconds"] = round(took, 1)
            results["restore_postgresql_mb_per_s"] = round(mbps(data, took), 1)
            results["rows_per_s_restore_postgresql"] = round(int(results["rows"]) / took)  # type: ignore[call-overload]
        finally:
            for url in pg_dbs:
                await drop_pg(args.postgres_url, url)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
