"""`conveyor drill`: prove a backup brings Conveyor back, and measure how fast.

1. restore the backup into a scratch SQLite database and blob folder (checked first);
2. compare every table's row count with the backup's manifest;
3. builds that were queued or running in the backup are marked cancelled in the
   scratch copy (a drill must never re-run a real deploy), then a controller and one
   agent (labelled ``conveyor-drill`` only) start on it as subprocesses;
4. a smoke job runs on that agent; when its build is green the clock stops.

RTO = seconds from the start of the restore until the smoke build is green.
RPO = age of the newest build in the restored data (of the backup itself if it holds
no build): how much work a real disaster at this moment would lose.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

from conveyor.backup.archive import latest_backup, read_manifest, restore_backup
from conveyor.backup.migrate import table_counts
from conveyor.backup.progress import QUIET, Reporter
from conveyor.blobs import BlobStore, FolderBlobStore
from conveyor.errors import ConveyorError
from conveyor.store import open_store
from conveyor.store.schema import builds

DRILL_LABEL = "conveyor-drill"
SMOKE_JOB = "conveyor-drill-smoke"
SMOKE_SPEC = f"""\
name: {SMOKE_JOB}
description: Disaster-recovery drill smoke build (conveyor drill)
agent: {DRILL_LABEL}
stages:
  - name: smoke
    steps:
      - sh: echo "restored controller runs builds" | tee smoke.txt
      - sh: grep -q restored smoke.txt
"""
START_TIMEOUT = 120.0
BUILD_TIMEOUT = 300.0
ACTIVE = ("queued", "assigned", "running")


class DrillFailed(ConveyorError):
    status = 500
    title = "Drill failed"


@dataclass
class DrillResult:
    backup_id: str
    restore_seconds: float
    rto_seconds: float
    rpo_seconds: float | None
    rpo_basis: str
    row_counts: dict[str, int] = field(default_factory=dict)
    count_mismatches: list[str] = field(default_factory=list)
    smoke_build: int = 0

    def lines(self) -> list[str]:
        rpo = (
            f"{self.rpo_seconds:.0f}s ({self.rpo_basis})" if self.rpo_seconds is not None else "n/a"
        )
        return [
            f"backup:  {self.backup_id}",
            f"restore: {self.restore_seconds:.1f}s, {sum(self.row_counts.values())} rows;"
            + (" row counts match the backup" if not self.count_mismatches else " COUNTS DIFFER"),
            f"smoke build #{self.smoke_build}: succeeded",
            f"RTO: {self.rto_seconds:.1f}s",
            f"RPO: {rpo}",
        ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_drill(
    target: BlobStore,
    backup: str = "latest",
    *,
    workdir: Path | None = None,
    reporter: Reporter = QUIET,
    log: Callable[[str], None] = lambda _m: None,
) -> DrillResult:
    started = time.monotonic()
    manifest = await (
        latest_backup(target) if backup == "latest" else read_manifest(target, backup)
    )
    scratch = Path(tempfile.mkdtemp(prefix="conveyor-drill-")) if workdir is None else workdir
    scratch.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{scratch / 'drill.db'}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log(f"restoring {manifest.id} into {scratch}")
        await restore_backup(
            target, manifest.id, db_url, FolderBlobStore(scratch / "blobs"), reporter=reporter
        )
        restored = time.monotonic()
        counts = await table_counts(db_url)
        mismatches = [
            f"{t}: backup {n}, restored {counts.get(t, 0)}"
            for t, n in sorted(manifest.row_counts.items())
            if counts.get(t, 0) != n
        ]
        newest, token, agent_token = await _prepare(db_url)
        if newest is not None:
            rpo, basis = (datetime.now(UTC) - newest).total_seconds(), "newest restored build"
        else:
            rpo, basis = (datetime.now(UTC) - manifest.created_at).total_seconds(), "backup age"
        reporter.stage("controller + agent", None)
        controller_url = f"http://127.0.0.1:{_free_port()}"
        procs.append(
            _start(
                scratch,
                "controller",
                [
                    "server",
                    "--home",
                    str(scratch / "home"),
                    "--database",
                    db_url,
                    "--blob-dir",
                    str(scratch / "blobs"),
                    "--port",
                    controller_url.rsplit(":", 1)[1],
                    "--log-level",
                    "warning",
                ],
            )
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=controller_url, headers=headers, timeout=10) as http:
            await _wait(
                lambda: _ready(http, procs[0], scratch / "controller.log"),
                START_TIMEOUT,
                "the drill controller to be ready",
            )
            procs.append(
                _start(
                    scratch,
                    "agent",
                    [
                        "agent",
                        "--url",
                        controller_url,
                        "--name",
                        f"drill-{secrets.token_hex(3)}",
                        "--labels",
                        DRILL_LABEL,
                        "--executors",
                        "1",
                        "--workdir",
                        str(scratch / "agent"),
                        "--log-level",
                        "warning",
                    ],
                    agent_token,
                )
            )
            log("controller and agent started; running the smoke build")
            reporter.stage("smoke build", None)
            build_id = await _smoke_build(http)
        rto = time.monotonic() - started
        return DrillResult(
            backup_id=manifest.id,
            restore_seconds=restored - started,
            rto_seconds=rto,
            rpo_seconds=rpo,
            rpo_basis=basis,
            row_counts=counts,
            count_mismatches=mismatches,
            smoke_build=build_id,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)


#: The user the drill acts as in its scratch copy (never in the source).
DRILL_USER = "conveyor-drill"


async def _prepare(db_url: str) -> tuple[datetime | None, str, str]:
    """Newest build time; cancel restored unfinished builds; a fresh admin token (of a
    ``conveyor-drill`` admin user) and an enrollment token for the drill's agent."""
    store = open_store(db_url)
    now = datetime.now(UTC)
    try:
        async with store.read() as conn:
            newest = await conn.scalar(select(func.max(builds.c.queued_at)))
        # max() keeps the column's type: an aware UTC datetime on both databases.
        async with store.write() as conn:
            await conn.execute(
                update(builds)
                .where(builds.c.state.in_(ACTIVE))
                .values(
                    state="cancelled",
                    finished_at=now,
                    agent_id=None,
                    cause="conveyor drill: not re-run in a drill",
                )
            )
        from conveyor.core.permissions import Role, Scope
        from conveyor.security.agents import issue_enrollment_token
        from conveyor.store import security as security_db

        user = await security_db.get_user(store, DRILL_USER)
        if user is None:
            user = await security_db.create_user(store, DRILL_USER, None, now, Role.ADMIN)
        token = f"cvy_{secrets.token_urlsafe(32)}"
        await security_db.create_user_token(
            store, user.id, "drill", hashlib.sha256(token.encode()).hexdigest(),
            Scope.ADMIN.value, now,
        )  # fmt: skip
        agent_token = await issue_enrollment_token(
            store, pool=DRILL_LABEL, created_by="conveyor drill", now=now
        )
        return newest, token, agent_token
    finally:
        await store.close()


def _start(
    scratch: Path, name: str, args: list[str], token: str | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ}
    if token:
        env["CONVEYOR_TOKEN"] = token
    with (scratch / f"{name}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def _ready(http: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        tail = await asyncio.to_thread(_tail, log)
        raise DrillFailed(f"the drill controller exited with {proc.returncode}: {tail}")
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-1500:] if log.is_file() else ""


async def _wait(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()  # type: ignore[misc]
        if value:
            return value
        await asyncio.sleep(0.2)
    raise DrillFailed(f"timed out after {timeout:.0f}s waiting for {what}")


async def _smoke_build(http: httpx.AsyncClient) -> int:
    existing = await http.get(f"/api/v1/jobs/{SMOKE_JOB}")
    if existing.status_code == 404:
        created = await http.post("/api/v1/jobs", json={"spec": SMOKE_SPEC})
        if created.status_code != 201:
            raise DrillFailed(f"could not create the smoke job: {created.text}")
    started = await http.post(f"/api/v1/jobs/{SMOKE_JOB}/builds", json={})
    if started.status_code != 201:
        raise DrillFailed(f"could not start the smoke build: {started.text}")
    build_id = int(started.json()["id"])

    async def finished() -> dict[str, object] | None:
        body = (await http.get(f"/api/v1/builds/{build_id}")).json()
        return body if body.get("result") else None

    body = await _wait(finished, BUILD_TIMEOUT, f"smoke build {build_id}")
    assert isinstance(body, dict)
    if body["result"] != "succeeded":
        raise DrillFailed(f"smoke build {build_id} ended {body['result']}: {body.get('cause')}")
    return build_id
