"""The shipped Prometheus files, checked by promtool and used by a real Prometheus.

(a) ``promtool`` accepts alerts.yml, prometheus.yml and passes alerts_test.yml.
(b) A real controller and agent run builds with known outcomes (3 succeed, 1 fails)
    while a real Prometheus scrapes the controller every second; the success-rate
    expression of the LowBuildSuccessRate alert, queried from Prometheus, gives 0.75.

Never skipped: scripts/install-system-deps.sh installs ``prometheus`` (with promtool).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conveyor.metrics import Metrics
from tests.harness import (
    AgentProcess,
    Controller,
    free_port,
    wait_agents_online,
    wait_build_finished,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "conveyor.json"

RATIO_JOB = """
name: ratio
parameters:
  - name: OUTCOME
    type: string
    default: ok
stages:
  - name: check
    steps:
      - sh: test "$OUTCOME" = ok
"""


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, timeout=120
    )


def _alert_expr(name: str) -> str:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return str(rule["expr"])
    raise AssertionError(f"no alert {name} in alerts.yml")


def success_ratio_expr(window: str) -> str:
    """The success-ratio half of LowBuildSuccessRate, with another window."""
    expr = _alert_expr("LowBuildSuccessRate")
    ratio = expr[: expr.index(" < 0.8")].strip()
    assert "[10m]" in ratio
    return ratio.replace("[10m]", f"[{window}]")


# ------------------------------------------------------------------------ promtool


def test_promtool_accepts_the_rules_and_their_tests() -> None:
    checked = _promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    tested = _promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_accepts_the_config() -> None:
    checked = _promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_severity_summary_description_and_a_test() -> None:
    rules = [
        r
        for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    names = {r["alert"] for r in rules}
    assert names >= {
        "ControllerDown",
        "NoLeader",
        "HighBuildQueue",
        "LowBuildSuccessRate",
        "AgentsOffline",
        "DispatchLatencyHigh",
        "ControllerOverloaded",
        "AgentDiskAlmostFull",
        "DatabaseUnreachable",
        "BackupMissing",
    }
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["alert"] in fires and rule["alert"] in quiet, rule["alert"]
        for metric in re.findall(r"\bconveyor_[a-z0-9_]+", rule["expr"]):
            assert metric in Metrics("x").series_names(), (rule["alert"], metric)


# ---------------------------------------------------------------------- dashboard


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_the_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["DS_PROMETHEUS"]
    known = Metrics("x").series_names()
    titles = set()
    for panel in dashboard["panels"]:
        titles.add(panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            metrics = re.findall(r"\bconveyor_[a-z0-9_]+", target["expr"])
            assert metrics, (panel["title"], target["expr"])
            for metric in metrics:
                assert metric in known, (panel["title"], metric)
    assert {
        "Queue length",
        "Queue wait p50 / p95",
        "Builds / min by result",
        "Success rate (10m)",
        "Build duration p50 / p95",
        "Agents by state",
        "Executors busy / total",
        "API latency p99 by route",
        "API 5xx rate",
        "Dispatch latency",
        "Leader",
        "Lease epoch",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------ a real Prometheus


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "conveyor",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        checked = subprocess.run(
            ["promtool", "check", "config", str(self.workdir / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.log_path = self.workdir / "prometheus.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, 60, what="prometheus ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.text)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Controller, Prometheus]]:
    controller = Controller(tmp_path / "controller").start()
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{controller.port}")
    try:
        prometheus.start()
        yield controller, prometheus
    finally:
        prometheus.stop()
        controller.stop()


@pytest.mark.timeout(600)
def test_real_prometheus_computes_the_alerts_success_rate(
    stack: tuple[Controller, Prometheus], tmp_path: Path
) -> None:
    controller, prometheus = stack
    started = time.monotonic()
    wait_until(
        lambda: any(
            t["health"] == "up" and t["labels"]["job"] == "conveyor"
            for t in prometheus.api("targets")["activeTargets"]
        ),
        90,
        interval=0.5,
        what="prometheus to scrape the controller",
    )

    # Four builds queued while no agent is connected: 3 will succeed, 1 will fail.
    with controller.client() as c:
        assert c.post("/api/v1/jobs", json={"spec": RATIO_JOB}).status_code == 201
        ids = []
        for outcome in ("ok", "fail", "ok", "ok"):
            r = c.post("/api/v1/jobs/ratio/builds", json={"parameters": {"OUTCOME": outcome}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    # Prometheus sees the queue (from the leader's updater) and the job's counters at 0
    # before any build ends, so increase() counts every end.
    wait_until(
        lambda: prometheus.scalar("sum(conveyor_queue_length)") == 4,
        60,
        interval=0.5,
        what="prometheus to see 4 queued builds",
    )
    assert prometheus.scalar('conveyor_queue_length{label_expression="*"}') == 4
    wait_until(
        lambda: prometheus.scalar('count(conveyor_builds_total{job_name="ratio"} == 0)') == 5,
        60,
        interval=0.5,
        what="the job's counters at 0",
    )

    agent = AgentProcess(controller, "agent-1", tmp_path / "agent-1", executors=2).start()
    try:
        wait_agents_online(controller, 1)
        results = [wait_build_finished(controller, i, 120)["result"] for i in ids]
        assert results == ["succeeded", "failed", "succeeded", "succeeded"]
        wait_until(
            lambda: prometheus.scalar("sum(conveyor_builds_total)") == 4,
            60,
            interval=0.5,
            what="prometheus to see 4 finished builds",
        )
        # One more scrape interval so that both counters have a sample after the end.
        time.sleep(2)
        # The alert's own expression, with a window covering the whole test.
        window = f"{int(time.monotonic() - started) + 60}s"
        ratio = prometheus.scalar(success_ratio_expr(window))
        assert ratio is not None and math.isclose(ratio, 0.75, abs_tol=1e-6), ratio
        # The whole alert expression: 75% < 80%, but 4 builds are too few to alert on.
        full = _alert_expr("LowBuildSuccessRate").replace("[10m]", f"[{window}]")
        assert prometheus.query(full) == []
        assert prometheus.query(full.replace(">= 5", ">= 4")) != []

        leader = prometheus.query('conveyor_leader{job="conveyor"}')
        assert [float(s["value"][1]) for s in leader] == [1.0], leader
        assert prometheus.scalar("sum(conveyor_leader)") == 1
        assert (prometheus.scalar("max(conveyor_lease_epoch)") or 0) >= 1
        assert prometheus.scalar("min(conveyor_store_up)") == 1
        wait_until(
            lambda: prometheus.scalar('sum(conveyor_agents{state="online"})') == 1,
            30,
            interval=0.5,
            what="one agent online in prometheus",
        )
        assert prometheus.scalar("sum(conveyor_build_duration_seconds_count)") == 4
        assert prometheus.scalar("sum(conveyor_queue_wait_seconds_count)") == 4
        routes = {
            s["metric"]["route"]
            for s in prometheus.query("conveyor_http_request_duration_seconds_count")
        }
        assert "/api/v1/jobs/{name}/builds" in routes
        assert "/agent/v1/assignments/{assignment_id}/start" in routes
        assert not any(re.search(r"[0-9a-f]{32}|/\d+(/|$)", r) for r in routes), routes

        # Every dashboard expression is valid PromQL for this Prometheus.
        for title, expr in dashboard_exprs():
            data = prometheus.api("query", query=expr.replace("$__rate_interval", "1m"))
            assert data["resultType"] in ("vector", "scalar"), title
        # The shipped rules loaded and evaluate without error.
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 10
        wait_until(
            lambda: all(
                r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]
            ),
            30,
            what="every rule evaluated",
        )
    finally:
        agent.stop()
