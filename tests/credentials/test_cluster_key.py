"""`conveyor cluster up` gives every controller the same credentials key (one made in
the cluster's home, 0600), so a credential sealed by one controller is served and
re-sealed by another with the same key id. Real controllers on PostgreSQL, real nginx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import conveyor
from tests.harness import free_port


def _cluster(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = str(Path(conveyor.__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "cluster", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.timeout(900)
def test_cluster_controllers_share_one_key(tmp_path: Path, fresh_pg_url: str) -> None:
    home = tmp_path / "cluster"
    try:
        up = _cluster(
            tmp_path, "up", "--controllers", "2", "--agents", "0", "--database", fresh_pg_url,
            "--home", str(home), "--port", str(free_port()), "--timeout", "180",
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        key_file = home / "secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        record = json.loads((home / "cluster.json").read_text())
        ports = [p["port"] for p in record["processes"] if p["role"] == "controller"]
        token = json.loads((home / "cli.json").read_text())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        first, second = (
            httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=headers, timeout=30)
            for p in ports
        )
        with first, second:
            made = first.post("/api/v1/credentials", json={"id": "shared", "value": "v4lue"})
            assert made.status_code == 201, made.text
            redone = second.put("/api/v1/credentials/shared", json={"value": "other-v4lue"})
            assert redone.status_code == 200, redone.text
            assert redone.json()["key_id"] == made.json()["key_id"]
    finally:
        if (home / "cluster.json").exists():
            _cluster(tmp_path, "down", "--home", str(home), timeout=180)
