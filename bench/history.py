#!/usr/bin/env python3
"""History benchmark: API latency with a long build history.

Fills a fresh store (SQLite file by default, ``--database postgresql://...`` for a
throwaway PostgreSQL database) with ``--builds`` builds (default 1,000,000) over
``--jobs`` jobs (default 1,000), inserted straight into the tables with SQLAlchemy
Core ``executemany`` in batches. The distribution is skewed like a real
installation: a few jobs hold most builds (Zipf-like weights), ~86 % succeeded,
~10 % failed, some cancelled/timed out, a handful queued or running at the end.

Then it measures p50/p95 through the real FastAPI app (in-process, httpx
``ASGITransport``; no network, so the figures are the controller's own time) of:
the job list, a big job's builds (first page and a deep page by cursor), all
builds (first and deep page), a failed-builds filter, a build's detail, the
queue and the ``/ui/`` dashboard. For every endpoint the slowest SQL statement
is recorded; ``--explain`` prints its plan (EXPLAIN ANALYZE on PostgreSQL,
EXPLAIN QUERY PLAN on SQLite).

Run:  /work/venv/bin/python bench/history.py [--builds 1000000] [--jobs 1000]
      [--database sqlite|postgresql://...] [--repeat 50] [--explain] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from dispatch import (
    RESULTS_DIR,
    BenchError,
    console,
    create_pg_database,
    drop_pg_database,
    machine_info,
    redact,
    stats_ms,
)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from sqlalchemy import event, insert, update

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.schema import builds, jobs

BATCH = 10_000
STATES = [("succeeded", 86.0), ("failed", 10.0), ("cancelled", 2.5), ("timed_out", 1.0)]
STATES += [("lost", 0.5)]
TRIGGERS = ["scm:push", "api:alice", "cron", "webhook:github", "upstream"]
PLAN = {"stages": [{"name": "build", "steps": [{"key": "build/0", "sh": "make test"}]}]}


def job_spec(name: str) -> str:
    return f"name: {name}\nstages:\n  - name: build\n    steps:\n      - sh: make test\n"


async def fill(runtime: Runtime, n_jobs: int, n_builds: int, seed: int) -> dict[str, Any]:
    """Insert jobs and builds; returns facts the measurements need."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    names = [f"team-{i % 40:02d}/service-{i:04d}" for i in range(n_jobs)]
    # Zipf-like popularity: job k gets weight 1/(k+1)^0.8.
    weights = [1 / (k + 1) ** 0.8 for k in range(n_jobs)]
    async with runtime.store.write() as conn:
        await conn.execute(
            insert(jobs),
            [
                {
                    "name": name,
                    "version": 1,
                    "spec": job_spec(name),
                    "description": None,
                    "label_expression": None,
                    "concurrency": None,
                    "priority": 0,
                    "next_build_number": 0,
                    "created_at": start,
                    "updated_at": start,
                }
                for name in names
            ],
        )
        job_ids = {r.name: r.id for r in (await conn.execute(jobs.select())).all()}
    numbers: dict[str, int] = defaultdict(int)
    states = [s for s, _ in STATES]
    state_weights = [w for _, w in STATES]
    step = (now - start) / max(1, n_builds)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("inserting builds", total=n_builds)
        done = 0
        while done < n_builds:
            rows = []
            for i in range(done, min(n_builds, done + BATCH)):
                name = rng.choices(names, weights)[0]
                numbers[name] += 1
                queued = start + step * i
                tail = n_builds - i
                state = (
                    "queued"
                    if tail <= 20
                    else "running"
                    if tail <= 40
                    else rng.choices(states, state_weights)[0]
                )
                finished = state not in ("queued", "running")
                rows.append(
                    {
                        "job_id": job_ids[name],
                        "job_name": name,
                        "number": numbers[name],
                        "state": state,
                        "priority": 0,
                        "label_expression": None,
                        "parameters": {},
                        "plan": PLAN,
                        "spec_version": 1,
                        "trigger": rng.choice(TRIGGERS),
                        "attempt": 1,
                        "max_attempts": 1,
                        "lost_retries": 1,
                        "retry_of": None,
                        "queued_at": queued,
                        "assigned_at": None if state == "queued" else queued,
                        "started_at": None if state == "queued" else queued,
                        "finished_at": queued + timedelta(seconds=rng.randint(5, 900))
                        if finished
                        else None,
                        "agent_id": None,
                        "assignment_id": None,
                        "cancel_requested": False,
                        "cause": None if state == "succeeded" else "step failed",
                        "log_size": rng.randint(1_000, 500_000),
                        "log_blob": None,
                        "failure_category": None,
                        "failure_detail": None,
                        "pinned": False,
                    }
                )
            async with runtime.store.write() as conn:
                await conn.execute(insert(builds), rows)
            done += len(rows)
            progress.update(task, completed=done)
    async with runtime.store.write() as conn:
        for name, count in numbers.items():
            await conn.execute(
                update(jobs).where(jobs.c.name == name).values(next_build_number=count)
            )
    if runtime.store.dialect == "postgresql":
        async with runtime.store.write() as conn:
            await conn.exec_driver_sql("ANALYZE")
    biggest = max(numbers, key=lambda n: numbers[n])
    return {"biggest_job": biggest, "biggest_job_builds": numbers[biggest]}


class SqlTimer:
    """Every SQL statement's time, so a slow endpoint names its slow query."""

    def __init__(self) -> None:
        self.current: list[tuple[float, str, Any]] = []
        self._started: dict[int, float] = {}

    def attach(self, runtime: Runtime) -> None:
        engines = {id(e): e for e in (runtime.store.read_engine, runtime.store.write_engine)}
        for engine in engines.values():
            event.listen(engine.sync_engine, "before_cursor_execute", self._before)
            event.listen(engine.sync_engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            self.current.append((time.perf_counter() - started, statement, params))


async def explain(runtime: Runtime, statement: str, params: Any) -> str:
    prefix = (
        "EXPLAIN (ANALYZE, BUFFERS) "
        if runtime.store.dialect == "postgresql"
        else "EXPLAIN QUERY PLAN "
    )
    async with runtime.store.read() as conn:
        rows = (await conn.exec_driver_sql(prefix + statement, params)).all()
    return "\n".join(" | ".join(str(c) for c in r) for r in rows)


async def measure(
    runtime: Runtime, facts: dict[str, Any], repeat: int, want_explain: bool
) -> dict[str, Any]:
    token = runtime.first_admin_token
    app = create_app(runtime, run_loops=False)
    timer = SqlTimer()
    timer.attach(runtime)
    job = facts["biggest_job"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.bench",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as client:
        first = (await client.get(f"/api/v1/jobs/{job}/builds", params={"limit": 50})).json()
        ids = [b["id"] for b in first["items"]]
        # A deep page: 90 % down the job's history (ids are global, so ask the store).
        deep_job_cursor = await _deep_cursor(client, f"/api/v1/jobs/{job}/builds", depth=0.9)
        all_first = (await client.get("/api/v1/builds")).json()["items"]
        deep_all_cursor = max(1, int(all_first[0]["id"] * 0.1))
        endpoints: dict[str, tuple[str, dict[str, Any]]] = {
            "job list": ("/api/v1/jobs", {}),
            "job builds, first page": (f"/api/v1/jobs/{job}/builds", {}),
            "job builds, deep page": (f"/api/v1/jobs/{job}/builds", {"cursor": deep_job_cursor}),
            "all builds, first page": ("/api/v1/builds", {}),
            "all builds, deep page": ("/api/v1/builds", {"cursor": deep_all_cursor}),
            "failed builds": ("/api/v1/builds", {"state": "failed"}),
            "job's failed builds": (f"/api/v1/jobs/{job}/builds", {"state": "failed"}),
            "build detail": (f"/api/v1/builds/{ids[len(ids) // 2]}", {}),
            "build by number": (f"/api/v1/jobs/{job}/builds/1", {}),
            "queue": ("/api/v1/queue", {}),
            "dashboard /ui/": ("/ui/", {}),
        }
        out: dict[str, Any] = {}
        for label, (path, params) in endpoints.items():
            for _ in range(3):  # warm caches and the statement cache
                warm = await client.get(path, params=params)
            if warm.status_code != 200:
                raise BenchError(f"{label}: GET {path} -> {warm.status_code} {warm.text[:300]}")
            times: list[float] = []
            slowest: tuple[float, str, Any] = (0.0, "", None)
            for _ in range(repeat):
                timer.current = []
                started = time.perf_counter()
                r = await client.get(path, params=params)
                times.append(time.perf_counter() - started)
                r.raise_for_status()
                for item in timer.current:
                    if item[0] > slowest[0]:
                        slowest = item
            row: dict[str, Any] = {
                "path": path,
                "params": params,
                "ms": stats_ms(times),
                "slowest_sql_ms": round(slowest[0] * 1000, 2),
                "slowest_sql": " ".join(slowest[1].split())[:400],
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            if want_explain and slowest[1]:
                row["plan"] = await explain(runtime, slowest[1], slowest[2])
            out[label] = row
            console.print(
                f"  {label:26} p50 {row['ms']['p50']:8.2f} ms  p95 {row['ms']['p95']:8.2f} ms"
                f"   slowest SQL {row['slowest_sql_ms']} ms   load {row['loadavg'][0]}"
            )
            if want_explain and "plan" in row:
                console.print(f"[dim]{row['slowest_sql'][:200]}\n{row['plan']}[/]")
    return out


async def _deep_cursor(client: httpx.AsyncClient, path: str, depth: float) -> int:
    """The id of a build ``depth`` down a job's history, by walking pages of 500."""
    cursor: int | None = None
    seen: list[int] = []
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get(path, params=params)).json()
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return seen[min(len(seen) - 1, int(len(seen) * depth))]


async def run(args: argparse.Namespace, database_url: str, home: Path) -> dict[str, Any]:
    runtime = Runtime.build(Settings(home=home, database_url=database_url))
    try:
        await runtime.prepare()
        started = time.monotonic()
        facts = await fill(runtime, args.jobs, args.builds, args.seed)
        fill_s = time.monotonic() - started
        console.print(f"  inserted {args.builds} builds in {fill_s:.1f} s; {facts}")
        results = await measure(runtime, facts, args.repeat, args.explain)
        return {"fill_seconds": round(fill_s, 1), **facts, "endpoints": results}
    finally:
        await runtime.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per endpoint")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--explain", action="store_true", help="print the slowest SQL's plan")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.builds < 1000 or args.jobs < 1 or args.repeat < 1:
        parser.error("--builds >= 1000, --jobs >= 1, --repeat >= 1")
    db_kind = "sqlite" if args.database == "sqlite" else "postgresql"
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-history-"))
    record: dict[str, Any] = {
        "benchmark": "history",
        "machine": machine_info(),
        "database": db_kind,
        "parameters": {"builds": args.builds, "jobs": args.jobs, "repeat": args.repeat},
    }
    pg_name: str | None = None
    try:
        if db_kind == "postgresql":
            pg_name, url, facts = create_pg_database(args.database)
            record["postgres"] = {"server": redact(args.database), **facts}
        else:
            url = f"sqlite:///{home / 'conveyor.db'}"
        record.update(asyncio.run(run(args, url, home)))
    except BenchError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        if pg_name is not None:
            drop_pg_database(args.database, pg_name)
    record["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = args.json or RESULTS_DIR / f"history-{db_kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
