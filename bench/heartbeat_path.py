#!/usr/bin/env python3
"""CPU of one agent heartbeat in the controller's application, fast path or route.

In process, on a fresh SQLite store: registers ``--agents`` agents through the real
app (one pool enrollment token), then sends ``--beats`` heartbeats straight to the
ASGI application (no HTTP server, no client library: only what the app itself
costs, middleware and store write included), ``--batch`` at a time concurrently,
once through ``conveyor.api.fast_heartbeat`` and once through the FastAPI route
(``create_app(fast_heartbeats=False)``). Prints this process's CPU (event loop and
database threads) per heartbeat. CPU time, so the figure holds on a busy machine
better than wall time does (not entirely: caches and frequency are shared).

Run:  PYTHONPATH=src python bench/heartbeat_path.py [--agents 2000] [--beats 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from conveyor.api.app import create_app
from conveyor.logging import configure_logging
from conveyor.runtime import Runtime
from conveyor.security.agents import issue_enrollment_token
from conveyor.settings import Settings


async def call(app: Any, method: str, path: str, token: str, body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI app, as uvicorn would hand it over."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"conveyor.test"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    sent = False
    status = 0
    answer = b""

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            answer += message.get("body", b"")

    await app(scope, receive, send)
    return status, answer


async def measure(fast: bool, agents: int, beats: int, batch: int) -> str:
    home = Path(tempfile.mkdtemp(prefix="conveyor-bench-hbpath-"))
    runtime = Runtime.build(
        Settings(home=home / "home", database_url=f"sqlite:///{home / 'conveyor.db'}")
    )
    await runtime.prepare()
    try:
        app = create_app(runtime, run_loops=False, fast_heartbeats=fast)
        token = await issue_enrollment_token(runtime.store, pool="bench")
        ids = []
        for i in range(agents):
            body = json.dumps({"name": f"a{i}", "executors": 1}).encode()
            status, answer = await call(app, "POST", "/agent/v1/register", token, body)
            assert status == 200, answer
            ids.append(json.loads(answer)["agent_id"])
        beat = json.dumps({"running": [], "cpu_percent": 3.0, "memory_percent": 41.0}).encode()

        async def one(agent_id: int) -> None:
            status, answer = await call(
                app, "POST", f"/agent/v1/agents/{agent_id}/heartbeat", token, beat
            )
            assert status == 200, answer

        for agent_id in ids[:batch]:  # warm up
            await one(agent_id)
        cpu0, t0 = time.process_time(), time.monotonic()
        done = 0
        while done < beats:
            await asyncio.gather(*(one(ids[(done + k) % agents]) for k in range(batch)))
            done += batch
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        return (
            f"{'fast path' if fast else 'route    '}: {1000 * cpu / done:.3f} ms CPU per "
            f"heartbeat ({done} heartbeats, {done / wall:.0f}/s, {agents} agents)"
        )
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--beats", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=200, help="heartbeats in flight at once")
    parser.add_argument("--only", choices=("fast", "route"), default=None)
    args = parser.parse_args()
    configure_logging("warning")
    for fast in (False, True):
        if args.only is not None and args.only != ("fast" if fast else "route"):
            continue
        print(asyncio.run(measure(fast, args.agents, args.beats, args.batch)), flush=True)


if __name__ == "__main__":
    main()
