"""Failover benchmark: leader takeover time and request success through nginx while
controllers are killed (SIGKILL) one after another.

    python bench/failover.py [--controllers 3] [--postgres-url URL] [--json PATH]

Starts a real cluster (`conveyor cluster up`: N controllers on a fresh PostgreSQL
database, nginx, two agents), keeps a stream of idempotent GETs and of build
submissions going through nginx, and kills the current leader N-1 times. For each
kill it reports the takeover time (kill → a new leader in /api/v1/cluster) and the
dispatch gap (kill → the next build assigned). A benchmark, not a test: it prints
figures and writes a JSON record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _paths import use_this_tree
from rich.console import Console
from rich.table import Table

use_this_tree()  # before importing conveyor: this checkout, for us and the children

from conveyor import cluster as cluster_mod  # noqa: E402

console = Console()
SPEC = "name: failover-bench\nstages:\n  - name: s\n    steps:\n      - sh: sleep 0.05\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def create_database(admin_url: str) -> str:
    name = f"bench_failover_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class Traffic:
    """Idempotent GETs and build submissions through the load balancer."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.gets_ok = 0
        self.gets_failed: list[str] = []
        self.posts_ok = 0
        self.posts_failed = 0
        self.stop = asyncio.Event()

    async def get_loop(self) -> None:
        while not self.stop.is_set():
            try:
                r = await self.client.get("/api/v1/jobs")
                if r.status_code == 200:
                    self.gets_ok += 1
                else:
                    self.gets_failed.append(f"HTTP {r.status_code}")
            except httpx.HTTPError as exc:
                self.gets_failed.append(type(exc).__name__)

    async def submit_loop(self) -> None:
        while not self.stop.is_set():
            try:
                r = await self.client.post("/api/v1/jobs/failover-bench/builds", json={})
                if r.status_code == 201:
                    self.posts_ok += 1
                else:
                    self.posts_failed += 1
            except httpx.HTTPError:
                self.posts_failed += 1
            await asyncio.sleep(0.1)

    async def leader(self) -> tuple[str, int] | None:
        try:
            info = (await self.client.get("/api/v1/cluster")).json()
        except (httpx.HTTPError, ValueError):
            return None
        lead = info.get("leader")
        return None if lead is None else (lead["id"], lead["epoch"])

    async def first_assignment_after(self, since: datetime) -> float | None:
        page = (
            await self.client.get("/api/v1/builds", params={"job": "failover-bench", "limit": 200})
        ).json()
        times = [
            datetime.fromisoformat(b["assigned_at"])
            for b in page["items"]
            if b["assigned_at"] and datetime.fromisoformat(b["assigned_at"]) > since
        ]
        return (min(times) - since).total_seconds() if times else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    database = await create_database(args.postgres_url)
    home = Path(tempfile.mkdtemp(prefix="cvy-failover-"))
    port = free_port()
    state = None
    try:
        console.print(f"starting {args.controllers} controllers, nginx and 2 agents…")
        state = await asyncio.to_thread(
            cluster_mod.up,
            cluster_mod.ClusterConfig(
                home=home, database_url=database, controllers=args.controllers, port=port
            ),
            console.print,
        )
        token = json.loads((home / "cli.json").read_text())["token"]
        traffic = Traffic(state.url, token)
        (await traffic.client.post("/api/v1/jobs", json={"spec": SPEC})).raise_for_status()
        cluster_info = (await traffic.client.get("/api/v1/cluster")).json()
        by_address = {c["address"]: c["id"] for c in cluster_info["controllers"]}
        pids = {
            by_address.get(f"http://127.0.0.1:{p.port}", p.name): p.pid
            for p in state.processes
            if p.role == "controller"
        }
        tasks = [asyncio.create_task(traffic.get_loop()) for _ in range(4)]
        tasks.append(asyncio.create_task(traffic.submit_loop()))
        await asyncio.sleep(3)
        kills: list[dict[str, Any]] = []
        for round_no in range(1, args.controllers):
            before = await traffic.leader()
            if before is None:
                raise RuntimeError("no leader before the kill")
            killed_at_wall = datetime.now().astimezone()
            killed_at = time.monotonic()
            os.kill(pids[before[0]], signal.SIGKILL)
            takeover = None
            while time.monotonic() - killed_at < 60:
                now = await traffic.leader()
                if now is not None and now[0] != before[0]:
                    takeover = time.monotonic() - killed_at
                    after = now
                    break
                await asyncio.sleep(0.05)
            if takeover is None:
                raise RuntimeError("no takeover within 60 s")
            await asyncio.sleep(2)
            gap = await traffic.first_assignment_after(killed_at_wall)
            kills.append(
                {
                    "round": round_no,
                    "killed": before[0],
                    "new_leader": after[0],
                    "epoch": [before[1], after[1]],
                    "takeover_seconds": round(takeover, 3),
                    "dispatch_gap_seconds": None if gap is None else round(gap, 3),
                }
            )
            console.print(
                f"round {round_no}: killed leader {before[0]} → {after[0]} in {takeover:.2f}s"
            )
            await asyncio.sleep(3)
        traffic.stop.set()
        await asyncio.gather(*tasks)
        await traffic.client.aclose()
        total = traffic.gets_ok + len(traffic.gets_failed)
        return {
            "controllers": args.controllers,
            "kills": kills,
            "takeover_seconds_max": max(k["takeover_seconds"] for k in kills),
            "takeover_seconds_mean": round(
                statistics.mean(k["takeover_seconds"] for k in kills), 3
            ),
            "idempotent_requests": total,
            "idempotent_failed": len(traffic.gets_failed),
            "idempotent_success_percent": round(100.0 * traffic.gets_ok / max(total, 1), 4),
            "failures_sample": traffic.gets_failed[:10],
            "builds_submitted_ok": traffic.posts_ok,
            "builds_submit_failed": traffic.posts_failed,
        }
    finally:
        if state is not None:
            await asyncio.to_thread(cluster_mod.down, home)
        await drop_database(args.postgres_url, database)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "commit": commit,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controllers", type=int, default=3)
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test",
        help="a server where a throwaway database can be created",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.controllers < 2:
        console.print("[red]need at least 2 controllers[/]")
        return 2
    figures = asyncio.run(run(args))
    table = Table("round", "killed", "new leader", "epoch", "takeover s", "dispatch gap s")
    for k in figures["kills"]:
        table.add_row(
            str(k["round"]), k["killed"], k["new_leader"], f"{k['epoch'][0]}→{k['epoch'][1]}",
            f"{k['takeover_seconds']:.2f}", str(k["dispatch_gap_seconds"]),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"idempotent GETs through nginx: {figures['idempotent_requests']} sent, "
        f"{figures['idempotent_failed']} failed → {figures['idempotent_success_percent']}% ok; "
        f"builds submitted: {figures['builds_submitted_ok']} ok, "
        f"{figures['builds_submit_failed']} refused"
    )
    record = {"benchmark": "failover", "at": datetime.now().isoformat(), "machine": machine(),
              "figures": figures}  # fmt: skip
    path = args.json or Path("bench/results") / f"failover-{int(time.time())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"record written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
