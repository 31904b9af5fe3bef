"""Two controllers on one PostgreSQL: only the leader scales; when it dies, the other
takes the lease and continues from the stored pool state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Controller, wait_until

POOL = {
    "name": "ha",
    "labels": ["ha"],
    "min": 1,
    "max": 2,
    "provider": "local",
    "policy": {"scale_up_cooldown_seconds": 600},
}


@pytest.fixture
def controllers(
    tmp_path: Path, fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Controller, Controller]]:
    monkeypatch.setenv("CONVEYOR_AUTOSCALE_INTERVAL", "1")
    args = ["--lease-ttl", "2", "--agent-timeout", "6"]
    a = Controller(tmp_path / "a", fresh_pg_url, extra_args=[*args, "--controller-id", "ctl-a"])
    a.start()
    b = Controller(tmp_path / "b", fresh_pg_url, extra_args=[*args, "--controller-id", "ctl-b"])
    b.home.mkdir(parents=True, exist_ok=True)
    (b.home / "admin-token").write_text(a.token)  # one database, one admin token
    b.start()
    yield a, b
    b.stop()
    a.stop()


def test_only_the_leader_scales_and_the_next_one_continues(
    controllers: tuple[Controller, Controller],
) -> None:
    a, b = controllers
    with a.client() as c:
        assert c.post("/api/v1/pools", json=POOL).status_code == 201

        def online() -> list[str]:
            pool = c.get("/api/v1/pools/ha").json()
            return [x["name"] for x in pool["agents"] if x["state"] == "online"]

        [first] = wait_until(online, 60, what="the pool's agent")
        decisions = c.get("/api/v1/pools/ha/decisions").json()
        assert [d["controller"] for d in decisions] == ["ctl-a"]  # the leader, alone
        assert decisions[0]["reason"] == "pool ha 0 → 1: below the minimum 1"

    a.kill()  # the leader dies; its local agents die with it
    with b.client() as c:

        def replaced() -> list[str]:
            pool = c.get("/api/v1/pools/ha").json()
            names = [x["name"] for x in pool["agents"] if x["state"] == "online"]
            return names if names and first not in names else []

        [second] = wait_until(replaced, 90, interval=0.5, what="a new agent from ctl-b")
        assert second != first
        decisions = c.get("/api/v1/pools/ha/decisions").json()
        assert decisions[0]["controller"] == "ctl-b"
        assert decisions[0]["reason"] == "pool ha 0 → 1: below the minimum 1"
        # Never more than max: the new leader did not start a second agent on top.
        assert len(c.get("/api/v1/pools/ha").json()["agents"]) <= 2
