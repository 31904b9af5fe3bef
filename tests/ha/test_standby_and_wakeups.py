"""Standby role, /api/v1/cluster, and cross-controller wake-ups by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from conveyor.controller.pg_wakeups import PgWakeups
from tests.ha.conftest import LEASE_TTL, kill9, start_controller
from tests.harness import Controller, wait_until


def test_standby_serves_only_healthz_until_it_leads(fresh_pg_url: str, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    active = start_controller(tmp_path / "active", fresh_pg_url, blobs)
    standby = Controller(
        tmp_path / "standby",
        fresh_pg_url,
        extra_args=["--blob-dir", str(blobs), "--controller-id", "standby", "--role", "standby",
                    "--lease-ttl", str(LEASE_TTL)],
    )  # fmt: skip
    standby.home.mkdir(parents=True)
    (standby.home / "admin-token").write_text(active.token)
    standby.token = active.token
    assert standby.proc is None
    try:
        # Controller.start waits for /readyz, which a standby refuses: start it by hand.
        with (standby.home / "controller.log").open("ab") as log:
            import subprocess
            import sys

            standby.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "server", "--home", str(standby.home),
                 "--port", str(standby.port), "--database", fresh_pg_url, *standby.extra_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: _status(standby, "/healthz") == 200, 60, what="the standby to be alive")
        assert _status(standby, "/readyz") == 503
        with standby.client() as c:
            refused = c.get("/api/v1/jobs")
            assert refused.status_code == 503 and "standby" in refused.json()["detail"]
        with active.client() as c:
            wait_until(
                lambda: len(c.get("/api/v1/cluster").json()["controllers"]) == 2,
                30,
                what="both controllers listed",
            )
            info = c.get("/api/v1/cluster").json()
            roles = {x["id"]: (x["role"], x["leader"]) for x in info["controllers"]}
            assert roles["standby"] == ("standby", False)
            assert info["leader"]["id"] == "active" and info["leader"]["epoch"] >= 1
        kill9(active)
        wait_until(lambda: _status(standby, "/readyz") == 200, 30, what="standby to take over")
        with standby.client() as c:
            assert c.get("/api/v1/jobs").status_code == 200
            assert c.get("/api/v1/cluster").json()["leader"]["id"] == "standby"
    finally:
        standby.stop()
        active.stop()


def _status(controller: Controller, path: str) -> int:
    try:
        return httpx.get(controller.url + path, timeout=2).status_code
    except httpx.HTTPError:
        return 0


async def test_notify_on_one_controller_wakes_a_waiter_on_another(fresh_pg_url: str) -> None:
    a, b = PgWakeups(fresh_pg_url), PgWakeups(fresh_pg_url)
    await a.start()
    await b.start()
    try:
        await asyncio.wait_for(a.connected.wait(), 10)
        await asyncio.wait_for(b.connected.wait(), 10)
        latencies = []
        for i in range(5):
            waiter = a.waiter(f"agent.{i}")
            started = time.monotonic()
            b.notify(f"agent.{i}")
            # The in-process fallback would only fire at this timeout: waking early
            # proves the NOTIFY crossed from b to a.
            assert await a.wait(waiter, 10.0)
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 5.0, latencies  # generous: typically a few milliseconds
        other = a.waiter("build.1")
        b.notify("build.2")  # another channel does not wake it
        assert not await a.wait(other, 0.5)
    finally:
        await a.stop()
        await b.stop()
