#!/usr/bin/env python3
"""History benchmark: API latency with a long build history.

Fills a fresh store (SQLite file by default, ``--database postgresql://...`` for a
throwaway PostgreSQL database) with ``--builds`` builds (default 1,000,000) over
``--jobs`` jobs (default 1,000), inserted straight into the tables with SQLAlchemy
Core ``executemany`` in batches. The distribution is skewed like a real
installation: a few jobs hold most builds (Zipf-like weights), ~86 % succeeded,
~10 % failed, some cancelled/timed out, a handful queued or running at the end.

Then it measures p50/p95/p99 of: the job list, a big job's builds (first page and a
deep page by cursor), all builds (first and deep page), a failed-builds filter, a
build's detail, the failed builds of the job with the fewest builds, the queue and
the ``/ui/`` dashboard, in one of two modes:

- ``--controllers 0`` (the default): in-process, the real FastAPI app over httpx
  ``ASGITransport``; no network, so the figures are the app's own time.
- ``--controllers N`` (N >= 1): after the fill, N real controllers are started as
  processes on the filled database and every request goes through real HTTP. N = 1:
  one ``python -m conveyor server`` (SQLite or PostgreSQL); N > 1 (PostgreSQL only):
  ``conveyor cluster up`` without agents, N controllers behind nginx, which spreads the
  requests round-robin (bench/dispatch.py's ``start_cluster``; every process is stopped
  by PID at the end, also on Ctrl-C or SIGTERM).

``--clients 1,4`` runs everything once per count: that many clients (own keep-alive
connections) call the endpoint at the same time, ``--repeat`` calls each. Per endpoint
the record holds p50/p95/p99, requests/s and the serving side's CPU ms per request
(the controllers' processes; in-process: this whole process, client included), the
load-independent figure. For every endpoint the slowest SQL statement is recorded (in
HTTP mode from a few extra in-process calls on the same database); ``--explain`` prints
its plan (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite).

Run:  /work/venv/bin/python bench/history.py [--builds 1000000] [--jobs 1000]
      [--database sqlite|postgresql://...] [--controllers 0|1|N] [--clients 1,4]
      [--repeat 50] [--explain] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from _paths import use_this_tree
from dispatch import (
    RESULTS_DIR,
    BenchError,
    Processes,
    console,
    create_pg_database,
    drop_pg_database,
    machine_info,
    redact,
    sigterm_as_interrupt,
    start_cluster,
    stats_ms,
)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from sqlalchemy import event, insert, update

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.schema import builds, jobs

BATCH = 10_000
PROBE_CALLS = 5  # HTTP mode: in-process calls per endpoint that name its slowest SQL
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
    smallest = min(numbers, key=lambda n: numbers[n])
    return {
        "biggest_job": biggest,
        "biggest_job_builds": numbers[biggest],
        "smallest_job": smallest,
        "smallest_job_builds": numbers[smallest],
    }


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


ClientFactory = Callable[[], httpx.AsyncClient]


@dataclass
class Target:
    """Where the timed requests go, and what is known about the server's side."""

    mode: str  # "in-process" or "http"
    controllers: int  # 0 in-process
    make_client: ClientFactory
    #: CPU seconds so far of whatever serves the requests: the controllers' processes
    #: (HTTP), or this process (in-process: client and app together).
    cpu_seconds: Callable[[], float]
    #: In-process mode: the timer sees the requests' own statements. HTTP mode: after the
    #: timed calls, a few in-process calls over the same database name the slowest SQL.
    timer: SqlTimer
    probe: ClientFactory | None = None
    url: str | None = None


def endpoint_table(
    job: str, small: str, ids: list[int], deep_job: int, deep_all: int
) -> dict[str, Any]:
    return {
        "job list": ("/api/v1/jobs", {}),
        "job builds, first page": (f"/api/v1/jobs/{job}/builds", {}),
        "job builds, deep page": (f"/api/v1/jobs/{job}/builds", {"cursor": deep_job}),
        "all builds, first page": ("/api/v1/builds", {}),
        "all builds, deep page": ("/api/v1/builds", {"cursor": deep_all}),
        "failed builds": ("/api/v1/builds", {"state": "failed"}),
        "job's failed builds": (f"/api/v1/jobs/{job}/builds", {"state": "failed"}),
        # A job with few builds: its failures are not found by walking the newest ids.
        "small job's failed builds": (f"/api/v1/jobs/{small}/builds", {"state": "failed"}),
        "build detail": (f"/api/v1/builds/{ids[len(ids) // 2]}", {}),
        "build by number": (f"/api/v1/jobs/{job}/builds/1", {}),
        "queue": ("/api/v1/queue", {}),
        "dashboard /ui/": ("/ui/", {}),
    }


async def _get_ok(client: httpx.AsyncClient, label: str, path: str, params: Any) -> None:
    answer = await client.get(path, params=params)
    if answer.status_code != 200:
        raise BenchError(f"{label}: GET {path} -> {answer.status_code} {answer.text[:300]}")


async def time_endpoint(
    clients: list[httpx.AsyncClient],
    label: str,
    path: str,
    params: Any,
    repeat: int,
    warm: int,
) -> tuple[list[float], float]:
    """Every client warms up (``warm`` calls), then all make ``repeat`` timed calls at the
    same time, each waiting for its answer before the next. Returns (latencies, wall s)."""
    await asyncio.gather(*(_get_ok(c, label, path, params) for c in clients for _ in range(warm)))

    async def one(client: httpx.AsyncClient) -> list[float]:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            answer = await client.get(path, params=params)
            times.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise BenchError(f"{label}: GET {path} -> {answer.status_code}")
        return times

    started = time.perf_counter()
    per_client = await asyncio.gather(*(one(c) for c in clients))
    return [t for times in per_client for t in times], time.perf_counter() - started


async def measure(
    target: Target,
    runtime: Runtime,
    facts: dict[str, Any],
    repeat: int,
    client_counts: list[int],
    want_explain: bool,
) -> list[dict[str, Any]]:
    """One run per number of concurrent clients; every endpoint in turn."""
    job = facts["biggest_job"]
    async with target.make_client() as client:
        first = (await client.get(f"/api/v1/jobs/{job}/builds", params={"limit": 50})).json()
        ids = [b["id"] for b in first["items"]]
        # A deep page: 90 % down the job's history (ids are global, so ask the store).
        deep_job_cursor = await _deep_cursor(client, f"/api/v1/jobs/{job}/builds", depth=0.9)
        all_first = (await client.get("/api/v1/builds")).json()["items"]
        deep_all_cursor = max(1, int(all_first[0]["id"] * 0.1))
    small = facts["smallest_job"]
    endpoints = endpoint_table(job, small, ids, deep_job_cursor, deep_all_cursor)
    plans: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    for count in client_counts:
        console.print(
            f"  [bold]{count} client(s)[/], {target.mode}"
            + (f", {target.controllers} controller(s) at {target.url}" if target.url else "")
        )
        out: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(target.make_client()) for _ in range(count)]
            for label, (path, params) in endpoints.items():
                target.timer.current = []
                cpu0 = target.cpu_seconds()
                # Warm caches and statement caches of every controller (round-robin).
                warm = 3 * max(1, target.controllers)
                times, wall = await time_endpoint(clients, label, path, params, repeat, warm)
                cpu = target.cpu_seconds() - cpu0
                if target.probe is not None:  # name the slowest SQL (HTTP mode)
                    target.timer.current = []
                    async with target.probe() as probe:
                        for _ in range(PROBE_CALLS):
                            await _get_ok(probe, label, path, params)
                slowest = max(target.timer.current, default=(0.0, "", None), key=lambda t: t[0])
                row: dict[str, Any] = {
                    "path": path,
                    "params": params,
                    "ms": stats_ms(times),
                    "requests_per_s": round(len(times) / wall, 1),
                    # Load-independent: what one request costs the server side.
                    "cpu_ms_per_request": round(1000 * cpu / len(times), 2),
                    "slowest_sql_ms": round(slowest[0] * 1000, 2),
                    "slowest_sql_where": "in-process probe" if target.probe else "the requests",
                    "slowest_sql": " ".join(slowest[1].split())[:400],
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                }
                if want_explain and slowest[1] and label not in plans:
                    plans[label] = await explain(runtime, slowest[1], slowest[2])
                    row["plan"] = plans[label]
                    console.print(f"[dim]{row['slowest_sql'][:200]}\n{row['plan']}[/]")
                out[label] = row
                ms = row["ms"]
                console.print(
                    f"  {label:24} p50 {ms['p50']:7.2f}  p95 {ms['p95']:7.2f}"
                    f"  p99 {ms['p99']:7.2f} ms  {row['requests_per_s']:6.1f} req/s"
                    f"  CPU {row['cpu_ms_per_request']:6.2f} ms/req"
                    f"  SQL {row['slowest_sql_ms']} ms  load {row['loadavg'][0]}",
                    soft_wrap=True,
                )
        runs.append({"clients": count, "endpoints": out})
    return runs


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


def _cpu_of(pids: list[int]) -> Callable[[], float]:
    processes = [psutil.Process(pid) for pid in pids]

    def used() -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                t = process.cpu_times()
                total += t.user + t.system
        return total

    return used


async def start_target(
    controllers: int,
    args: argparse.Namespace,
    runtime: Runtime,
    timer: SqlTimer,
    database_url: str,
    home: Path,
    processes: Processes,
) -> Target:
    token = runtime.first_admin_token
    assert token is not None, "a fresh store has a first admin token"
    app = create_app(runtime, run_loops=False)

    def in_process() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://conveyor.bench",
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )

    if controllers == 0:
        return Target("in-process", 0, in_process, _cpu_of([os.getpid()]), timer)
    # Real controllers on the filled database: `conveyor server` (1) or `conveyor cluster
    # up` (N behind nginx, which spreads the requests round-robin).
    cluster = await asyncio.to_thread(
        start_cluster,
        processes,
        home,
        database_url,
        0,
        1,
        args.log_level,
        controllers,
        token,
    )
    pids = [p.popen.pid for p in processes.procs if p.name == "controller"]
    pids += [pid for name, pid in processes.external if name.startswith("controller")]
    console.print(f"  controllers {pids} at {cluster.url}")

    def over_http() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=cluster.url,
            headers={"Authorization": f"Bearer {cluster.token}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
        )

    return Target("http", controllers, over_http, _cpu_of(pids), timer, in_process, cluster.url)


async def run(
    args: argparse.Namespace, database_url: str, home: Path, processes: Processes
) -> dict[str, Any]:
    """Fill once, then measure once per ``--controllers`` count (processes stopped between):
    {"fill_seconds", facts..., "by_controllers": {count: runs}}."""
    runtime = Runtime.build(Settings(home=home, database_url=database_url))
    try:
        await runtime.prepare()
        started = time.monotonic()
        facts = await fill(runtime, args.jobs, args.builds, args.seed)
        fill_s = time.monotonic() - started
        console.print(f"  inserted {args.builds} builds in {fill_s:.1f} s; {facts}")
        timer = SqlTimer()
        timer.attach(runtime)
        by_controllers: dict[int, list[dict[str, Any]]] = {}
        for count in args.controllers:
            try:
                target = await start_target(
                    count, args, runtime, timer, database_url, home, processes
                )
                by_controllers[count] = await measure(
                    target, runtime, facts, args.repeat, args.clients, args.explain
                )
            finally:
                await asyncio.to_thread(processes.stop_all)
        return {"fill_seconds": round(fill_s, 1), **facts, "by_controllers": by_controllers}
    finally:
        await runtime.stop()


def _counts(text: str, minimum: int = 1) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < minimum:
        raise argparse.ArgumentTypeError(f"counts must be at least {minimum}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    parser.add_argument(
        "--controllers",
        type=lambda text: _counts(text, minimum=0),
        default=[0],
        help="0: in-process (default); 1: one `conveyor server`; N > 1: `conveyor cluster up` "
        "(PostgreSQL), N controllers behind nginx. A list (1,3) measures each on one fill",
    )
    parser.add_argument(
        "--clients",
        type=_counts,
        default=[1],
        help="concurrent clients, one run each: e.g. 1,4",
    )
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per endpoint/client")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--explain", action="store_true", help="print the slowest SQL's plan")
    parser.add_argument("--log-level", default="warning", help="the controllers' log level")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.builds < 1000 or args.jobs < 1 or args.repeat < 1:
        parser.error("--builds >= 1000, --jobs >= 1, --repeat >= 1")
    db_kind = "sqlite" if args.database == "sqlite" else "postgresql"
    if max(args.controllers) > 1 and db_kind == "sqlite":
        parser.error("--controllers > 1 needs --database postgresql://... (one shared database)")
    use_this_tree()
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-history-"))
    machine = machine_info()
    processes = Processes()
    pg_name: str | None = None
    postgres: dict[str, Any] = {}
    with sigterm_as_interrupt():
        try:
            if db_kind == "postgresql":
                pg_name, url, facts = create_pg_database(args.database)
                postgres = {"server": redact(args.database), **facts}
            else:
                url = f"sqlite:///{home / 'conveyor.db'}"
            result = asyncio.run(run(args, url, home, processes))
        except BenchError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]: every process was stopped")
            return 130
        finally:
            processes.stop_all()
            if pg_name is not None:
                drop_pg_database(args.database, pg_name)
            shutil.rmtree(home, ignore_errors=True)
    by_controllers = result.pop("by_controllers")
    # One record per controller count (they share the fill): mode and count on each.
    for count, runs in by_controllers.items():
        mode = "in-process" if count == 0 else "http"
        record: dict[str, Any] = {
            "benchmark": "history",
            "machine": machine,
            "database": db_kind,
            "mode": mode,
            "controllers": count,
            "parameters": {
                "builds": args.builds,
                "jobs": args.jobs,
                "repeat": args.repeat,
                "clients": args.clients,
                "controllers": count,
            },
            **({"postgres": postgres} if postgres else {}),
            **result,
            "runs": runs,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        }
        suffix = "" if mode == "in-process" else f"-http-{count}c"
        path = args.json or RESULTS_DIR / f"history-{db_kind}{suffix}.json"
        if args.json and len(by_controllers) > 1:
            path = path.with_name(f"{path.stem}{suffix or '-in-process'}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
