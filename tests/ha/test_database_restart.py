"""Restart PostgreSQL during a stream of builds: controllers recover by themselves and
no accepted build is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import AgentProcess, Controller, wait_agents_online, wait_until
from tests.pgserver import ThrowawayPostgres

SPEC = "name: stream\nstages:\n  - name: s\n    steps:\n      - sh: echo built $CONVEYOR_BUILD_ID\n"


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres().init().start()
    try:
        yield pg
    finally:
        pg.destroy()


def test_postgres_restart_loses_no_accepted_build(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    controller = Controller(tmp_path / "c1", postgres.url).start()
    agent = AgentProcess(controller, "a1", tmp_path / "a1", executors=4).start()
    try:
        wait_agents_online(controller, 1)
        accepted: list[int] = []
        refused = 0
        with controller.client() as c:
            c.post("/api/v1/jobs", json={"spec": SPEC}).raise_for_status()

            def submit(n: int) -> None:
                nonlocal refused
                for _ in range(n):
                    try:
                        r = c.post("/api/v1/jobs/stream/builds", json={}, timeout=10)
                    except httpx.HTTPError:
                        refused += 1
                        continue
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                    else:
                        assert r.status_code == 503, r.text  # never a 500
                        refused += 1
                    time.sleep(0.02)

            submit(20)
            postgres.stop("fast")
            submit(5)  # refused while the database is down: never acknowledged
            assert c.get("/readyz").status_code == 503
            postgres.start()
            wait_until(lambda: c.get("/readyz").status_code == 200, 60, what="readyz again")
            submit(20)

            def all_succeeded() -> bool:
                states = [c.get(f"/api/v1/builds/{i}").json()["state"] for i in accepted]
                return all(s == "succeeded" for s in states)

            wait_until(all_succeeded, 120, interval=0.5, what="every accepted build")
            assert len(accepted) >= 40 and len(set(accepted)) == len(accepted)
            total = c.get("/api/v1/builds", params={"limit": 500}).json()["items"]
            assert {b["id"] for b in total} == set(accepted)
    finally:
        agent.stop()
        controller.stop()
