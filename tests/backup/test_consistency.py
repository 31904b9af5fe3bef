"""A backup taken while 50 builds run restores to a consistent state: no build is
half-present. Real controller and agent (50 executors) on PostgreSQL and on SQLite;
the backup runs while logs stream in, steps change and builds finish."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from conveyor.store import open_store
from conveyor.store.schema import build_steps, builds, log_chunks
from tests.backup.conftest import run_cli
from tests.harness import AgentProcess, Controller, wait_agents_online, wait_until

BUILDS = 50
JOB = """\
name: busy
agent: linux
stages:
  - name: one
    steps:
      - sh: for i in $(seq 1 30); do echo "one $i $(printf '%0300d' 0)"; sleep 0.2; done
  - name: two
    steps:
      - sh: for i in $(seq 1 20); do echo "two $i"; sleep 0.1; done
"""


async def check_consistent(database: str, blob_dir: Path) -> dict[str, int]:
    """Every build whole: all its steps there; its log either all chunks (their sizes add
    up to log_size, which is written in the same transaction as each chunk) or one
    compacted blob of exactly log_size bytes; finished builds' steps all ended."""
    store = open_store(database)
    states: dict[str, int] = {}
    try:
        async with store.read() as conn:
            rows = (await conn.execute(select(builds))).all()
            assert len(rows) == BUILDS
            for b in rows:
                states[b.state] = states.get(b.state, 0) + 1
                steps = (
                    await conn.execute(select(build_steps).where(build_steps.c.build_id == b.id))
                ).all()
                assert len(steps) == 2, f"build {b.id} has {len(steps)} steps"
                chunk_bytes = await conn.scalar(
                    select(func.coalesce(func.sum(log_chunks.c.size), 0)).where(
                        log_chunks.c.build_id == b.id
                    )
                )
                if b.log_blob is None:
                    assert chunk_bytes == b.log_size, (
                        f"build {b.id}: chunks {chunk_bytes} != {b.log_size}"
                    )
                else:
                    assert chunk_bytes == 0
                    assert (blob_dir / b.log_blob).stat().st_size == b.log_size
                if b.state in ("succeeded", "failed", "cancelled", "timed_out", "lost"):
                    assert b.finished_at is not None
                    assert all(s.state not in ("pending", "running") for s in steps), b.id
                if b.state == "queued":
                    assert b.agent_id is None and b.started_at is None
    finally:
        await store.close()
    return states


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_backup_while_50_builds_run(kind: str, tmp_path: Path, new_pg: Any) -> None:
    database = new_pg() if kind == "postgresql" else None
    controller = Controller(tmp_path / "home", database_url=database).start()
    agent = AgentProcess(controller, "busy-agent", tmp_path / "agent", executors=BUILDS).start()
    source_url = database or f"sqlite:///{(tmp_path / 'home' / 'conveyor.db').resolve()}"
    try:
        wait_agents_online(controller, 1)
        with controller.client() as c:
            assert c.post("/api/v1/jobs", json={"spec": JOB}).status_code == 201
            for _ in range(BUILDS):
                assert c.post("/api/v1/jobs/busy/builds", json={}).status_code == 201
            wait_until(
                lambda: (
                    len(
                        c.get("/api/v1/builds", params={"state": "running", "limit": 100}).json()[
                            "items"
                        ]
                    )
                    >= 40
                ),
                90,
                what="40 builds running",
            )
        target = tmp_path / "backups"
        done = run_cli(
            "backup",
            "create",
            "--to",
            str(target),
            "--home",
            str(tmp_path / "home"),
            "--database",
            source_url,
            "--blob-dir",
            str(tmp_path / "home" / "blobs"),
        )
        assert done.returncode == 0, done.stderr
        backup_id = done.stdout.split()[1]
        with controller.client() as c:  # the backup really overlapped running builds
            running = c.get("/api/v1/builds", params={"state": "running", "limit": 100}).json()[
                "items"
            ]
            assert running, "builds ended before the backup did: it proves nothing"
    finally:
        agent.stop()
        controller.stop()
    restored = f"sqlite:///{tmp_path / 'restored.db'}"
    done = run_cli(
        "restore",
        backup_id,
        "--from",
        str(target),
        "--database",
        restored,
        "--blobs",
        str(tmp_path / "restored-blobs"),
    )
    assert done.returncode == 0, done.stderr
    states = asyncio.run(check_consistent(restored, tmp_path / "restored-blobs"))
    assert states.get("running", 0) > 0, states  # the snapshot caught builds mid-run
