#!/usr/bin/env python3
"""Heartbeat store writes at 2,000 agents: transactions per second and CPU.

In process, on a fresh SQLite store: 2,000 agents, heartbeats arriving at
``--rate`` per second (670: 2,000 agents every 3 s) for ``--seconds``, written by
``conveyor.store.heartbeats.HeartbeatGroups`` once without linger and once with
the default linger. Prints transactions/s, this process's CPU (event loop and
database threads) and the time a heartbeat waits for its write.

Run:  PYTHONPATH=src python bench/heartbeat_writes.py [--rate 670] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from conveyor.logging import configure_logging
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.heartbeats import LINGER_SECONDS, HeartbeatGroups


async def measure(linger: float, rate: float, seconds: float, agents: int) -> str:
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-hb-"))
    runtime = Runtime.build(
        Settings(home=home / "home", database_url=f"sqlite:///{home / 'conveyor.db'}")
    )
    await runtime.prepare()
    try:
        now = datetime.now(UTC)
        ids = [
            (await runtime.store.register_agent(f"a{i}", [], 1, "1", now)).id for i in range(agents)
        ]
        groups = HeartbeatGroups(runtime.store, linger=linger)
        waits: list[float] = []

        async def beat(agent_id: int) -> None:
            started = time.perf_counter()
            await groups.touch(agent_id, now, 5, 20, {})
            waits.append(time.perf_counter() - started)

        tasks = []
        cpu0, t0 = time.process_time(), time.monotonic()
        for k in range(int(rate * seconds)):
            tasks.append(asyncio.create_task(beat(ids[k % agents])))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        waits.sort()
        return (
            f"linger {linger * 1000:g} ms: {groups.writes / wall:.0f} transactions/s, "
            f"CPU {100 * cpu / wall:.0f}% of a core, wait p50/p99 "
            f"{1000 * waits[len(waits) // 2]:.1f}/{1000 * waits[int(len(waits) * 0.99)]:.1f} ms"
        )
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=670.0, help="heartbeats per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--agents", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("warning", None)
    for linger in (0.0, LINGER_SECONDS):
        print(asyncio.run(measure(linger, args.rate, args.seconds, args.agents)))


if __name__ == "__main__":
    main()
