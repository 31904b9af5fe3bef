#!/usr/bin/env python3
"""Agent-scale benchmark: N simulated agents against one real controller.

Starts a real controller (``python -m conveyor server``) on a free 127.0.0.1
port (SQLite by default, ``--database postgresql://...`` for a throwaway
PostgreSQL database), then runs light simulated agents in this process: each
one speaks the real agent protocol over HTTP (``POST /agent/v1/register`` with
an enrollment token, a heartbeat every ``heartbeat_interval`` seconds as the
controller tells it, and a long-poll held open all the time). Agents are added
in steps (``--agents 100,500,1000,2000``); at each step, once they are all
registered (the time it took is recorded) and after a settle time,
the benchmark measures for ``--duration`` seconds:

- heartbeat latency (client side, every heartbeat of every agent),
- API latency of an operator's calls (``GET /api/v1/agents``, ``/api/v1/jobs``,
  ``/api/v1/queue``) issued every 0.25 s,
- the controller's CPU (% of one core) and RSS (max sampled), via psutil on its PID.

The simulated agents run in this process, on the same 2-core machine: their own
CPU competes with the controller's, so the figures are pessimistic. The load
average is recorded next to each step.

Run:  /work/venv/bin/python bench/agents.py [--agents 100,500,1000,2000]
      [--duration 30] [--database sqlite|postgresql://...] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import ssl
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from dispatch import (
    PYTHON,
    RESULTS_DIR,
    BenchError,
    Processes,
    console,
    create_pg_database,
    drop_pg_database,
    free_port,
    machine_info,
    redact,
    stats_ms,
    wait_for,
)


@dataclass
class Samples:
    heartbeat: list[float] = field(default_factory=list)
    api: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    recording: bool = False
    registered: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def reset(self) -> None:
        self.heartbeat.clear()
        self.api.clear()
        self.errors.clear()


def start_controller(processes: Processes, home: Path, database_url: str | None) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [PYTHON, "-m", "conveyor", "server", "--home", str(home), "--port", str(port)]
    args += ["--log-level", "warning"]
    if database_url:
        args += ["--database", database_url]
    controller = processes.spawn("controller", args, home / "controller.log")
    console.print(f"  controller pid {controller.popen.pid} on {url}")
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
        60,
        "controller /readyz",
        processes,
    )
    return url


async def sim_agent(
    url: str,
    tls: ssl.SSLContext,
    token: str,
    name: str,
    samples: Samples,
    registered: asyncio.Semaphore,
) -> None:
    """One simulated agent: register, then heartbeat and long-poll until cancelled.

    Each agent has its own small client (like a real agent process): one shared
    httpx pool with thousands of connections spends its CPU scanning the pool."""
    async with httpx.AsyncClient(
        base_url=url, verify=tls, timeout=httpx.Timeout(60.0, connect=30.0)
    ) as client:
        await _sim_agent(client, token, name, samples, registered)


async def _sim_agent(
    client: httpx.AsyncClient,
    token: str,
    name: str,
    samples: Samples,
    registered: asyncio.Semaphore,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with registered:
        answer = await client.post(
            "/agent/v1/register",
            json={"name": name, "labels": ["sim"], "executors": 1, "version": "bench"},
            headers=headers,
        )
    if answer.status_code != 200:
        raise BenchError(f"register {name}: {answer.status_code} {answer.text[:200]}")
    samples.registered += 1
    info = answer.json()
    agent_id = info["agent_id"]
    interval = float(info["heartbeat_interval"])
    headers["X-Agent-Id"] = str(agent_id)

    async def heartbeats() -> None:
        await asyncio.sleep(random.uniform(0, interval))  # spread like real agents
        while True:
            started = time.perf_counter()
            try:
                r = await client.post(
                    f"/agent/v1/agents/{agent_id}/heartbeat",
                    json={"running": [], "cpu_percent": 5.0, "memory_percent": 20.0},
                    headers=headers,
                )
                if r.status_code != 200:
                    samples.error(f"heartbeat {r.status_code}")
            except httpx.HTTPError as exc:
                samples.error(f"heartbeat {type(exc).__name__}")
            took = time.perf_counter() - started
            if samples.recording:
                samples.heartbeat.append(took)
            await asyncio.sleep(max(0.0, interval - took))

    async def polls() -> None:
        while True:
            try:
                r = await client.post(
                    f"/agent/v1/agents/{agent_id}/poll",
                    json={"running": [], "wait": float(info["poll_timeout"]), "start": True},
                    headers=headers,
                    timeout=float(info["poll_timeout"]) + 30,
                )
                if r.status_code != 200:
                    samples.error(f"poll {r.status_code}")
                    await asyncio.sleep(1)
            except httpx.HTTPError as exc:
                samples.error(f"poll {type(exc).__name__}")
                await asyncio.sleep(1)

    await asyncio.gather(heartbeats(), polls())


async def operator(client: httpx.AsyncClient, admin: str, samples: Samples) -> None:
    """API calls an operator (or the web UI) makes, timed while recording."""
    headers = {"Authorization": f"Bearer {admin}"}
    paths = ["/api/v1/agents", "/api/v1/jobs", "/api/v1/queue"]
    while True:
        for path in paths:
            started = time.perf_counter()
            try:
                r = await client.get(path, headers=headers)
                if r.status_code != 200:
                    samples.error(f"GET {path} {r.status_code}")
            except httpx.HTTPError as exc:
                samples.error(f"GET {path} {type(exc).__name__}")
            if samples.recording:
                samples.api.setdefault(path, []).append(time.perf_counter() - started)
            await asyncio.sleep(0.25)


async def measure(
    url: str,
    admin: str,
    steps: list[int],
    duration: float,
    settle: float,
    register_timeout: float,
    pid: int,
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {admin}"}
    tls = ssl.create_default_context()  # shared: one per client costs ms and memory
    timeout = httpx.Timeout(60.0, connect=30.0)
    samples = Samples()
    proc = psutil.Process(pid)
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as api_http:
        enrol = await api_http.post("/api/v1/agent-tokens", json={}, headers=headers)
        if enrol.status_code != 201:
            raise BenchError(f"cannot create an enrollment token: {enrol.text[:300]}")
        token = enrol.json()["token"]
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(operator(api_http, admin, samples))]
        registering = asyncio.Semaphore(20)
        try:
            for n in steps:
                console.print(f"[bold]{n} agents[/]: registering {n - len(tasks) + 1} more")
                for i in range(len(tasks), n + 1):
                    tasks.append(
                        asyncio.create_task(
                            sim_agent(url, tls, token, f"sim-{i}", samples, registering)
                        )
                    )
                ramp = time.monotonic()
                while samples.registered < n and time.monotonic() - ramp < register_timeout:
                    await asyncio.sleep(0.2)
                ramp_s = time.monotonic() - ramp
                await asyncio.sleep(settle)
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise BenchError(f"a simulated agent failed: {task.exception()}")
                online = (await api_http.get("/api/v1/agents", headers=headers)).json()
                samples.reset()
                samples.recording = True
                cpu0 = proc.cpu_times()
                own0 = psutil.Process().cpu_times()
                t0 = time.monotonic()
                rss_max = 0
                while time.monotonic() - t0 < duration:
                    rss_max = max(rss_max, proc.memory_info().rss)
                    await asyncio.sleep(0.5)
                wall = time.monotonic() - t0
                cpu1 = proc.cpu_times()
                own1 = psutil.Process().cpu_times()
                own = (own1.user + own1.system) - (own0.user + own0.system)
                samples.recording = False
                cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                api_all = [v for values in samples.api.values() for v in values]
                row = {
                    "agents": n,
                    "registered": samples.registered,
                    "registration_seconds": round(ramp_s, 1),
                    "online": sum(a["state"] == "online" for a in online),
                    "duration_s": round(wall, 1),
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                    "controller_core_percent": round(100 * cpu / wall, 1),
                    "controller_rss_mib": round(rss_max / 2**20, 1),
                    # The simulated agents' own CPU: on a small box they compete with it.
                    "simulator_core_percent": round(100 * own / wall, 1),
                    "heartbeats_per_s": round(len(samples.heartbeat) / wall, 1),
                    "heartbeat_ms": stats_ms(samples.heartbeat),
                    "api_ms": stats_ms(api_all),
                    "api_ms_by_path": {p: stats_ms(v) for p, v in samples.api.items()},
                    "errors": dict(samples.errors),
                }
                out.append(row)
                console.print(
                    f"  registered in {ramp_s:.1f} s, online {row['online']}; controller "
                    f"{row['controller_core_percent']}% "
                    f"of a core (simulator {row['simulator_core_percent']}%), RSS "
                    f"{row['controller_rss_mib']} MiB; heartbeat p50/p99 "
                    f"{row['heartbeat_ms'].get('p50')}/{row['heartbeat_ms'].get('p99')} ms; "
                    f"API p50/p99 {row['api_ms'].get('p50')}/{row['api_ms'].get('p99')} ms; "
                    f"load {row['loadavg']}; errors {row['errors'] or 'none'}"
                )
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
    return out


def run(coro: Coroutine[Any, Any, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """asyncio.run, on uvloop when installed (the simulated agents cost less CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def use_this_tree() -> None:
    """Controller and agents run the code of this checkout: its src/ first on their
    PYTHONPATH, made absolute (they run in their own directories, where a relative
    ``PYTHONPATH=src`` would silently fall back to the installed package)."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    rest = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *[p for p in rest if p != src]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="100,500,1000,2000", help="steps, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured per step")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after adding agents")
    parser.add_argument(
        "--register-timeout",
        type=float,
        default=180.0,
        help="most seconds to wait for registrations",
    )
    parser.add_argument("--database", default="sqlite", help="sqlite or a postgresql:// URL")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        steps = sorted({int(x) for x in args.agents.split(",") if x.strip()})
    except ValueError:
        parser.error("--agents: comma-separated integers, e.g. 100,500")
    if not steps or steps[0] < 1:
        parser.error("--agents: at least one positive number")
    db_kind = "sqlite" if args.database == "sqlite" else "postgresql"
    use_this_tree()
    processes = Processes()
    pg_name: str | None = None
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-agents-"))
    record: dict[str, Any] = {"benchmark": "agents", "machine": machine_info(), "database": db_kind}
    try:
        database_url: str | None = None
        if db_kind == "postgresql":
            pg_name, database_url, facts = create_pg_database(args.database)
            record["postgres"] = {"server": redact(args.database), **facts}
        url = start_controller(processes, home, database_url)
        admin = (home / "admin-token").read_text().strip()
        pid = processes.procs[0].popen.pid
        record["steps"] = run(
            measure(url, admin, steps, args.duration, args.settle, args.register_timeout, pid)
        )
    except BenchError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        processes.stop_all()
        if pg_name is not None:
            drop_pg_database(args.database, pg_name)
    path = args.json or RESULTS_DIR / f"agents-{db_kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
