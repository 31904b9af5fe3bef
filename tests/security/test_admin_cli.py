"""`conveyor admin ...` against a real controller: users, grants, tokens, agent tokens,
audit; bad input is a message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.harness import Controller


def run(
    controller: Controller, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CONVEYOR_URL": controller.url,
        "CONVEYOR_TOKEN": controller.token,
        "COLUMNS": "250",  # wide tables: nothing cut
    }
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "admin", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_admin_cli(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "controller").start()
    try:
        done = run(controller, "user", "add", "dora", "--password-stdin", stdin="dora-password\n")
        assert done.returncode == 0, done.stderr
        done = run(controller, "grant", "dora", "developer", "--on", "team-a/*")
        assert done.returncode == 0, done.stderr
        listed = run(controller, "user", "list").stdout
        assert "dora" in listed and "developer on team-a/*" in listed and "admin on *" in listed
        done = run(controller, "token", "create", "dora-ci", "--user", "dora", "--scope", "trigger")
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]
        assert token.startswith("cvy_")
        me = httpx.get(
            f"{controller.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.json()["user"] == "dora" and me.json()["scope"] == "trigger"
        tokens = run(controller, "token", "list", "--all").stdout
        assert "dora-ci" in tokens and token not in tokens
        token_id = next(line.split()[1] for line in tokens.splitlines() if "dora-ci" in line)
        assert run(controller, "token", "revoke", token_id).returncode == 0
        me = httpx.get(
            f"{controller.url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        assert me.status_code == 401
        done = run(controller, "agent-token", "create", "--pool", "linux", "--one-time")
        assert done.returncode == 0 and done.stdout.strip().splitlines()[-1].startswith("cva_")
        assert "pool:linux" in run(controller, "agent-token", "list").stdout
        assert run(controller, "revoke", "dora", "developer", "--on", "team-a/*").returncode == 0
        assert run(controller, "user", "disable", "dora").returncode == 0
        audit = run(controller, "audit", "--security", "--limit", "50").stdout
        for action in (
            "token.created",
            "token.revoked",
            "grant.added",
            "grant.revoked",
            "user.disabled",
        ):
            assert action in audit
        # Bad input: a message and exit code 2.
        bad = run(controller, "grant", "dora", "wizard")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and "role" in bad.stderr
        bad = run(controller, "user", "add", "eve", "--password-stdin", stdin="short\n")
        assert bad.returncode == 2 and "8 characters" in bad.stderr
    finally:
        controller.stop()
