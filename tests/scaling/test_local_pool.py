"""Elastic agents for real: a controller process whose autoscaler starts and stops
`conveyor agent` processes (the `local` provider) as a burst of builds comes and goes."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest

from tests.harness import Controller, wait_until

BURST_JOB = """
name: burst
agent: elastic
stages:
  - name: work
    steps:
      - sh: sleep 4 && echo "done on $CONVEYOR_AGENT_NAME"
"""

POOL = {
    "name": "elastic",
    "labels": ["elastic", "linux"],
    "min": 1,
    "max": 4,
    "executors": 2,
    "provider": "local",
    "policy": {
        "scale_up_wait_seconds": 1,
        "scale_up_cooldown_seconds": 2,
        "scale_down_idle_seconds": 6,
        "scale_down_cooldown_seconds": 2,
        "max_scale_down_step": 1,
    },
}


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Controller:
    # Short intervals so the whole cycle takes well under a minute.
    monkeypatch.setenv("CONVEYOR_AUTOSCALE_INTERVAL", "1")
    c = Controller(tmp_path / "home").start()
    yield c
    c.stop()


def _pool(c: object) -> dict:  # type: ignore[type-arg]
    return c.get("/api/v1/pools/elastic").json()  # type: ignore[attr-defined,no-any-return]


def test_burst_grows_pool_to_max_all_builds_succeed_then_it_shrinks_to_min(
    controller: Controller, tmp_path: Path
) -> None:
    spec = tmp_path / "burst.yml"
    spec.write_text(BURST_JOB)
    assert controller.cli("job", "apply", "-f", str(spec)).returncode == 0
    with controller.client() as c:
        assert c.post("/api/v1/pools", json=POOL).status_code == 201
        wait_until(
            lambda: [a for a in _pool(c)["agents"] if a["state"] == "online"],
            60,
            what="the pool's first agent",
        )
        first = _pool(c)["agents"][0]["name"]

        build_ids = [c.post("/api/v1/jobs/burst/builds", json={}).json()["id"] for _ in range(30)]
        peak = 0
        pids_seen: set[int] = set()

        def all_done() -> bool:
            nonlocal peak
            pool = _pool(c)
            peak = max(peak, len([a for a in pool["agents"] if a["state"] == "online"]))
            pids_seen.update(_agent_pids(tmp_path / "home"))
            builds = [c.get(f"/api/v1/builds/{b}").json() for b in build_ids]
            return all(b["result"] for b in builds)

        wait_until(all_done, 240, interval=1.0, what="30 builds to finish")
        assert peak == POOL["max"], f"pool peaked at {peak} agents"

        builds = [c.get(f"/api/v1/builds/{b}").json() for b in build_ids]
        assert [b["state"] for b in builds] == ["succeeded"] * 30
        # None interrupted: no build lost, cancelled or retried.
        assert all(b["attempt"] == 1 and b.get("retry_of") is None for b in builds)

        # After the idle time the pool gives agents back, one per step, to its min.
        try:
            wait_until(
                lambda: _pool(c)["size"] == 1 and not _pool(c)["starting"],
                120,
                interval=1.0,
                what="the pool to shrink back to 1",
            )
        except AssertionError:
            decisions = c.get("/api/v1/pools/elastic/decisions", params={"limit": 50}).json()
            print(_pool(c), *[d["reason"] for d in decisions], sep="\n")
            print((tmp_path / "home" / "controller.log").read_text()[-5000:])
            raise
        pool = _pool(c)
        # The long-lived first agent is the one kept (newest go first).
        assert [a["name"] for a in pool["agents"] if a["state"] == "online"] == [first]

        def decisions_with_3_removed() -> list[dict]:  # type: ignore[type-arg]
            # The decision is stored just after its agent is stopped: wait for it.
            found = c.get("/api/v1/pools/elastic/decisions", params={"limit": 500}).json()
            return found if sum(len(d["removed"]) for d in found) == 3 else []

        decisions = wait_until(decisions_with_3_removed, 30, what="3 removals recorded")
        rules = [d["rule"] for d in decisions]
        assert "wait" in rules and "idle" in rules
        grow = next(d for d in reversed(decisions) if d["rule"] == "wait")
        assert re.fullmatch(
            r"pool elastic (\d) → (\d): \d+ builds waited > 1 s for `elastic`", grow["reason"]
        ), grow["reason"]
        shrink = [d for d in decisions if d["removed"]]
        assert all(len(d["removed"]) == 1 for d in shrink)  # gradual: K = 1

    # The stopped agents' processes are gone; the kept one still runs.
    wait_until(lambda: len(_agent_pids(tmp_path / "home")) == 1, 30, what="3 agents to exit")
    assert len(pids_seen) >= 4


def _agent_pids(home: Path) -> set[int]:
    """PIDs of `conveyor agent` processes whose work folder is under this home."""
    found = set()
    marker = str((home / "agents").resolve())
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "agent" in cmdline and any(marker in part for part in cmdline):
            found.add(proc.info["pid"])
    return found
