"""Fixtures for backup tests: a real Conveyor (controller + agent subprocesses) that has
run builds with logs and artifacts, on SQLite or PostgreSQL, and helpers to compare two
databases row by row through the logical export."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from conveyor.backup import logical
from conveyor.credentials.keys import create_key_file
from conveyor.store import open_store
from conveyor.store.backups import backup_runs
from conveyor.store.notifications import notification_deliveries
from tests.conftest import _create_database, _database_url, _drop_database, run_sync
from tests.harness import (
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)

PIPELINE = """\
name: backup/sample
agent: linux
parameters:
  - name: N
    type: string
    default: "1"
stages:
  - name: build
    steps:
      - sh: for i in $(seq 1 200); do echo "line $i of build $N"; done
      - sh: mkdir -p dist && head -c 20000 /dev/urandom > dist/app.bin
      - sh: echo "report $N" > report.txt
      - archive: [report.txt, "dist/*.bin"]
"""


@dataclass
class Source:
    """A Conveyor that ran builds: its database URL, blob folder and builds' ids."""

    database_url: str
    blob_dir: Path
    home: Path
    build_ids: list[int]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


#: The credential every populated source holds (its value must decrypt after a restore).
CREDENTIAL_ID, CREDENTIAL_VALUE = "backup/deploy-token", "s3cr3t-ünïcode-value"


def populate(home: Path, database_url: str | None, builds: int = 3) -> Source:
    key_file = home / "secret.key"
    create_key_file(key_file)  # users, tokens, grants, credentials and audit rows too
    controller = Controller(
        home, database_url=database_url, extra_args=["--secret-key-file", str(key_file)]
    ).start()
    agent = AgentProcess(controller, "agent-1", home / "agent", executors=2).start()
    try:
        wait_agents_online(controller, 1)
        with controller.client() as c:
            assert c.post("/api/v1/jobs", json={"spec": PIPELINE}).status_code == 201
            made = c.post(
                "/api/v1/credentials",
                json={"id": CREDENTIAL_ID, "kind": "text", "value": CREDENTIAL_VALUE},
            )
            assert made.status_code == 201, made.text
            user = {"name": "dana", "password": "long-enough-pw", "role": "developer"}
            assert c.post("/api/v1/users", json=user).status_code == 201
            ids = [
                c.post(
                    "/api/v1/jobs/backup/sample/builds", json={"parameters": {"N": str(i)}}
                ).json()["id"]
                for i in range(builds)
            ]
        for build_id in ids:
            assert wait_build_finished(controller, build_id)["result"] == "succeeded"
        logs = home / "blobs" / "logs"
        wait_until(
            lambda: logs.is_dir() and len(list(logs.rglob("*.log"))) >= len(ids),
            60,
            what="logs compacted",
        )
    finally:
        agent.stop()
        controller.stop()
    url = database_url or f"sqlite:///{(home / 'conveyor.db').resolve()}"
    asyncio.run(_extra_rows(url, ids[0]))
    return Source(url, home / "blobs", home, ids)


async def _extra_rows(url: str, build_id: int) -> None:
    """Rows for tables the builds above leave empty, with every value kind in them."""
    store = open_store(url)
    now = datetime.now(UTC)
    try:
        async with store.write() as conn:
            await conn.execute(
                insert(notification_deliveries).values(
                    build_id=build_id,
                    notifier="hook",
                    event="finished",
                    kind="webhook",
                    delivery_id="d-1",
                    reason="ünïcode ✓",
                    state="delivered",
                    attempts=2,
                    last_error=None,
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
            await conn.execute(
                insert(backup_runs).values(
                    backup_id="old",
                    kind="full",
                    target="x",
                    trigger="cli",
                    started_at=now,
                    finished_at=now,
                    ok=False,
                    size_bytes=0,
                    error="earlier failure",
                )
            )
    finally:
        await store.close()


def logical_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, decoded, ordered by primary key (the comparison)."""
    with tempfile.TemporaryDirectory() as scratch:
        export = asyncio.run(logical.export_database(url, Path(scratch)))
        return {
            table: list(logical.read_rows(logical.read_header(path)))
            for table, path in export.files.items()
        }


def blob_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    yield populate(tmp_path_factory.mktemp("src-sqlite"), None)


@pytest.fixture
def new_pg() -> Iterator[Any]:
    """Makes empty PostgreSQL databases (dropped after the test)."""
    names: list[str] = []

    def make() -> str:
        name = f"conveyor_bk_{secrets.token_hex(5)}"
        run_sync(_create_database(name))
        names.append(name)
        return _database_url(name)

    yield make
    for name in names:
        run_sync(_drop_database(name))


@pytest.fixture(scope="module")
def pg_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    name = f"conveyor_bksrc_{secrets.token_hex(5)}"
    run_sync(_create_database(name))
    try:
        yield populate(tmp_path_factory.mktemp("src-pg"), _database_url(name))
    finally:
        run_sync(_drop_database(name))
