#!/usr/bin/env python3
"""Log benchmark: a build that prints 100 MB as fast as it can, and a live tail.

Starts a real controller and one real agent (``python -m conveyor server`` /
``agent``, SQLite by default, ``--database postgresql://...`` for a throwaway
PostgreSQL database) and runs two builds:

(a) **ingest**: one step writes ``--megabytes`` MB (default 100) of 100-byte
    lines to stdout as fast as Python can. Ingest MB/s = the build's final
    ``log_size`` / (its ``finished_at`` - ``started_at``), from the controller's
    own timestamps; the RSS of controller and agent is sampled every 0.2 s
    (max reported) and their CPU over the build is reported. The stored log
    size is checked against what the step printed (nothing acknowledged lost).
(b) **live tail**: one step prints ``tick <unix time>`` every 50 ms for
    ``--tail-seconds`` s while a follower reads ``GET /api/v1/builds/{id}/log/stream``
    (server-sent events); the latency of each tick is the follower's clock at
    arrival minus the time printed (same host, same clock).
(c) with ``--tail-during-ingest``: (b) again while (a) runs on the other executor
    (the follower's latency when the controller is busy ingesting and compacting).

Run:  /work/venv/bin/python bench/logs.py [--megabytes 100] [--tail-seconds 10]
      [--database sqlite|postgresql://...] [--tail-during-ingest] [--json PATH]
      [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from _paths import use_this_tree
from dispatch import (
    RESULTS_DIR,
    BenchError,
    Cluster,
    Processes,
    console,
    create_pg_database,
    drop_pg_database,
    machine_info,
    profiling,
    redact,
    start_cluster,
    stats_ms,
)

LINE = 100  # bytes per printed line, newline included


def flood_spec(megabytes: int) -> str:
    lines = megabytes * 1_000_000 // LINE
    script = (
        "import sys; w = sys.stdout.buffer.write; "
        f"line = b'x' * {LINE - 1} + b'\\n'; block = line * 10000; "
        f"[w(block) for _ in range({lines // 10000})]; "
        f"w(line * {lines % 10000}); sys.stdout.flush()"
    )
    return f"""\
name: bench-flood
agent: bench
stages:
  - name: flood
    steps:
      - sh: {json.dumps(f"python3 -c {_sh_quote(script)}")}
"""


def ticker_spec(seconds: float) -> str:
    script = (
        "import time, sys\n"
        f"end = time.time() + {seconds}\n"
        "while time.time() < end:\n"
        "    print(f'tick {time.time():.6f}', flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    return f"""\
name: bench-ticker
agent: bench
stages:
  - name: tick
    steps:
      - sh: {json.dumps(f"python3 -c {_sh_quote(script)}")}
"""


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _log_blob_exists(home: Path, build_id: int) -> bool:
    """The compacted log's blob (``logs/NNNNNN/<id>-<uuid>.log`` under a blob folder)."""
    pattern = f"logs/{build_id // 1000:06d}/{build_id}-*.log"
    return any(not p.name.startswith(".") for p in home.rglob(pattern))


def _seconds(data: dict[str, Any], start: str, end: str) -> float:
    return (datetime.fromisoformat(data[end]) - datetime.fromisoformat(data[start])).total_seconds()


async def wait_finished(client: httpx.AsyncClient, build_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data: dict[str, Any] = (await client.get(f"/api/v1/builds/{build_id}")).json()
        if data["finished_at"] is not None:
            return data
        await asyncio.sleep(0.2)
    raise BenchError(f"build {build_id} did not finish within {timeout:g} s")


async def ingest(cluster: Cluster, megabytes: int, timeout: float) -> dict[str, Any]:
    procs = cluster.processes
    # One controller of ours, or the N of `conveyor cluster up` (--controllers N): the
    # controller figures are the sum of their CPU and the largest RSS of any of them.
    controllers = [psutil.Process(p.popen.pid) for p in procs.procs if p.name == "controller"]
    controllers += [psutil.Process(pid) for n, pid in procs.external if n.startswith("controller")]
    agent = psutil.Process(next(p.popen.pid for p in procs.procs if p.name == "agent-1"))
    async with cluster.client() as client:
        put = await client.put("/api/v1/jobs/bench-flood", json={"spec": flood_spec(megabytes)})
        if put.status_code not in (200, 201):
            raise BenchError(f"applying bench-flood: {put.status_code} {put.text[:300]}")
        cpu0 = {p: sum(p.cpu_times()[:2]) for p in (*controllers, agent)}
        rss = {"controller": 0, "agent": 0}
        started = time.monotonic()
        build = (await client.post("/api/v1/jobs/bench-flood/builds", json={})).json()
        waiting = asyncio.create_task(wait_finished(client, build["id"], timeout))
        while not waiting.done():
            for name, proc in (*(("controller", c) for c in controllers), ("agent", agent)):
                with contextlib.suppress(psutil.Error):
                    rss[name] = max(rss[name], proc.memory_info().rss)
            await asyncio.sleep(0.2)
        data = await waiting
        wall = time.monotonic() - started
        cpu = {p: sum(p.cpu_times()[:2]) - c for p, c in cpu0.items()}
        controller_cpu = sum(cpu[c] for c in controllers)
        # The controller compacts the log (live chunks -> one blob) after the finish:
        # keep sampling its RSS until the blob is there, so that this is measured too.
        finished = time.monotonic()
        compacted: float | None = None
        while time.monotonic() - finished < timeout:
            for c in controllers:
                with contextlib.suppress(psutil.Error):
                    rss["controller"] = max(rss["controller"], c.memory_info().rss)
            if _log_blob_exists(cluster.home, build["id"]):
                compacted = time.monotonic() - finished
                break
            await asyncio.sleep(0.05)
    running = _seconds(data, "started_at", "finished_at")
    printed = megabytes * 1_000_000 // LINE * LINE
    result = {
        "state": data["state"],
        "printed_bytes": printed,
        "log_size": data["log_size"],
        "log_complete": data["log_size"] >= printed,
        "running_seconds": round(running, 2),
        "ingest_mb_per_s": round(data["log_size"] / 1e6 / max(running, 1e-9), 1),
        "submit_to_finished_seconds": round(wall, 2),
        "finished_to_compacted_seconds": None if compacted is None else round(compacted, 2),
        "controller_rss_max_mib": round(rss["controller"] / 2**20, 1),
        "agent_rss_max_mib": round(rss["agent"] / 2**20, 1),
        # CPU seconds per 100 MB: less disturbed by other work than MB/s.
        "controller_cpu_s_per_100mb": round(controller_cpu * 1e8 / max(data["log_size"], 1), 2),
        "agent_cpu_s_per_100mb": round(cpu[agent] * 1e8 / max(data["log_size"], 1), 2),
        "controller_core_percent": round(100 * controller_cpu / wall, 1),
        "agent_core_percent": round(100 * cpu[agent] / wall, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    console.print(
        f"  ingest: {result['log_size'] / 1e6:.1f} MB in {running:.2f} s = "
        f"{result['ingest_mb_per_s']} MB/s ({data['state']}); RSS max controller "
        f"{result['controller_rss_max_mib']} MiB (until compacted, "
        f"{result['finished_to_compacted_seconds']} s after the finish), "
        f"agent {result['agent_rss_max_mib']} MiB; "
        f"load {result['loadavg']}"
    )
    if data["state"] != "succeeded":
        raise BenchError(f"the flood build ended {data['state']}: {data.get('cause')}")
    return result


async def live_tail(cluster: Cluster, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    async with cluster.client() as client:
        put = await client.put("/api/v1/jobs/bench-ticker", json={"spec": ticker_spec(seconds)})
        if put.status_code not in (200, 201):
            raise BenchError(f"applying bench-ticker: {put.status_code} {put.text[:300]}")
        build = (await client.post("/api/v1/jobs/bench-ticker/builds", json={})).json()
        pending = ""
        end_state = None
        async with client.stream(
            "GET",
            f"/api/v1/builds/{build['id']}/log/stream",
            timeout=httpx.Timeout(seconds + 120, connect=5),
        ) as stream:
            event = ""
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "log":
                    arrived = time.time()
                    pending += json.loads(line.split(":", 1)[1])["text"]
                    *complete, pending = pending.split("\n")
                    for text in complete:
                        if text.startswith("tick "):
                            latencies.append(arrived - float(text.split()[1]))
                elif line.startswith("data:") and event == "end":
                    end_state = json.loads(line.split(":", 1)[1])["state"]
                    break
    ms = stats_ms(latencies)
    result: dict[str, Any] = {
        "state": end_state,
        "ticks": len(latencies),
        "latency_ms": ms,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    console.print(
        f"  live tail: {len(latencies)} ticks, latency p50 {ms.get('p50')} ms, p95 "
        f"{ms.get('p95')} ms, p99 {ms.get('p99')} ms, max {ms.get('max')} ms; "
        f"load {result['loadavg']}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--tail-seconds", type=float, default=10.0)
    parser.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="more than 1: on one PostgreSQL database behind nginx (conveyor cluster up); "
        "the agent and the follower go through nginx, so chunks and follower may be on "
        "different controllers (woken by LISTEN/NOTIFY)",
    )
    parser.add_argument(
        "--tail-during-ingest",
        action="store_true",
        help="(c) also follow the ticker while another build floods (2 executors)",
    )
    parser.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per build")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the controller and the agent during each phase (collapsed stacks in DIR)",
    )
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.tail_seconds <= 0:
        parser.error("--megabytes >= 1 and --tail-seconds > 0")
    db_kind = "sqlite" if args.database == "sqlite" else "postgresql"
    if args.controllers > 1 and db_kind == "sqlite":
        parser.error("--controllers > 1 needs --database postgresql://...")
    use_this_tree()
    processes = Processes()
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-logs-"))
    record: dict[str, Any] = {
        "benchmark": "logs",
        "machine": machine_info(),
        "database": db_kind,
        "parameters": {
            "megabytes": args.megabytes,
            "tail_seconds": args.tail_seconds,
            "controllers": args.controllers,
        },
    }
    pg_name: str | None = None
    try:
        url: str | None = None
        if db_kind == "postgresql":
            pg_name, url, facts = create_pg_database(args.database)
            record["postgres"] = {"server": redact(args.database), **facts}
        cluster = start_cluster(processes, home, url, 1, 2, "warning", args.controllers)
        with profiling(processes, args.profile, f"{db_kind}-ingest"):
            record["ingest"] = asyncio.run(ingest(cluster, args.megabytes, args.timeout))
        with profiling(processes, args.profile, f"{db_kind}-tail"):
            record["live_tail"] = asyncio.run(live_tail(cluster, args.tail_seconds))
        if args.tail_during_ingest:
            console.print("  (c) live tail while another build prints the flood:")

            async def both() -> tuple[dict[str, Any], dict[str, Any]]:
                flood = asyncio.create_task(ingest(cluster, args.megabytes, args.timeout))
                await asyncio.sleep(0.5)  # the flood is running
                tail = await live_tail(cluster, args.tail_seconds)
                return await flood, tail

            with profiling(processes, args.profile, f"{db_kind}-both"):
                flood, tail = asyncio.run(both())
            record["during_ingest"] = {"ingest": flood, "live_tail": tail}
    except BenchError as exc:
        console.print(f"[red]{exc}[/]")
        console.print(f"[yellow]kept {home} (controller and agent logs)[/]")
        return 1
    finally:
        processes.stop_all()
        if pg_name is not None:
            drop_pg_database(args.database, pg_name)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)  # a few hundred MB of logs and blobs
    path = args.json or RESULTS_DIR / (
        f"logs-{db_kind}" + (f"-{args.controllers}c" if args.controllers > 1 else "") + ".json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
