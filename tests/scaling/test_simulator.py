"""The policy simulator: the shipped sample trace through the two example policies
(the autoscaler's own policy code), and a trace exported from a real controller."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor.core.scaling import parse_pool_document
from conveyor.core.simulation import TraceBuild, percentile, simulate
from tests.harness import AgentProcess, Controller, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scaling"


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def report(stdout: str) -> dict[str, float]:
    wait = re.search(r"queue wait\s+p50 (\d+) s, p95 (\d+) s", stdout)
    hours = re.search(r"agent-hours\s+([\d.]+)", stdout)
    assert wait and hours, stdout
    return {"p50": float(wait[1]), "p95": float(wait[2]), "hours": float(hours[1])}


def test_two_example_policies_on_the_sample_trace_trade_cost_for_wait(tmp_path: Path) -> None:
    results = {}
    for name in ("cheap", "fast"):
        plot = tmp_path / f"{name}.png"
        run = conveyor(
            "scaling", "simulate",
            "--trace", str(EXAMPLES / "sample-trace.csv"),
            "--policy", str(EXAMPLES / f"{name}.yml"),
            "--plot", str(plot),
            cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "488 (460 served, 28 left out" in run.stdout
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
        results[name] = report(run.stdout)
    cheap, fast = results["cheap"], results["fast"]
    # The cheap policy costs less and makes builds wait longer; the fast one the reverse.
    assert cheap["hours"] < fast["hours"] * 0.7, results
    assert fast["p95"] < cheap["p95"] * 0.5, results


def test_simulator_uses_the_policy_rules() -> None:
    pool = parse_pool_document(
        {
            "name": "p",
            "labels": ["linux"],
            "min": 0,
            "max": 2,
            "policy": {"scale_up_wait_seconds": 5, "scale_down_idle_seconds": 60},
        }
    )
    t0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
    trace = [TraceBuild(t0 + timedelta(seconds=i), "linux", 100) for i in range(4)]
    trace.append(TraceBuild(t0, "windows", 100))
    result = simulate(pool, trace, interval=10, startup_seconds=20)
    assert result.skipped == 1 and len(result.waits) == 4
    assert result.peak_agents == 2  # never above max
    assert max(a for _, _, a in result.timeline) <= 2
    # Nothing runs before the first agent is asked for and ready (≥ 20 s start-up).
    assert min(result.waits) >= 20
    assert any("builds waited > 5 s for `linux`" in r for r in result.reasons)
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 95) == 0


def test_trace_exported_from_a_controller_replays(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "home").start()
    agent = AgentProcess(controller, "a1", tmp_path / "a1", labels="linux").start()
    try:
        spec = tmp_path / "job.yml"
        spec.write_text(
            "name: t\nagent: linux\nstages:\n  - name: s\n    steps:\n      - sh: sleep 1\n"
        )
        assert controller.cli("job", "apply", "-f", str(spec)).returncode == 0
        with controller.client() as c:
            ids = [c.post("/api/v1/jobs/t/builds", json={}).json()["id"] for _ in range(3)]
            for i in ids:
                wait_until(lambda i=i: c.get(f"/api/v1/builds/{i}").json()["result"], 90)
        out = tmp_path / "workload.csv"
        run = controller.cli("scaling", "trace", "--out", str(out))
        assert run.returncode == 0, run.stderr
        rows = list(csv.DictReader(out.read_text().splitlines()))
        assert len(rows) == 3 and {r["label"] for r in rows} == {"linux"}
        assert all(float(r["duration"]) >= 1 for r in rows)
        policy = tmp_path / "pool.yml"
        policy.write_text("name: p\nlabels: [linux]\nmin: 1\nmax: 2\n")
        sim = conveyor(
            "scaling", "simulate", "--trace", str(out), "--policy", str(policy), cwd=tmp_path
        )
        assert sim.returncode == 0, sim.stderr
        assert "3 (3 served)" in sim.stdout
        # Bad input: a clear message and exit 2, no traceback.
        bad = tmp_path / "bad.csv"
        bad.write_text("when,label\n1,linux\n")
        err = conveyor(
            "scaling", "simulate", "--trace", str(bad), "--policy", str(policy), cwd=tmp_path
        )
        assert (
            err.returncode == 2 and "missing column" in err.stderr and "Traceback" not in err.stderr
        )
        policy.write_text("name: p\nmin: 3\nmax: 1\n")
        err = conveyor(
            "scaling", "simulate", "--trace", str(out), "--policy", str(policy), cwd=tmp_path
        )
        assert err.returncode == 2 and "min 3 > max 1" in err.stderr
    finally:
        agent.stop()
        controller.stop()


def test_simulated_ephemeral_agents_take_one_build_each() -> None:
    pool = parse_pool_document(
        {
            "name": "p",
            "labels": ["linux"],
            "min": 0,
            "max": 10,
            "executors": 4,  # ignored: an ephemeral agent has one executor
            "ephemeral": True,
            "policy": {"scale_up_wait_seconds": 0, "scale_up_cooldown_seconds": 0},
        }
    )
    t0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
    trace = [TraceBuild(t0, "linux", 60) for _ in range(6)]
    result = simulate(pool, trace, interval=5, startup_seconds=10)
    assert len(result.waits) == 6
    assert result.peak_agents == 6
    # Each agent lives from its request to the end of its one build: ~70 s each.
    assert 6 * 60 / 3600 < result.agent_hours < 6 * 90 / 3600
