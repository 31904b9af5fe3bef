"""Three real controllers on one PostgreSQL database sharing one S3 bucket (a real Swift
s3api server) instead of a shared folder: an artifact uploaded through one controller
and the compacted log are served, byte-identical, by every controller."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from conveyor.blobs import open_blob_store
from tests.blobs.conftest import S3Server
from tests.conftest import run_sync
from tests.harness import (
    PYTHON,
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)

JOB = """
name: shared-s3
agent: linux
stages:
  - name: build
    steps:
      - sh: |
          echo "building on $CONVEYOR_AGENT_NAME"
          mkdir -p dist
          head -c 3000000 /dev/urandom > dist/payload.bin
          printf 'hello from the bucket\\n' > dist/hello.txt
      - archive: dist/*
"""


@cache
def _server_has_blob_url_option() -> bool:
    done = subprocess.run(
        [PYTHON, "-m", "conveyor", "server", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=60,
    )
    return "--blob-url" in done.stdout


@dataclass
class S3Controller(Controller):
    """A controller whose blob store is an S3 URL: ``--blob-url`` when the server has
    the option, else ``CONVEYOR_BLOB_URL`` (set by the test for every process)."""

    blob_url: str = ""

    def start(self) -> S3Controller:
        if _server_has_blob_url_option() and "--blob-url" not in self.extra_args:
            self.extra_args = [*self.extra_args, "--blob-url", self.blob_url]
        super().start()
        return self


@pytest.fixture
def s3_cluster(
    fresh_pg_url: str, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[list[S3Controller], str]]:
    # Credentials from the usual AWS_* environment, not from the URL.
    blob_url = s3_server.url(f"cluster-{uuid.uuid4().hex[:8]}", credentials=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("CONVEYOR_BLOB_URL", blob_url)
    controllers: list[S3Controller] = []
    agent: AgentProcess | None = None
    try:
        for i in (1, 2, 3):
            home = tmp_path / f"c{i}"
            if controllers:  # only the first controller of a store creates the admin token
                home.mkdir()
                (home / "admin-token").write_text(controllers[0].token + "\n")
            controller = S3Controller(
                home,
                fresh_pg_url,
                extra_args=["--controller-id", f"c{i}", "--lease-ttl", "2"],
                blob_url=blob_url,
            )
            controllers.append(controller)
            controller.start()
        agent = AgentProcess(controllers[0], "agent-1", tmp_path / "agent-1").start()
        wait_agents_online(controllers[0], 1)
        yield controllers, blob_url
    finally:
        if agent is not None:
            agent.stop()
        for c in controllers:
            c.stop()


def test_artifacts_and_logs_served_by_every_controller(
    s3_cluster: tuple[list[S3Controller], str], tmp_path: Path, s3_server: S3Server
) -> None:
    controllers, blob_url = s3_cluster
    spec = tmp_path / "conveyor.yml"
    spec.write_text(JOB)
    done = controllers[1].cli("job", "apply", "-f", str(spec))
    assert done.returncode == 0, done.stderr
    with controllers[2].client() as c:
        started = c.post("/api/v1/jobs/shared-s3/builds", json={})
        assert started.status_code in (200, 201, 202), started.text
        build_id = started.json()["id"]
    build = wait_build_finished(controllers[0], build_id)
    assert build["result"] == "succeeded", build

    downloads: dict[str, list[bytes]] = {"dist/payload.bin": [], "dist/hello.txt": []}
    logs: list[bytes] = []
    for controller in controllers:
        with controller.client() as c:
            listed = {a["path"]: a for a in c.get(f"/api/v1/builds/{build_id}/artifacts").json()}
            assert set(listed) == set(downloads)
            for path, got in downloads.items():
                answer = c.get(f"/api/v1/builds/{build_id}/artifacts/{path}")
                assert answer.status_code == 200, (controller.url, answer.text)
                assert hashlib.sha256(answer.content).hexdigest() == listed[path]["sha256"]
                assert answer.headers["X-Checksum-Sha256"] == listed[path]["sha256"]
                got.append(answer.content)
            log = wait_until(
                lambda c=c: (
                    (r := c.get(f"/api/v1/builds/{build_id}/log")).headers["X-More-Data"] == "false"
                    and r.status_code == 200
                    and r
                ),
                30,
                what=f"finished log from {controller.url}",
            )
            logs.append(log.content)
    for path, copies in downloads.items():
        assert len(copies) == 3 and copies[0] == copies[1] == copies[2], path
    assert len(downloads["dist/payload.bin"][0]) == 3_000_000
    assert downloads["dist/hello.txt"][0] == b"hello from the bucket\n"
    assert logs[0] == logs[1] == logs[2]
    assert b"building on agent-1" in logs[0]

    # The blobs really are in the bucket (not in a controller's home).
    async def in_bucket() -> list[tuple[str, int]]:
        store = open_blob_store(s3_server.url(blob_url.split("/", 3)[3].split("?")[0]))
        try:
            return [item async for item in store.list()]
        finally:
            await store.close()

    keys = dict(run_sync(in_bucket()))
    assert keys[f"artifacts/{build_id}/dist/payload.bin"] == 3_000_000
    assert any(k.startswith(f"logs/000000/{build_id}-") and k.endswith(".log") for k in keys), keys
    for controller in controllers:
        assert not (controller.home / "blobs" / "artifacts").exists()
