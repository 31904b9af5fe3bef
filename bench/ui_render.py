#!/usr/bin/env python3
"""Web UI render-time benchmark: server-side time of the dashboard, a job page and a
build page with 100,000 builds in the history.

A temporary store (SQLite by default, or a throwaway PostgreSQL database with
``--database postgresql``) is migrated and filled with --builds finished builds
(3 steps each) over --jobs jobs, spread over the last 30 days, plus a few running
and queued ones and one build with a --log-mb MB compacted log. Then each page is
requested --requests times in process through the real FastAPI app (routing,
authentication, store queries, Jinja2 rendering; no network) and the p50/p95/max
are printed, with the p95 of the CPU time the process spent per request (all its
threads: on SQLite that includes the database's work), which shows what a page
costs even on a busy machine. The dashboard's trend charts are recomputed in the background every
15 s (pages show the last ones), so their computation is reported separately, as
is the log viewer's first tail window of the big log (which counts its lines once)
and a later one.

Run:  PYTHONPATH=src /work/venv/bin/python bench/ui_render.py [--builds 100000]
      [--jobs 50] [--requests 200] [--log-mb 100] [--database sqlite|postgresql]
      [--postgres-url URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.schema import build_steps, builds, job_versions, jobs
from conveyor.web import routes_ui

SPEC = """name: {name}
parameters:
  - name: TARGET
    type: choice
    choices: [staging, production]
    default: staging
stages:
  - name: build
    steps:
      - sh: make
  - name: test
    steps:
      - sh: make test
      - sh: make lint
"""
RESULTS = ["succeeded"] * 8 + ["failed", "cancelled"]
BATCH = 5_000
console = Console(stderr=True)


def _job_name(i: int) -> str:
    return f"team-{i % 5}/service-{i}"


async def fill(runtime: Runtime, total: int, job_count: int, log_mb: int) -> int:
    """Insert the history straight into the tables (fast), returns the big-log build id."""
    now = runtime.clock()
    names = [_job_name(i) for i in range(job_count)]
    async with runtime.store.write() as conn:
        await conn.execute(
            jobs.insert(),
            [
                {
                    "name": n,
                    "version": 1,
                    "spec": SPEC.format(name=n),
                    "priority": 0,
                    "next_build_number": 0,
                    "created_at": now - timedelta(days=31),
                    "updated_at": now - timedelta(days=31),
                }
                for n in names
            ],
        )
        rows = (await conn.execute(jobs.select().with_only_columns(jobs.c.id, jobs.c.name))).all()
    job_ids = {r.name: r.id for r in rows}
    async with runtime.store.write() as conn:
        await conn.execute(
            job_versions.insert(),
            [
                {
                    "job_id": job_ids[n],
                    "version": 1,
                    "spec": SPEC.format(name=n),
                    "created_at": now - timedelta(days=31),
                    "author": "bench",
                }
                for n in names
            ],
        )
    rng = random.Random(7)
    numbers = dict.fromkeys(names, 0)
    span = timedelta(days=30).total_seconds()
    with Progress(
        TextColumn("filling the store"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("fill", total=total)
        next_id = 1
        for start in range(0, total, BATCH):
            count = min(BATCH, total - start)
            build_rows: list[dict[str, Any]] = []
            step_rows: list[dict[str, Any]] = []
            for k in range(count):
                i = start + k
                name = names[rng.randrange(job_count)]
                numbers[name] += 1
                queued = now - timedelta(seconds=span * (1 - i / total) + 60)
                started = queued + timedelta(seconds=rng.uniform(0.5, 20))
                finished = started + timedelta(seconds=rng.uniform(5, 600))
                active = i >= total - 3
                state = "running" if active else rng.choice(RESULTS)
                build_rows.append(
                    {
                        "id": next_id,
                        "job_id": job_ids[name],
                        "job_name": name,
                        "number": numbers[name],
                        "state": state,
                        "priority": 0,
                        "parameters": {"TARGET": "staging"},
                        "plan": {},
                        "spec_version": 1,
                        "trigger": "bench",
                        "attempt": 1,
                        "max_attempts": 1,
                        "lost_retries": 1,
                        "queued_at": queued,
                        "assigned_at": queued,
                        "started_at": started,
                        "finished_at": None if active else finished,
                        "cancel_requested": False,
                        "cause": "step test/make lint failed" if state == "failed" else None,
                        "log_size": 0,
                    }
                )
                for pos, (stage, step) in enumerate(
                    [("build", "make"), ("test", "make test"), ("test", "make lint")]
                ):
                    step_rows.append(
                        {
                            "build_id": next_id,
                            "key": f"{pos}.0",
                            "position": pos,
                            "stage": stage,
                            "name": f"sh: {step}",
                            "kind": "sh",
                            "state": "running" if active and pos == 2 else "succeeded",
                            "exit_code": None if active else 0,
                            "attempt": 1,
                            "started_at": started + timedelta(seconds=pos),
                            "finished_at": None if active else started + timedelta(seconds=pos + 1),
                        }
                    )
                next_id += 1
            async with runtime.store.write() as conn:
                await conn.execute(builds.insert(), build_rows)
                await conn.execute(build_steps.insert(), step_rows)
            progress.advance(task, count)
        async with runtime.store.write() as conn:
            for name, number in numbers.items():
                await conn.execute(
                    jobs.update().where(jobs.c.name == name).values(next_build_number=number)
                )
    if runtime.store.dialect == "postgresql":
        async with runtime.store.write() as conn:
            await conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('builds', 'id'), "
                "(SELECT max(id) FROM builds))"
            )
            await conn.exec_driver_sql("ANALYZE")
    # One finished build with a big compacted log (the log viewer's worst case).
    line = b"\x1b[32mINFO\x1b[0m compiling module %d of the big project, all is well\n"
    blob = b"".join(line % i for i in range(1, 400_000))
    repeat = max(1, (log_mb * 1024 * 1024) // len(blob))
    key = "logs/bench-big.log"
    await runtime.blobs.put_stream(key, _chunks(blob, repeat))
    size = len(blob) * repeat
    big = total - 10
    async with runtime.store.write() as conn:
        await conn.execute(
            builds.update().where(builds.c.id == big).values(log_blob=key, log_size=size)
        )
    return big


async def _chunks(blob: bytes, repeat: int) -> Any:
    for _ in range(repeat):
        yield blob


def _ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": p95 * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def measure(runtime: Runtime, big: int, requests: int) -> dict[str, Any]:
    app = create_app(runtime, run_loops=False)
    headers = {"Authorization": f"Bearer {runtime.first_admin_token}"}
    transport = httpx.ASGITransport(app=app)
    busiest = _job_name(0)
    pages = {
        "dashboard": "/ui/",
        "job page": f"/ui/jobs/{busiest}",
        "job page, older history": f"/ui/jobs/{busiest}?cursor=50000",
        "build page": f"/ui/builds/{big}",
        "jobs list": "/ui/jobs",
    }
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://b", headers=headers) as c:
        cpu: dict[str, list[float]] = {}

        async def timed(path: str) -> float:
            started, cpu_started = time.perf_counter(), time.process_time()
            r = await c.get(path)
            elapsed = time.perf_counter() - started
            # CPU of this process, all threads (SQLite runs in aiosqlite's threads):
            # what a request costs, whatever else the machine is doing.
            cpu.setdefault(path, []).append(time.process_time() - cpu_started)
            if r.status_code != 200:
                raise SystemExit(f"{path} answered {r.status_code}: {r.text[:300]}")
            return elapsed

        trend_times = []
        for _ in range(5):
            started = time.perf_counter()
            await routes_ui._compute_trends(runtime)
            trend_times.append(time.perf_counter() - started)
        results["trend charts (background, every 15 s)"] = _ms(trend_times)
        for name, path in pages.items():
            for _ in range(5):
                await timed(path)  # warm up connections and template caches
            cpu.pop(path, None)
            results[name] = _ms([await timed(path) for _ in range(requests)])
            results[name]["cpu_p95_ms"] = _ms(cpu[path])["p95_ms"]
        results["log tail of the big log, first (counts lines)"] = {
            "p50_ms": (await timed(f"/ui/builds/{big}/log-window")) * 1000
        }
        results["log tail of the big log"] = _ms(
            [await timed(f"/ui/builds/{big}/log-window") for _ in range(requests)]
        )
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="conveyor-ui-bench-"))
    pg_name = None
    if args.database == "postgresql":
        pg_name = f"bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(args.postgres_url)
        await conn.execute(f'CREATE DATABASE "{pg_name}"')
        await conn.close()
        url = args.postgres_url.rsplit("/", 1)[0] + "/" + pg_name
    else:
        url = f"sqlite:///{home / 'conveyor.db'}"
    now = datetime.now(UTC)
    runtime = Runtime.build(Settings(home=home, database_url=url), lambda: now)
    try:
        await runtime.prepare()
        started = time.perf_counter()
        big = await fill(runtime, args.builds, args.jobs, args.log_mb)
        console.print(f"filled in {time.perf_counter() - started:.1f} s")
        results = await measure(runtime, big, args.requests)
    finally:
        await runtime.stop()
        if pg_name is not None:
            conn = await asyncpg.connect(args.postgres_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await conn.close()
    return {
        "database": args.database,
        "builds": args.builds,
        "jobs": args.jobs,
        "requests_per_page": args.requests,
        "log_mb": args.log_mb,
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--builds", type=int, default=100_000)
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--log-mb", type=int, default=100)
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    report = asyncio.run(run(args))
    table = Table(title=f"UI server render time, {args.builds:,} builds, {args.database}")
    for column in ("page", "p50 ms", "p95 ms", "max ms", "CPU p95 ms"):
        table.add_column(column, justify="left" if column == "page" else "right")
    for name, figures in report["results"].items():
        table.add_row(
            name,
            *(
                f"{figures[k]:.1f}" if k in figures else "–"
                for k in ("p50_ms", "p95_ms", "max_ms", "cpu_p95_ms")
            ),
        )
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
