#!/usr/bin/env python3
"""Retention benchmark: how long the build-history retention queries take on a large
history, on PostgreSQL or SQLite.

Fills a throwaway database with JOBS x BUILDS finished builds (bulk insert, a log
size per build, every 10th build with an artifact row), then measures:

* ``history_snapshot`` pages of 500 (the loop's unit of work): first page and a deep
  page (cursor past half the history);
* the policy over one page (``plan_history``, pure);
* ``delete_build`` of builds beyond a keep-last-100 policy (one transaction each).

Run:  PYTHONPATH=src /work/venv/bin/python bench/retention.py [--jobs 200]
      [--builds 1000] [--database postgresql|sqlite] [--postgres-url URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from conveyor.core.retention import RetentionPolicy, plan_history
from conveyor.store import open_store
from conveyor.store.history import delete_build, history_snapshot
from conveyor.store.migrate import upgrade
from conveyor.store.schema import artifacts, builds, jobs

SPEC = "name: {name}\nstages:\n  - name: s\n    steps:\n      - sh: 'true'\n"


async def fill(store: object, n_jobs: int, per_job: int) -> None:
    now = datetime.now(UTC)
    async with store.write() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            jobs.insert(),
            [
                {
                    "name": f"job-{j}",
                    "version": 1,
                    "spec": SPEC.format(name=f"job-{j}"),
                    "priority": 0,
                    "next_build_number": per_job,
                    "created_at": now,
                    "updated_at": now,
                }
                for j in range(n_jobs)
            ],
        )
    build_id = 0
    for j in range(n_jobs):
        rows, files = [], []
        for n in range(1, per_job + 1):
            build_id += 1
            finished = now - timedelta(minutes=(per_job - n) * 30)
            rows.append(
                {
                    "id": build_id,
                    "job_id": j + 1,
                    "job_name": f"job-{j}",
                    "number": n,
                    "state": "succeeded" if n % 7 else "failed",
                    "priority": 0,
                    "parameters": {},
                    "plan": {"stages": []},
                    "spec_version": 1,
                    "trigger": "bench",
                    "queued_at": finished,
                    "started_at": finished,
                    "finished_at": finished,
                    "log_size": 4096,
                    "log_blob": f"logs/{build_id}.log",
                }
            )
            if n % 10 == 0:
                files.append(
                    {
                        "build_id": build_id,
                        "path": "dist/app.tar.gz",
                        "size": 1_000_000,
                        "sha256": "0" * 64,
                        "content_type": "application/gzip",
                        "blob_key": f"artifacts/{build_id}/dist/app.tar.gz",
                        "created_at": finished,
                    }
                )
        async with store.write() as conn:  # type: ignore[attr-defined]
            await conn.execute(builds.insert(), rows)
            if files:
                await conn.execute(artifacts.insert(), files)
    if getattr(store, "dialect", "") == "postgresql":
        async with store.write() as conn:  # type: ignore[attr-defined]
            await conn.exec_driver_sql(
                "SELECT setval('builds_id_seq', (SELECT max(id) FROM builds))"
            )
            await conn.exec_driver_sql("ANALYZE")


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
    }


async def measure(url: str, n_jobs: int, per_job: int) -> dict[str, object]:
    store = open_store(url)
    await upgrade(store.write_engine)
    t = time.perf_counter()
    await fill(store, n_jobs, per_job)
    fill_s = time.perf_counter() - t
    total = n_jobs * per_job
    first, deep, plan = [], [], []
    now = datetime.now(UTC)
    policy = RetentionPolicy(keep_last=100, keep_days=None)
    for _ in range(5):
        t = time.perf_counter()
        snap = await history_snapshot(store, 500, 0)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        await history_snapshot(store, 500, total // 2)
        deep.append(time.perf_counter() - t)
        t = time.perf_counter()
        going = plan_history(snap, now, policy).delete
        plan.append(time.perf_counter() - t)
    deletes = []
    for d in going[:200]:
        t = time.perf_counter()
        await delete_build(store, d.build_id)
        deletes.append(time.perf_counter() - t)
    await store.close()
    return {
        "builds": total,
        "jobs": n_jobs,
        "fill_seconds": round(fill_s, 1),
        "snapshot_first_page": ms(first),
        "snapshot_deep_page": ms(deep),
        "plan_one_page": ms(plan),
        "delete_build": ms(deletes) | {"count": len(deletes)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--builds", type=int, default=1000, help="builds per job")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.database == "sqlite":
        folder = tempfile.mkdtemp(prefix="bench-retention-")
        result = await measure(f"sqlite:///{folder}/conveyor.db", args.jobs, args.builds)
    else:
        name = f"bench_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(args.postgres_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = args.postgres_url.rsplit("/", 1)[0] + "/" + name
            result = await measure(url, args.jobs, args.builds)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()
    result["database"] = args.database
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
