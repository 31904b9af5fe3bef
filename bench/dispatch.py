#!/usr/bin/env python3
"""Dispatch benchmark: throughput and queued->running latency of a real Conveyor.

For each database (SQLite, PostgreSQL) this starts a real controller
(`python -m conveyor server`) on a free 127.0.0.1 port with a temporary home,
M real agents (`python -m conveyor agent`), applies a trivial job (one stage,
one ``sh: "true"`` step) and measures:

(a) throughput: N builds submitted as fast as possible by concurrent API
    clients; wall time from the first submit to the last ``finished_at``;
(b) idle-agent latency: builds submitted one at a time (each waits for the
    previous to finish), with ``queued->assigned`` and ``queued->running``
    taken from the controller's own timestamps, and ``submit->finished``
    from the client's submit time to the controller's ``finished_at`` (same
    host, same wall clock).

Run:  /work/venv/bin/python bench/dispatch.py [--builds N] [--agents M]
      [--executors E] [--database sqlite|postgresql|both] [--postgres-url URL]
      [--json PATH]

PostgreSQL runs on a throwaway database (``bench_<random>``) created on the
server of ``--postgres-url`` and dropped at the end. Every process started is
stopped (SIGTERM, then SIGKILL) by PID, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
from _paths import use_this_tree
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

JOB_NAME = "bench-noop"
AGENT_LABEL = "bench"
JOB_SPEC = f"""\
name: {JOB_NAME}
description: Dispatch benchmark - one stage, one trivial step
agent: {AGENT_LABEL}
stages:
  - name: run
    steps:
      - sh: "true"
"""
FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost"})
UNFINISHED = ("queued", "assigned", "running")

console = Console()


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean/min in milliseconds of durations given in seconds."""
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {}
    return {
        "count": len(ms),
        "min": round(min(ms), 2),
        "mean": round(sum(ms) / len(ms), 2),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
    }


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def redact(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(
                f"{self.name} (pid {self.popen.pid}) exited with status {code}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )


@dataclass
class Processes:
    """Every process this benchmark started; stopped by PID (agents, then the controller)."""

    procs: list[Proc] = field(default_factory=list)
    cluster_home: Path | None = None
    #: Controllers started by ``conveyor cluster up`` (--controllers N): (name, pid).
    external: list[tuple[str, int]] = field(default_factory=list)

    def spawn(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=log_path.parent,
                start_new_session=True,  # own process group: our Ctrl-C does not reach it
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()
        for name, pid in self.external:
            if not psutil.pid_exists(pid):
                raise BenchError(f"{name} (pid {pid}) is gone; see the cluster's logs")

    def stop_all(self, grace: float = 20.0) -> None:
        """Stop agents first (they report their builds), then the controller: SIGTERM,
        up to ``grace`` seconds, then SIGKILL to the PID and its process group."""
        agents = [p for p in self.procs if p.name != "controller"]
        others = [p for p in self.procs if p.name == "controller"]
        for group in (agents, others):
            live = [p for p in group if p.popen.poll() is None]
            try:
                for proc in live:
                    with contextlib.suppress(ProcessLookupError):
                        proc.popen.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + grace
                for proc in live:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except KeyboardInterrupt:
                console.print("[yellow]interrupted again: killing at once[/]")
            for proc in live:
                if proc.popen.poll() is None:
                    console.print(f"[yellow]{proc.name} (pid {proc.popen.pid}): SIGKILL[/]")
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        proc.popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(timeout=5)
        self.procs.clear()
        if self.cluster_home is not None:
            from conveyor import cluster as cluster_mod

            for stopped in cluster_mod.down(self.cluster_home, timeout=grace):
                if stopped.outcome == "killed":
                    console.print(f"[yellow]{stopped.process.name}: SIGKILL[/]")
            self.cluster_home = None
            self.external.clear()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far (user+system, reaped children included) per role:
        controller, agents, this benchmark, PostgreSQL server processes, and the
        whole machine (busy time summed over all cores)."""
        out = {"controller": 0.0, "agents": 0.0, "bench": 0.0, "postgres": 0.0}

        def used(process: psutil.Process) -> float:
            t = process.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)

        for proc in self.procs:
            role = "controller" if proc.name == "controller" else "agents"
            with contextlib.suppress(psutil.Error):
                out[role] += used(psutil.Process(proc.popen.pid))
        for name, pid in self.external:
            role = "controller" if name.startswith("controller") else "agents"
            with contextlib.suppress(psutil.Error):
                out[role] += used(psutil.Process(pid))
        out["bench"] = used(psutil.Process())
        for process in psutil.process_iter(["name"]):
            if process.info["name"] == "postgres":
                with contextlib.suppress(psutil.Error):
                    out["postgres"] += used(process)
        machine = psutil.cpu_times()
        out["machine"] = float(machine.user + machine.system + getattr(machine, "nice", 0.0))
        out["machine"] += float(getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0))
        return out


def cpu_delta(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, Any]:
    """CPU seconds per role during a phase, as % of one core; the machine's busy time
    as % of all its cores."""
    wall = max(wall, 1e-9)
    out: dict[str, Any] = {}
    for role in ("controller", "agents", "bench", "postgres"):
        used = max(0.0, after[role] - before[role])
        out[f"{role}_cpu_seconds"] = round(used, 3)
        out[f"{role}_core_percent"] = round(100 * used / wall, 1)
    cores = os.cpu_count() or 1
    machine = max(0.0, after["machine"] - before["machine"])
    out["machine_busy_percent"] = round(100 * machine / wall / cores, 1)
    ours = sum(out[f"{role}_cpu_seconds"] for role in ("controller", "agents", "bench", "postgres"))
    # Busy time of everything else on the machine: other work disturbs the figures.
    out["outside_core_percent"] = round(max(0.0, 100 * (machine - ours) / wall), 1)
    return out


def warn_outside_load(phase: str, result: dict[str, Any]) -> None:
    outside = result["cpu"]["outside_core_percent"]
    if outside > 25:
        console.print(
            f"  [yellow]warning: other processes used {outside:.0f}% of a core during {phase};"
            " the figures are disturbed (run on a quiet machine)[/]"
        )


@contextlib.contextmanager
def profiling(processes: Processes, out_dir: Path | None, label: str) -> Iterator[None]:
    """With ``--profile DIR``: py-spy samples the controller and the first agent during a
    phase and writes collapsed stacks (``DIR/<label>-<process>.txt``, flamegraph input)."""
    if out_dir is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(exe).exists():
        raise BenchError("--profile needs py-spy: /work/venv/bin/pip install py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: list[subprocess.Popen[bytes]] = []
    for proc in processes.procs:
        if proc.name not in ("controller", "agent-1"):
            continue
        target = out_dir / f"{label}-{proc.name}.txt"
        argv = [exe, "record", "--pid", str(proc.popen.pid), "--rate", "250", "--nonblocking"]
        argv += ["--threads"]
        argv += ["--format", "raw", "--output", str(target)]
        with (out_dir / f"{label}-{proc.name}.py-spy.log").open("ab") as log:
            spies.append(
                subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    time.sleep(0.5)  # attached before the phase starts
    try:
        yield
    finally:
        for spy in spies:  # SIGINT: py-spy writes its output and exits
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        console.print(f"  profiles of {label} in {out_dir}")


# --------------------------------------------------------------------------- machine


def _run(args: list[str]) -> str:
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=10, cwd=ROOT, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    packages = {}
    for name in ("fastapi", "uvicorn", "sqlalchemy", "aiosqlite", "asyncpg", "httpx", "uvloop"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    return {
        "nproc": int(_run(["nproc"]) or os.cpu_count() or 0),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "git_commit": _run(["git", "rev-parse", "HEAD"]) or "?",
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": packages,
    }


# --------------------------------------------------------------------------- postgres


async def _pg_admin(server_url: str, statements: list[str]) -> list[Any]:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [await conn.fetchval(s) for s in statements]
    finally:
        await conn.close()


def create_pg_database(server_url: str) -> tuple[str, str, dict[str, str]]:
    """CREATE DATABASE bench_<random> on the server of ``server_url``.

    Returns (name, url of the new database, server facts)."""
    from sqlalchemy.engine import make_url

    name = f"bench_{secrets.token_hex(5)}"
    try:
        version, sync_commit, fsync, _ = asyncio.run(
            asyncio.wait_for(
                _pg_admin(
                    server_url,
                    [
                        "SHOW server_version",
                        "SHOW synchronous_commit",
                        "SHOW fsync",
                        f'CREATE DATABASE "{name}"',
                    ],
                ),
                30,
            )
        )
    except Exception as exc:
        raise BenchError(
            f"cannot create a PostgreSQL database on {redact(server_url)}: "
            f"{type(exc).__name__}: {exc} (is the server up? try pg_isready -h 127.0.0.1)"
        ) from exc
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    facts = {"server_version": version, "synchronous_commit": sync_commit, "fsync": fsync}
    return name, url, facts


def drop_pg_database(server_url: str, name: str) -> None:
    try:
        asyncio.run(
            asyncio.wait_for(
                _pg_admin(server_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']), 30
            )
        )
    except Exception as exc:
        console.print(f"[red]could not drop PostgreSQL database {name}: {exc}[/]")


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    home: Path
    url: str
    token: str
    processes: Processes

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
            **kw,
        )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    processes: Processes,
    interval: float = 0.1,
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            last = predicate()
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if last:
                return last
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def start_controllers(
    processes: Processes,
    home: Path,
    database_url: str | None,
    controllers: int,
    log_level: str,
    token: str | None = None,
) -> tuple[str, str]:
    """N controllers on one PostgreSQL database behind nginx (``conveyor cluster up`` with
    no agents of its own; ours connect through nginx): (nginx URL, admin token). Stopped
    by :meth:`Processes.stop_all` (``conveyor cluster down``: nginx, then controllers).
    ``token``: an admin token of a database that already has one (filled beforehand)."""
    from conveyor import cluster as cluster_mod

    if not database_url or not database_url.startswith("postgresql"):
        raise BenchError("--controllers > 1 needs PostgreSQL (one database shared by all)")
    cluster_home = home / "cluster"
    config = cluster_mod.ClusterConfig(
        home=cluster_home,
        database_url=database_url,
        controllers=controllers,
        agents=0,
        port=free_port(),
        log_level=log_level,
        token=token,
    )
    processes.cluster_home = cluster_home
    try:
        state = cluster_mod.up(config, lambda line: console.print(f"  {line}"))
    except cluster_mod.ClusterError as exc:
        raise BenchError(f"conveyor cluster up: {exc}") from exc
    for info in state.processes:
        processes.external.append((info.name, info.pid))
        console.print(f"  {info.name} pid {info.pid}" + (f" port {info.port}" if info.port else ""))
    token = json.loads((cluster_home / "cli.json").read_text())["token"]
    return state.url, token


def start_cluster(
    processes: Processes,
    home: Path,
    database_url: str | None,
    agents: int,
    executors: int,
    log_level: str,
    controllers: int = 1,
    admin_token: str | None = None,
) -> Cluster:
    """``admin_token``: for a database filled beforehand (its admin token; with one
    controller it is also in HOME/admin-token)."""
    if controllers > 1:
        url, token = start_controllers(
            processes, home, database_url, controllers, log_level, admin_token
        )
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [PYTHON, "-m", "conveyor", "server", "--home", str(home), "--port", str(port)]
        args += ["--log-level", log_level]
        if database_url:
            args += ["--database", database_url]
        controller = processes.spawn("controller", args, home / "controller.log")
        console.print(f"  controller pid {controller.popen.pid} on {url}")

        def ready() -> bool:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        wait_for(ready, 60, f"controller /readyz on {url}", processes, 0.1)
        token = (home / "admin-token").read_text().strip()
    if agents == 0:  # controllers only (bench/history.py measures the API alone)
        return Cluster(home=home, url=url, token=token, processes=processes)
    # Agents enrol with an agent token (the agent protocol refuses user tokens).
    enrol = httpx.post(
        f"{url}/api/v1/agent-tokens",
        json={"pool": "bench"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if enrol.status_code != 201:
        raise BenchError(f"cannot create the agents' enrollment token: {enrol.text[:300]}")
    env = {**os.environ, "CONVEYOR_TOKEN": enrol.json()["token"]}
    for i in range(1, agents + 1):
        name = f"bench-agent-{i}"
        workdir = home / "agents" / name
        agent = processes.spawn(
            f"agent-{i}",
            [
                PYTHON,
                "-m",
                "conveyor",
                "agent",
                "--url",
                url,
                "--name",
                name,
                "--labels",
                AGENT_LABEL,
                "--executors",
                str(executors),
                "--workdir",
                str(workdir),
                "--log-level",
                log_level,
            ],
            workdir / "agent.log",
            env,
        )
        console.print(f"  agent {name} pid {agent.popen.pid}")

    headers = {"Authorization": f"Bearer {token}"}

    def online() -> int | None:
        answer = httpx.get(f"{url}/api/v1/agents", headers=headers, timeout=5)
        answer.raise_for_status()
        count = sum(a["state"] == "online" for a in answer.json())
        return count if count >= agents else None

    wait_for(online, 60, f"{agents} agent(s) online", processes, 0.2)
    spec = httpx.put(
        f"{url}/api/v1/jobs/{JOB_NAME}", json={"spec": JOB_SPEC}, headers=headers, timeout=30
    )
    if spec.status_code not in (200, 201):
        raise BenchError(f"applying job {JOB_NAME} failed: {spec.status_code} {spec.text}")
    return Cluster(home=home, url=url, token=token, processes=processes)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Build:
    id: int
    state: str
    queued_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Build:
        queued = parse_time(data["queued_at"])
        assert queued is not None
        return cls(
            id=int(data["id"]),
            state=data["state"],
            queued_at=queued,
            assigned_at=parse_time(data["assigned_at"]),
            started_at=parse_time(data["started_at"]),
            finished_at=parse_time(data["finished_at"]),
        )


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def _collect(builds: Sequence[Build], start: str, end: str) -> list[float]:
    out = []
    for b in builds:
        d = _seconds(getattr(b, start), getattr(b, end))
        if d is not None:
            out.append(d)
    return out


async def trigger(client: httpx.AsyncClient) -> tuple[int, float, float]:
    """Submit one build; returns (build id, client wall time before, after)."""
    before = time.time()
    answer = await client.post(f"/api/v1/jobs/{JOB_NAME}/builds", json={})
    after = time.time()
    if answer.status_code != 201:
        raise BenchError(f"trigger failed: {answer.status_code} {answer.text[:500]}")
    return int(answer.json()["id"]), before, after


async def list_builds(
    client: httpx.AsyncClient, states: Sequence[str] = (), stop_below: int | None = None
) -> list[dict[str, Any]]:
    """Every build of the job (newest first, cursor pages of 500), optionally only in
    ``states``; stops paging once ids fall below ``stop_below``."""
    items: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        params: list[tuple[str, str | int | float | bool | None]] = [("job", JOB_NAME)]
        params.append(("limit", 500))
        params += [("state", s) for s in states]
        if cursor is not None:
            params.append(("cursor", cursor))
        answer = await client.get("/api/v1/builds", params=params)
        answer.raise_for_status()
        page = answer.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None or (stop_below is not None and cursor <= stop_below):
            return items


async def queue_report(client: httpx.AsyncClient) -> str:
    with contextlib.suppress(Exception):
        queue = (await client.get("/api/v1/queue")).json()
        agents = (await client.get("/api/v1/agents")).json()
        reasons = sorted({q["reason"] for q in queue})
        fleet = ", ".join(f"{a['name']} {a['state']} {a['busy']}/{a['executors']}" for a in agents)
        return f"{len(queue)} queued (reasons: {reasons}); agents: {fleet}"
    return "(queue unavailable)"


async def warm_up(cluster: Cluster, count: int, timeout: float) -> None:
    """A few builds first, so imports, pools and caches are warm in every process."""
    if count <= 0:
        return
    async with cluster.client() as client:
        ids = [b for b, _, _ in await asyncio.gather(*(trigger(client) for _ in range(count)))]
        deadline = time.monotonic() + timeout
        while True:
            cluster.processes.check_alive()
            active = await list_builds(client, UNFINISHED)
            if not active:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"warm-up builds {ids} not finished after {timeout:g}s: "
                    f"{await queue_report(client)}"
                )
            await asyncio.sleep(0.1)
        bad = [b for b in await list_builds(client) if b["state"] != "succeeded"]
        if bad:
            raise BenchError(
                f"warm-up build(s) did not succeed: {[(b['id'], b['state']) for b in bad]}; "
                f"see the agent logs under {cluster.home / 'agents'}"
            )


async def throughput(
    cluster: Cluster,
    n: int,
    submitters: int,
    poll_interval: float,
    timeout: float,
    stall_timeout: float,
) -> dict[str, Any]:
    """(a) N builds as fast as possible; first submit -> last finished."""
    limits = httpx.Limits(max_connections=submitters + 2, max_keepalive_connections=submitters + 2)
    async with cluster.client(limits=limits) as client:
        submitted: list[tuple[int, float, float]] = []
        numbers = iter(range(n))
        cpu_before = cluster.processes.cpu_seconds()
        t0 = time.monotonic()
        with Progress(
            TextColumn("  {task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            sub_task = progress.add_task("submitted", total=n, rate="")
            fin_task = progress.add_task("finished", total=n, rate="")

            async def submitter() -> None:
                for _ in numbers:  # a shared iterator: each number is taken once
                    submitted.append(await trigger(client))
                    progress.advance(sub_task)

            submit_all = asyncio.gather(*(submitter() for _ in range(submitters)))
            submit_done_at: float | None = None
            last_progress = time.monotonic()
            last_finished = -1
            try:
                while True:
                    cluster.processes.check_alive()
                    if submit_all.done():
                        submit_all.result()  # raise a submitter's error
                        if submit_done_at is None:
                            submit_done_at = time.monotonic()
                    active = len(await list_builds(client, UNFINISHED))
                    finished = max(0, len(submitted) - active)
                    elapsed = time.monotonic() - t0
                    progress.update(
                        fin_task, completed=finished, rate=f"{finished / elapsed:6.1f}/s"
                    )
                    submitting = (submit_done_at or time.monotonic()) - t0
                    progress.update(sub_task, rate=f"{len(submitted) / submitting:6.1f}/s")
                    if submit_done_at is not None and active == 0:
                        break
                    now = time.monotonic()
                    if finished != last_finished:
                        last_finished, last_progress = finished, now
                    elif now - last_progress > stall_timeout:
                        raise BenchError(
                            f"no build finished for {stall_timeout:g}s "
                            f"({finished}/{n} done): {await queue_report(client)}"
                        )
                    if now - t0 > timeout:
                        raise BenchError(
                            f"throughput phase not done after {timeout:g}s "
                            f"({finished}/{n} finished): {await queue_report(client)}"
                        )
                    await asyncio.sleep(poll_interval)
            finally:
                if not submit_all.done():
                    submit_all.cancel()
                with contextlib.suppress(BaseException):
                    await submit_all
        cpu_after = cluster.processes.cpu_seconds()
        phase_wall = time.monotonic() - t0
        ids = {b for b, _, _ in submitted}
        rows = await list_builds(client, stop_below=min(ids))
    builds = [Build.of(r) for r in rows if int(r["id"]) in ids]
    if len(builds) != n:
        raise BenchError(f"expected {n} builds, the API lists {len(builds)}")
    first_submit = min(before for _, before, _ in submitted)
    last_submit = max(after for _, _, after in submitted)
    last_finished_at = max(b.finished_at.timestamp() for b in builds if b.finished_at)
    wall = last_finished_at - first_submit
    states: dict[str, int] = {}
    for b in builds:
        states[b.state] = states.get(b.state, 0) + 1
    assert submit_done_at is not None
    return {
        "builds": n,
        "submitters": submitters,
        "states": states,
        "wall_seconds": round(wall, 3),
        "builds_per_second": round(n / wall, 2),
        "submit_seconds": round(last_submit - first_submit, 3),
        "submits_per_second": round(n / max(last_submit - first_submit, 1e-9), 2),
        "submit_request_ms": stats_ms([a - b for _, b, a in submitted]),
        "queued_to_assigned_ms": stats_ms(_collect(builds, "queued_at", "assigned_at")),
        "queued_to_running_ms": stats_ms(_collect(builds, "queued_at", "started_at")),
        "assigned_to_running_ms": stats_ms(_collect(builds, "assigned_at", "started_at")),
        "running_to_finished_ms": stats_ms(_collect(builds, "started_at", "finished_at")),
        "cpu": per_build_cpu(cpu_delta(cpu_before, cpu_after, phase_wall), n),
    }


def per_build_cpu(cpu: dict[str, Any], builds: int) -> dict[str, Any]:
    """CPU ms per build of the controller(s) and PostgreSQL: the figure that depends
    least on the load of the machine (throughput does, a lot)."""
    for role in ("controller", "postgres"):
        cpu[f"{role}_ms_per_build"] = round(1000 * cpu[f"{role}_cpu_seconds"] / max(builds, 1), 2)
    return cpu


async def latency(
    cluster: Cluster, count: int, gap: float, poll_interval: float, build_timeout: float
) -> dict[str, Any]:
    """(b) One build at a time on idle agents; controller timestamps for the phases."""
    builds: list[Build] = []
    submit_to_finished: list[float] = []
    submit_request: list[float] = []
    # Inside "running", from the step's own timestamps (also the controller's clock).
    to_step: list[float] = []
    in_step: list[float] = []
    after_step: list[float] = []
    async with cluster.client() as client:
        cpu_before = cluster.processes.cpu_seconds()
        t0 = time.monotonic()
        with Progress(
            TextColumn("  {task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task: TaskID = progress.add_task("one by one", total=count, last="")
            for _ in range(count):
                await asyncio.sleep(gap)  # agents idle, long-polls parked
                build_id, before, after = await trigger(client)
                submit_request.append(after - before)
                deadline = time.monotonic() + build_timeout
                while True:
                    answer = await client.get(f"/api/v1/builds/{build_id}")
                    answer.raise_for_status()
                    data = answer.json()
                    if data["state"] in FINISHED:
                        break
                    if time.monotonic() > deadline:
                        cluster.processes.check_alive()
                        raise BenchError(
                            f"build {build_id} still {data['state']} after {build_timeout:g}s: "
                            f"{await queue_report(client)}"
                        )
                    await asyncio.sleep(poll_interval)
                build = Build.of(data)
                if build.state != "succeeded":
                    raise BenchError(f"build {build_id} ended {build.state}: {data.get('cause')}")
                assert build.finished_at is not None and build.started_at is not None
                builds.append(build)
                submit_to_finished.append(build.finished_at.timestamp() - before)
                step = (data.get("steps") or [{}])[0]
                step_started = parse_time(step.get("started_at"))
                step_finished = parse_time(step.get("finished_at"))
                if step_started is not None and step_finished is not None:
                    to_step.append((step_started - build.started_at).total_seconds())
                    in_step.append((step_finished - step_started).total_seconds())
                    after_step.append((build.finished_at - step_finished).total_seconds())
                q2r = (build.started_at - build.queued_at).total_seconds() * 1000
                progress.update(task, advance=1, last=f"queued->running {q2r:7.1f} ms")
        cpu_after = cluster.processes.cpu_seconds()
        phase_wall = time.monotonic() - t0
    return {
        "builds": count,
        "gap_seconds": gap,
        "queued_to_assigned_ms": stats_ms(_collect(builds, "queued_at", "assigned_at")),
        "queued_to_running_ms": stats_ms(_collect(builds, "queued_at", "started_at")),
        "assigned_to_running_ms": stats_ms(_collect(builds, "assigned_at", "started_at")),
        "running_to_finished_ms": stats_ms(_collect(builds, "started_at", "finished_at")),
        "running_to_step_started_ms": stats_ms(to_step),
        "step_started_to_finished_ms": stats_ms(in_step),
        "step_finished_to_finished_ms": stats_ms(after_step),
        "submit_to_finished_ms": stats_ms(submit_to_finished),
        "submit_request_ms": stats_ms(submit_request),
        "cpu": cpu_delta(cpu_before, cpu_after, phase_wall),
    }


# --------------------------------------------------------------------------- one database


def bench_database(db: str, args: argparse.Namespace) -> dict[str, Any]:
    console.rule(f"[bold]{db}")
    home = Path(tempfile.mkdtemp(prefix=f"conveyor-bench-{db}-"))
    processes = Processes()
    pg_name: str | None = None
    database_url: str | None = None
    facts: dict[str, Any] = {}
    ok = False
    try:
        if db == "postgresql":
            pg_name, database_url, facts = create_pg_database(args.postgres_url)
            console.print(f"  throwaway database {pg_name} on {redact(args.postgres_url)}")
        else:
            database_url = f"sqlite:///{home / 'conveyor.db'}"
        started = time.monotonic()
        cluster = start_cluster(
            processes,
            home,
            database_url,
            args.agents,
            args.executors,
            args.log_level,
            args.controllers,
        )
        console.print(f"  cluster up in {time.monotonic() - started:.1f}s (home {home})")
        asyncio.run(warm_up(cluster, args.warmup, args.build_timeout * 2))
        console.print(f"  [bold](a) throughput[/]: {args.builds} builds, {args.submitters} clients")
        with profiling(processes, args.profile, f"{db}-throughput"):
            result_a = asyncio.run(
                throughput(
                    cluster,
                    args.builds,
                    args.submitters,
                    args.poll_interval,
                    args.timeout,
                    args.stall_timeout,
                )
            )
        warn_outside_load("(a)", result_a)
        time.sleep(1.0)  # let agents clean workspaces; queue empty
        console.print(f"  [bold](b) latency[/]: {args.latency_builds} builds one at a time")
        with profiling(processes, args.profile, f"{db}-latency"):
            result_b = asyncio.run(
                latency(
                    cluster,
                    args.latency_builds,
                    args.latency_gap,
                    args.latency_poll_interval,
                    args.build_timeout,
                )
            )
        warn_outside_load("(b)", result_b)
        ok = True
        return {
            "database": db,
            "controllers": args.controllers,
            "database_url": redact(database_url),
            "database_facts": facts,
            "throughput": result_a,
            "latency": result_b,
        }
    finally:
        console.print("  stopping processes…")
        processes.stop_all()
        if pg_name is not None:
            drop_pg_database(args.postgres_url, pg_name)
        if (ok and not args.keep) or not any(home.iterdir()):
            shutil.rmtree(home, ignore_errors=True)
        else:
            console.print(f"  [yellow]kept {home} (controller and agent logs)[/]")


# --------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


SUMMARY: list[tuple[str, str, str, str]] = [
    # label, phase, key, format
    ("(a) throughput, builds/s", "throughput", "builds_per_second", "[bold]{:.1f}"),
    ("(a) first submit → last finished, s", "throughput", "wall_seconds", "{:.2f}"),
    ("(a) submits/s", "throughput", "submits_per_second", "{:.1f}"),
    ("(a) controller CPU, % of a core", "throughput", "cpu.controller_core_percent", "{:.0f}"),
    (
        "(a) controller CPU per build, ms",
        "throughput",
        "cpu.controller_ms_per_build",
        "[bold]{:.1f}",
    ),
    ("(a) PostgreSQL CPU per build, ms", "throughput", "cpu.postgres_ms_per_build", "{:.1f}"),
    ("(a) agents CPU, % of a core", "throughput", "cpu.agents_core_percent", "{:.0f}"),
    ("(a) PostgreSQL CPU, % of a core", "throughput", "cpu.postgres_core_percent", "{:.0f}"),
    ("(a) benchmark client CPU, % of a core", "throughput", "cpu.bench_core_percent", "{:.0f}"),
    ("(a) machine busy, % of all cores", "throughput", "cpu.machine_busy_percent", "{:.0f}"),
    ("(a) other processes, % of a core", "throughput", "cpu.outside_core_percent", "{:.0f}"),
    ("(b) queued→running p50, ms", "latency", "queued_to_running_ms.p50", "[bold]{:.1f}"),
    ("(b) submit→finished p50, ms", "latency", "submit_to_finished_ms.p50", "{:.1f}"),
]
DISTRIBUTIONS: list[tuple[str, str, str]] = [
    ("(a) POST /builds", "throughput", "submit_request_ms"),
    ("(a) queued→assigned", "throughput", "queued_to_assigned_ms"),
    ("(a) queued→running", "throughput", "queued_to_running_ms"),
    ("(a) running→finished", "throughput", "running_to_finished_ms"),
    ("(b) POST /builds", "latency", "submit_request_ms"),
    ("(b) queued→assigned", "latency", "queued_to_assigned_ms"),
    ("(b) assigned→running", "latency", "assigned_to_running_ms"),
    ("(b) queued→running", "latency", "queued_to_running_ms"),
    ("(b) running→step started", "latency", "running_to_step_started_ms"),
    ("(b) step started→finished", "latency", "step_started_to_finished_ms"),
    ("(b) step finished→finished", "latency", "step_finished_to_finished_ms"),
    ("(b) running→finished", "latency", "running_to_finished_ms"),
    ("(b) submit→finished", "latency", "submit_to_finished_ms"),
]


def _lookup(result: dict[str, Any], phase: str, key: str) -> Any:
    value: Any = result[phase]
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def report_tables(results: list[dict[str, Any]], params: dict[str, Any]) -> list[Table]:
    title = (
        f"Conveyor dispatch: {params['agents']} agent(s) × {params['executors']} executor(s); "
        f"(a) {params['builds']} builds at once, (b) {params['latency_builds']} one by one"
    )
    summary = Table(title=title)
    summary.add_column("metric")
    for r in results:
        summary.add_column(r["database"], justify="right")
    for label, phase, key, fmt in SUMMARY:
        cells = []
        for r in results:
            value = _lookup(r, phase, key)
            cells.append("-" if value is None else fmt.format(value))
        summary.add_row(label, *cells)
    dist = Table(title="Durations, ms (controller timestamps; POST = client round trip)")
    for name in ("interval", "database", "p50", "p95", "p99", "max"):
        dist.add_column(name, justify="left" if name in ("interval", "database") else "right")
    for label, phase, key in DISTRIBUTIONS:
        for i, r in enumerate(results):
            stats = _lookup(r, phase, key) or {}
            dist.add_row(
                label if i == 0 else "",
                r["database"],
                *(_ms(stats.get(q)) for q in ("p50", "p95", "p99", "max")),
                end_section=i == len(results) - 1 and len(results) > 1,
            )
    return [summary, dist]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Conveyor dispatch benchmark: throughput and queued→running latency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--builds", type=int, default=200, help="builds in the throughput phase (a)")
    p.add_argument("--agents", type=int, default=2, help="agent processes")
    p.add_argument(
        "--controllers",
        type=int,
        default=1,
        help="controllers; more than 1: on one PostgreSQL database behind nginx "
        "(conveyor cluster up), the agents and the benchmark's clients go through nginx",
    )
    p.add_argument("--executors", type=int, default=2, help="executors per agent")
    p.add_argument(
        "--database", choices=["sqlite", "postgresql", "both"], default="both", help="store"
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("CONVEYOR_BENCH_POSTGRES", DEFAULT_PG_URL),
        help="PostgreSQL server to create the throwaway bench_<random> database on "
        "(any existing database there to connect to for CREATE DATABASE)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON record (default bench/results/dispatch-<db>-<time>.json)",
    )
    p.add_argument("--latency-builds", type=int, default=50, help="builds in phase (b)")
    p.add_argument(
        "--latency-gap", type=float, default=0.1, help="idle seconds before each (b) submit"
    )
    p.add_argument("--submitters", type=int, default=8, help="concurrent API clients in (a)")
    p.add_argument("--warmup", type=int, default=4, help="unmeasured builds first")
    p.add_argument(
        "--poll-interval", type=float, default=0.5, help="(a) seconds between queue polls"
    )
    p.add_argument(
        "--latency-poll-interval", type=float, default=0.02, help="(b) seconds between polls"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="(a) limit, seconds")
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, help="(a) limit without progress, seconds"
    )
    p.add_argument("--build-timeout", type=float, default=60.0, help="(b) limit per build, s")
    p.add_argument("--log-level", default="info", help="controller and agent log level")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample the controller and agent-1 with py-spy during each phase (slows them)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    args = p.parse_args(argv)
    if args.controllers > 1 and args.database == "sqlite":
        p.error("--controllers > 1 needs --database postgresql (one database for all)")
    for name in ("builds", "agents", "controllers", "executors", "latency_builds", "submitters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_this_tree()
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if args.controllers > 1:
        databases = ["postgresql"]
    machine = machine_info()
    params = {
        "builds": args.builds,
        "agents": args.agents,
        "controllers": args.controllers,
        "executors": args.executors,
        "submitters": args.submitters,
        "latency_builds": args.latency_builds,
        "latency_gap": args.latency_gap,
        "warmup": args.warmup,
        "databases": databases,
        "job_spec": JOB_SPEC,
    }
    console.print(
        f"machine: {machine['nproc']} CPU ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"{machine['python']}, commit {machine['git_commit'][:10]}"
        + (" (dirty)" if machine["git_dirty"] else "")
    )
    results: list[dict[str, Any]] = []
    with sigterm_as_interrupt():
        try:
            for db in databases:
                results.append(bench_database(db, args))
        except BenchError as exc:
            console.print(f"[bold red]benchmark failed:[/] {exc}")
            return 1
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]: every process was stopped")
            return 130
    for table in report_tables(results, params):
        console.print(table)
    record = {
        "benchmark": "dispatch",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "parameters": params,
        "results": {r["database"]: r for r in results},
    }
    path = args.json
    if path is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        suffix = f"-{args.controllers}c" if args.controllers > 1 else ""
        path = (
            RESULTS_DIR
            / f"dispatch-{databases[0] if len(databases) == 1 else 'both'}{suffix}-{stamp}.json"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"JSON record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
