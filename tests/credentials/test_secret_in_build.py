"""Must-show: secrets bound into a real build (real controller and agent processes)
never appear in clear: not in the stored log, the live SSE stream, the build and step
API, the failure cause, the database (every table, the SQLite file bytes, a pg_dump),
the blob folder or the agent's disk; the temp file of a ``file`` binding is 0600 and
gone after its step, also when the step fails or times out."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.credentials.keys import create_key_file
from tests.harness import (
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)

TOKEN = "tok-" + secrets.token_hex(12)
PASSWORD = "pw-" + secrets.token_hex(10)
KEY_LINES = [base64.b64encode(secrets.token_bytes(30)).decode() for _ in range(3)]
SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + "\n".join(KEY_LINES)
    + ("\n-----END OPENSSH PRIVATE KEY-----\n")
)
#: Everything that must never be seen in clear.
FORBIDDEN = [TOKEN, PASSWORD, SSH_KEY, *KEY_LINES]

PIPELINE = """
name: team-a/leak-check
parameters:
  - {name: GO, required: true}
credentials: [{id: team-a/token, env: TOKEN}]
stages:
  - name: print
    credentials: [{id: team-a/login, username_env: LOGIN_USER, password_env: LOGIN_PASS}]
    steps:
      - sh: |
          echo "whole: $TOKEN"
          echo "next-to-text:before${TOKEN}after"
          half=$(( ${#TOKEN} / 2 ))
          printf '%s' "split: ${TOKEN:0:$half}"
          sleep 0.7
          printf '%s\\n' "${TOKEN:$half}"
          echo "login: $LOGIN_USER / $LOGIN_PASS"
          echo "key file at $KEY_FILE mode $(stat -c %a "$KEY_FILE")"
          cat "$KEY_FILE"
          echo waiting-for-go
          while [ ! -f "$GO" ]; do sleep 0.1; done
        credentials: [{id: team-a/deploy-key, file: KEY_FILE}]
      - sh: |
          echo "key file at $KEY_FILE"
          echo "failing because of $TOKEN" >&2
          exit 3
        credentials: [{id: team-a/deploy-key, file: KEY_FILE}]
"""

TIMEOUT_PIPELINE = """
name: team-a/timeout
stages:
  - name: slow
    steps:
      - sh: |
          echo "key file at $KEY_FILE"
          sleep 60
        timeout: 2s
        credentials: [{id: team-a/deploy-key, file: KEY_FILE}]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Controller, AgentProcess, str | None]]:
    database = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    key_file = tmp_path / "keys" / "secret.key"
    create_key_file(key_file)
    controller = Controller(
        tmp_path / "controller", database, extra_args=["--secret-key-file", str(key_file)]
    ).start()
    agent = AgentProcess(controller, "agent-1", tmp_path / "agent-1").start()
    try:
        wait_agents_online(controller, 1)
        yield controller, agent, database
    finally:
        agent.stop()
        controller.stop()


def _follow(controller: Controller, build_id: int, events: list[dict[str, Any]]) -> None:
    """The live SSE stream of a build, from its start to its end event."""
    with (
        controller.client() as c,
        c.stream("GET", f"/api/v1/builds/{build_id}/log/stream", timeout=120) as response,
    ):
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append({"event": event, **json.loads(line[5:])})
                if event == "end":
                    return


def _assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in FORBIDDEN:
        assert secret.encode() not in data, f"a secret in clear in {where}"


def _scan_database(controller: Controller, database: str | None) -> int:
    """Every text column of every table (and, on SQLite, the raw file bytes)."""
    if database is None:
        home = controller.home
        files = [p for p in home.iterdir() if p.name.startswith("conveyor.db")]
        assert files
        for path in files:  # the database, its WAL and shared-memory files
            _assert_clean(path.read_bytes(), path.name)
        import sqlite3

        conn = sqlite3.connect(home / "conveyor.db")
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            rows = 0
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    rows += 1
                    _assert_clean(repr(row), f"table {table}")
            return rows
        finally:
            conn.close()
    dump = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", database],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    _assert_clean(dump, "pg_dump")
    return dump.count(b"\n")


def _scan_tree(root: Path, where: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            _assert_clean(path.read_bytes(), f"{where} {path}")


def test_bound_secrets_never_appear_in_clear(
    setup: tuple[Controller, AgentProcess, str | None], tmp_path: Path
) -> None:
    controller, agent, database = setup
    with controller.client() as c:
        for body in (
            {"id": "team-a/token", "kind": "text", "value": TOKEN},
            {"id": "team-a/login", "kind": "username_password", "username": "deployer",
             "password": PASSWORD},
            {"id": "team-a/deploy-key", "kind": "ssh_key", "value": SSH_KEY},
        ):  # fmt: skip
            r = c.post("/api/v1/credentials", json=body)
            assert r.status_code == 201, r.text
        assert c.post("/api/v1/jobs", json={"spec": PIPELINE}).status_code == 201
        go = tmp_path / "go"
        r = c.post("/api/v1/jobs/team-a/leak-check/builds", json={"parameters": {"GO": str(go)}})
        assert r.status_code == 201, r.text
        build_id = r.json()["id"]
        events: list[dict[str, Any]] = []
        follower = threading.Thread(target=_follow, args=(controller, build_id, events))
        follower.start()

        # While the build runs: its output is in the database as log chunks.
        wait_until(
            lambda: "waiting-for-go" in c.get(f"/api/v1/builds/{build_id}/log").text,
            60,
            what="the step to print its secrets",
        )
        assert _scan_database(controller, database) > 0
        go.write_text("go")

        build = wait_build_finished(controller, build_id)
        follower.join(60)
        assert not follower.is_alive()
        assert build["result"] == "failed"
        log = c.get(f"/api/v1/builds/{build_id}/log").text
        detail = c.get(f"/api/v1/builds/{build_id}")
        listed = c.get("/api/v1/builds")
        credentials = c.get("/api/v1/credentials")

    # The secrets were there and were masked, whole, split, and next to text.
    assert "whole: ****" in log
    assert "next-to-text:before****after" in log
    assert "split: ****" in log
    assert "login: deployer / ****" in log
    assert "failing because of ****" in log
    # The SSH key printed by `cat`: masked as a whole (its lines too, were they alone).
    assert re.search(r"mode 600\n\*\*\*\*\n?waiting-for-go", log), log
    mode = re.search(r"key file at (\S+) mode (\d+)", log)
    assert mode is not None and mode.group(2) == "600"
    key_paths = re.findall(r"key file at (/\S+)", log)
    assert len(key_paths) == 2 and key_paths[0] != key_paths[1]
    for path in key_paths:
        assert not Path(path).exists()  # removed after its step (also the failed one)
        assert not Path(path).is_relative_to(agent.workdir / "workspace")

    live = "".join(e.get("text", "") for e in events if e["event"] == "log")
    assert live == log and events[-1]["event"] == "end"
    for text, where in (
        (log, "stored log"),
        (live, "live stream"),
        (json.dumps(events), "stream events"),
        (detail.text, "build API"),
        (listed.text, "build list"),
        (credentials.text, "credentials API"),
        (str(build.get("cause")), "failure cause"),
    ):
        _assert_clean(text, where)
    wait_until(lambda: _compacted(controller, build_id), 60, what="log compaction")
    _scan_database(controller, database)
    _scan_tree(controller.home, "controller home")
    _scan_tree(agent.workdir, "agent workdir")


def _compacted(controller: Controller, build_id: int) -> bool:
    with controller.client() as c:
        r = c.get(f"/api/v1/builds/{build_id}/log")
        return r.headers.get("X-More-Data") == "false"


def test_temp_file_is_removed_when_the_step_times_out(
    setup: tuple[Controller, AgentProcess, str | None],
) -> None:
    controller, agent, _ = setup
    with controller.client() as c:
        r = c.post(
            "/api/v1/credentials",
            json={"id": "team-a/deploy-key", "kind": "ssh_key", "value": SSH_KEY},
        )
        assert r.status_code == 201
        assert c.post("/api/v1/jobs", json={"spec": TIMEOUT_PIPELINE}).status_code == 201
        build_id = c.post("/api/v1/jobs/team-a/timeout/builds", json={}).json()["id"]
        build = wait_build_finished(controller, build_id)
        assert build["result"] == "timed_out"
        log = c.get(f"/api/v1/builds/{build_id}/log").text
    paths = re.findall(r"key file at (/\S+)", log)
    assert len(paths) == 1 and not Path(paths[0]).exists()
    assert not any((agent.workdir / "secrets").rglob("*"))


def test_credential_deleted_before_the_build_starts_fails_it_clearly(
    setup: tuple[Controller, AgentProcess, str | None], tmp_path: Path
) -> None:
    controller, _, _ = setup
    spec = """
name: gone
agent: special
stages:
  - name: s
    steps:
      - sh: echo "value=$T"
        credentials: [{id: soon-gone, env: T}]
"""
    with controller.client() as c:
        assert c.post("/api/v1/credentials", json={"id": "soon-gone", "value": TOKEN}).is_success
        assert c.post("/api/v1/jobs", json={"spec": spec}).status_code == 201
        r = c.post("/api/v1/jobs/gone/builds", json={})
        assert r.status_code == 201, r.text  # it exists at trigger time
        build_id = r.json()["id"]
        # Queued (no agent has the label) while the credential is deleted.
        assert c.delete("/api/v1/credentials/soon-gone").status_code == 204
    special = AgentProcess(controller, "special", tmp_path / "special", labels="special")
    special.start()
    try:
        build = wait_build_finished(controller, build_id)
        with controller.client() as c:
            log = c.get(f"/api/v1/builds/{build_id}/log").text
    finally:
        special.stop()
    assert build["result"] == "failed"
    assert "credential 'soon-gone' does not exist (deleted?)" in log
    assert "\nvalue=" not in log  # the step never ran
