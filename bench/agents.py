#!/usr/bin/env python3
"""Agent-scale benchmark: N simulated agents against one real controller (or three).

Starts a real controller (``python -m conveyor server``) on a free 127.0.0.1
port (SQLite by default, ``--database postgresql`` for a throwaway PostgreSQL
database), or with ``--controllers 3`` a real cluster (``conveyor cluster up``:
three controllers on one throwaway PostgreSQL database behind nginx, no real
agents), then runs light simulated agents in this process: each one speaks the
real agent protocol over HTTP/1.1 keep-alive connections (``POST
/agent/v1/register`` with an enrollment token, a heartbeat every
``heartbeat_interval`` seconds as the controller tells it, and a long-poll held
open all the time). Agents are added in steps (``--agents 100,500,1000,2000``,
registrations 20 at a time); at each step, once they are all registered (the time
it took is recorded) and after a settle time, the benchmark measures for
``--duration`` seconds:

- heartbeat latency (client side, every heartbeat of every agent),
- API latency of an operator's calls (``GET /api/v1/agents``, ``/api/v1/jobs``,
  ``/api/v1/queue``) issued every 0.25 s,
- the controllers' CPU (% of one core, summed) and RSS (the largest, max sampled),
  the CPU of the simulator, PostgreSQL and nginx, and of everything else on the
  machine (other people's work), with the load average.

The simulated agents run in this process, on the same 2-core machine: their own
CPU competes with the controller's, so the figures are pessimistic. They use a
minimal HTTP client of their own (:class:`RawHTTP`): with httpx, 2,000 agents
took a whole core of the simulator and its own queueing showed up as latency.

Run:  /work/venv/bin/python bench/agents.py [--agents 100,500,1000,2000]
      [--duration 30] [--database sqlite|postgresql|postgresql://...]
      [--controllers 1|3] [--json PATH]
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
from urllib.parse import urlsplit

import httpx
import psutil
from dispatch import (
    DEFAULT_PG_URL,
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

from conveyor import cluster as cluster_mod
from conveyor.cluster import ClusterError


@dataclass
class Samples:
    heartbeat: list[float] = field(default_factory=list)
    register: list[float] = field(default_factory=list)
    poll: list[float] = field(default_factory=list)
    api: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    recording: bool = False
    registered: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def reset(self) -> None:
        self.heartbeat.clear()
        self.poll.clear()
        self.api.clear()
        self.errors.clear()


def start_controller(
    processes: Processes, home: Path, database_url: str | None, agent_timeout: float | None
) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [PYTHON, "-m", "conveyor", "server", "--home", str(home), "--port", str(port)]
    args += ["--log-level", "warning"]
    if database_url:
        args += ["--database", database_url]
    if agent_timeout is not None:
        args += ["--agent-timeout", str(agent_timeout)]
    controller = processes.spawn("controller", args, home / "controller.log")
    console.print(f"  controller pid {controller.popen.pid} on {url}")
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
        60,
        "controller /readyz",
        processes,
    )
    return url


class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection, one
    request at a time (as a real agent's connection is used). httpx costs about a
    millisecond of CPU per request on this machine: with 2,000 simulated agents in one
    process the simulator, not the controller, was the bottleneck (it used a whole core
    and its own queueing showed up as controller latency)."""

    def __init__(self, url: str, tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls if parts.scheme == "https" else None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float = 60.0
    ) -> tuple[int, Any]:
        """POST JSON, return (status, decoded JSON or None). Re-connects once if the
        kept-alive connection was closed by the other side."""
        payload = json.dumps(body).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}", "", ""]
        request = "\r\n".join(head).encode() + payload
        for attempt in (1, 2):
            fresh = self.writer is None
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, ssl=self.tls), 30
                    )
                assert self.reader is not None
                self.writer.write(request)
                return await asyncio.wait_for(self._response(self.reader), timeout)
            except (OSError, asyncio.IncompleteReadError, EOFError):
                await self.close()
                if fresh or attempt == 2:
                    raise
            except BaseException:
                await self.close()
                raise
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            data = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from the controller
                    break
                data += await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            data = await reader.readexactly(length)
        if close:
            await self.close()
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None


def start_cluster(home: Path, database_url: str, controllers: int) -> tuple[str, str, list[int]]:
    """``conveyor cluster up`` without agents: N controllers behind nginx on a free port.
    Returns nginx's URL, the admin token and the controllers' PIDs."""
    console.print(f"  starting {controllers} controllers and nginx…")
    state = cluster_mod.up(
        cluster_mod.ClusterConfig(
            home=home,
            database_url=database_url,
            controllers=controllers,
            agents=0,
            port=free_port(),
            log_level="warning",
        ),
        lambda line: console.print(f"  {line}"),
    )
    admin = json.loads((home / "cli.json").read_text())["token"]
    pids = [p.pid for p in state.processes if p.role == "controller"]
    console.print(f"  controllers {pids} behind nginx at {state.url}")
    return state.url, admin, pids


async def sim_agent(
    url: str,
    tls: ssl.SSLContext | None,
    token: str,
    name: str,
    samples: Samples,
    registered: asyncio.Semaphore,
) -> None:
    """One simulated agent: register, then heartbeat and long-poll until cancelled.

    Like a real agent it keeps two connections: one for heartbeats (and the
    registration), one for the long-poll."""
    beat_conn, poll_conn = RawHTTP(url, tls), RawHTTP(url, tls)
    try:
        await _sim_agent(beat_conn, poll_conn, token, name, samples, registered)
    finally:
        await beat_conn.close()
        await poll_conn.close()


async def _sim_agent(
    beat_conn: RawHTTP,
    poll_conn: RawHTTP,
    token: str,
    name: str,
    samples: Samples,
    registered: asyncio.Semaphore,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    backoff = 1.0
    while True:  # like a real agent: a 5xx or a lost connection is retried with backoff
        async with registered:
            started = time.perf_counter()
            try:
                status, info = await beat_conn.post(
                    "/agent/v1/register",
                    {"name": name, "labels": ["sim"], "executors": 1, "version": "bench"},
                    headers,
                )
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
                status, info = 0, repr(exc)
            samples.register.append(time.perf_counter() - started)
        if status == 200:
            break
        if 0 < status < 500:
            raise BenchError(f"register {name}: {status} {str(info)[:200]}")
        samples.error(f"register {status or 'connection'}")
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(10.0, backoff * 2)
    samples.registered += 1
    agent_id = info["agent_id"]
    interval = float(info["heartbeat_interval"])
    poll_timeout = float(info["poll_timeout"])
    headers["X-Agent-Id"] = str(agent_id)

    async def heartbeats() -> None:
        await asyncio.sleep(random.uniform(0, interval))  # spread like real agents
        while True:
            started = time.perf_counter()
            try:
                status, _ = await beat_conn.post(
                    f"/agent/v1/agents/{agent_id}/heartbeat",
                    {"running": [], "cpu_percent": 5.0, "memory_percent": 20.0},
                    headers,
                )
                if status != 200:
                    samples.error(f"heartbeat {status}")
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
                samples.error(f"heartbeat {type(exc).__name__}")
            took = time.perf_counter() - started
            if samples.recording:
                samples.heartbeat.append(took)
            await asyncio.sleep(max(0.0, interval - took))

    async def polls() -> None:
        while True:
            started = time.perf_counter()
            try:
                status, _ = await poll_conn.post(
                    f"/agent/v1/agents/{agent_id}/poll",
                    {"running": [], "wait": poll_timeout, "start": True},
                    headers,
                    timeout=poll_timeout + 30,
                )
                if status != 200:
                    samples.error(f"poll {status}")
                    await asyncio.sleep(1)
                elif samples.recording:
                    samples.poll.append(time.perf_counter() - started)
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
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


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def _others_cpu_seconds() -> dict[str, Any]:
    """CPU seconds of each PostgreSQL and nginx process (by PID), and the machine's
    busy time."""
    out: dict[str, Any] = {"postgres": {}, "nginx": {}}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"]
        if name in ("postgres", "nginx"):
            with contextlib.suppress(psutil.Error):
                t = process.cpu_times()
                out[name][process.pid] = t.user + t.system
    machine = psutil.cpu_times()
    out["machine"] = float(machine.user + machine.system + getattr(machine, "nice", 0.0))
    out["machine"] += float(getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0))
    return out


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used by processes alive at both samples, plus new ones (those that ended
    in between are not counted; their time goes to "outside")."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


async def measure(
    url: str,
    admin: str,
    steps: list[int],
    duration: float,
    settle: float,
    register_timeout: float,
    pids: list[int],
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {admin}"}
    tls = ssl.create_default_context() if url.startswith("https") else None
    timeout = httpx.Timeout(60.0, connect=30.0)
    samples = Samples()
    controllers = [psutil.Process(pid) for pid in pids]
    me = psutil.Process()
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
                samples.register.clear()
                for i in range(len(tasks), n + 1):
                    tasks.append(
                        asyncio.create_task(
                            sim_agent(url, tls, token, f"sim-{i}", samples, registering)
                        )
                    )
                ramp = time.monotonic()
                while samples.registered < n and time.monotonic() - ramp < register_timeout:
                    for task in tasks:
                        if task.done() and task.exception() is not None:
                            raise BenchError(f"a simulated agent failed: {task.exception()}")
                    await asyncio.sleep(0.2)
                ramp_s = time.monotonic() - ramp
                registered_now = samples.registered
                register_ms = stats_ms(samples.register)
                await asyncio.sleep(settle)
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise BenchError(f"a simulated agent failed: {task.exception()}")
                online = (await api_http.get("/api/v1/agents", headers=headers)).json()
                samples.reset()
                samples.recording = True
                cpu0 = _cpu_seconds(controllers)
                own0 = _cpu_seconds([me])
                others0 = _others_cpu_seconds()
                t0 = time.monotonic()
                rss_max = 0
                while time.monotonic() - t0 < duration:
                    for proc in controllers:
                        with contextlib.suppress(psutil.Error):
                            rss_max = max(rss_max, proc.memory_info().rss)
                    await asyncio.sleep(0.5)
                wall = time.monotonic() - t0
                cpu = _cpu_seconds(controllers) - cpu0
                own = _cpu_seconds([me]) - own0
                others1 = _others_cpu_seconds()
                samples.recording = False
                pg = _used(others0["postgres"], others1["postgres"])
                lb = _used(others0["nginx"], others1["nginx"])
                machine = others1["machine"] - others0["machine"]
                outside = max(0.0, machine - cpu - own - pg - lb)
                api_all = [v for values in samples.api.values() for v in values]
                row = {
                    "agents": n,
                    "controllers": len(controllers),
                    "registered": registered_now,
                    "registration_seconds": round(ramp_s, 1),
                    "register_ms": register_ms,
                    "online": sum(a["state"] == "online" for a in online),
                    "duration_s": round(wall, 1),
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                    # All controllers together; RSS is the largest one's.
                    "controller_core_percent": round(100 * cpu / wall, 1),
                    "controller_rss_mib": round(rss_max / 2**20, 1),
                    # The simulated agents' own CPU: on a small box they compete with it.
                    "simulator_core_percent": round(100 * own / wall, 1),
                    "postgres_core_percent": round(100 * pg / wall, 1),
                    "nginx_core_percent": round(100 * lb / wall, 1),
                    # Everything else on the machine (other people's work): disturbs figures.
                    "outside_core_percent": round(100 * outside / wall, 1),
                    "machine_busy_percent": round(100 * machine / wall / (os.cpu_count() or 1), 1),
                    "heartbeats_per_s": round(len(samples.heartbeat) / wall, 1),
                    # Load-independent: the controllers' CPU per heartbeat (the bulk of
                    # the requests; polls and the operator's calls are in it too).
                    "controller_cpu_ms_per_heartbeat": round(
                        1000 * cpu / max(1, len(samples.heartbeat)), 2
                    ),
                    "polls_answered_per_s": round(len(samples.poll) / wall, 1),
                    "heartbeat_ms": stats_ms(samples.heartbeat),
                    "api_ms": stats_ms(api_all),
                    "api_ms_by_path": {p: stats_ms(v) for p, v in samples.api.items()},
                    "errors": dict(samples.errors),
                }
                out.append(row)
                console.print(
                    f"  registered {registered_now} in {ramp_s:.1f} s (p99 "
                    f"{register_ms.get('p99')} ms), online {row['online']}; controller "
                    f"{row['controller_core_percent']}% of a core (simulator "
                    f"{row['simulator_core_percent']}%, postgres {row['postgres_core_percent']}%, "
                    f"nginx {row['nginx_core_percent']}%, outside {row['outside_core_percent']}%),"
                    f" RSS {row['controller_rss_mib']} MiB; "
                    f"{row['controller_cpu_ms_per_heartbeat']} ms CPU/heartbeat; heartbeat p50/p99 "
                    f"{row['heartbeat_ms'].get('p50')}/{row['heartbeat_ms'].get('p99')} ms; "
                    f"API p50/p99 {row['api_ms'].get('p50')}/{row['api_ms'].get('p99')} ms; "
                    f"load {row['loadavg']}; errors {row['errors'] or 'none'}"
                )
                if row["outside_core_percent"] > 25:
                    console.print(
                        f"  [yellow]warning: other processes used "
                        f"{row['outside_core_percent']:.0f}% of a core: figures disturbed[/]"
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
    parser.add_argument(
        "--database",
        default="sqlite",
        help="sqlite, postgresql (the server of CONVEYOR_BENCH_POSTGRES or "
        f"{DEFAULT_PG_URL}) or a postgresql:// server URL (a throwaway database is made)",
    )
    parser.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="1: one controller; N > 1: N controllers on one PostgreSQL database behind "
        "nginx (conveyor cluster up, no agents), the agents talking to nginx",
    )
    parser.add_argument(
        "--agent-timeout",
        type=float,
        default=None,
        help="the controller's --agent-timeout (heartbeats every fifth of it; default 15 s)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.agent_timeout is not None and args.controllers > 1:
        parser.error("--agent-timeout: with one controller only")
    if args.database == "postgresql":
        args.database = os.environ.get("CONVEYOR_BENCH_POSTGRES", DEFAULT_PG_URL)
    if args.controllers < 1:
        parser.error("--controllers: at least 1")
    if args.controllers > 1 and args.database == "sqlite":
        parser.error("--controllers > 1 needs --database postgresql (they share one database)")
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
    cluster_home: Path | None = None
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-agents-"))
    record: dict[str, Any] = {"benchmark": "agents", "machine": machine_info(), "database": db_kind}
    try:
        database_url: str | None = None
        if db_kind == "postgresql":
            pg_name, database_url, facts = create_pg_database(args.database)
            record["postgres"] = {"server": redact(args.database), **facts}
        if args.controllers == 1:
            url = start_controller(processes, home, database_url, args.agent_timeout)
            admin = (home / "admin-token").read_text().strip()
            pids = [processes.procs[0].popen.pid]
        else:
            assert database_url is not None
            url, admin, pids = start_cluster(home, database_url, args.controllers)
            cluster_home = home
        record["controllers"] = args.controllers
        record["agent_timeout"] = args.agent_timeout or 15.0
        record["steps"] = run(
            measure(url, admin, steps, args.duration, args.settle, args.register_timeout, pids)
        )
    except (BenchError, ClusterError) as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        processes.stop_all()
        if cluster_home is not None:
            cluster_mod.down(cluster_home)
        if pg_name is not None:
            drop_pg_database(args.database, pg_name)
    suffix = f"-{args.controllers}c" if args.controllers > 1 else ""
    path = args.json or RESULTS_DIR / f"agents-{db_kind}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
