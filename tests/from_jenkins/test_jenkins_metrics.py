"""Jenkins Prometheus plugin names computed from Conveyor's metrics."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from conveyor.jenkins.metrics import install_jenkins_metrics
from conveyor.metrics import Metrics
from conveyor.settings import Settings


def _value(text: str, line_start: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(line_start + " "))
    return float(line.rsplit(" ", 1)[1])


def test_jenkins_names_follow_conveyor_metrics() -> None:
    metrics = Metrics("c1")
    install_jenkins_metrics(metrics)
    metrics.executors.labels("default", "total").set(6)
    metrics.executors.labels("default", "busy").set(2)
    metrics.queue_length.labels("linux").set(3)
    metrics.queue_length.labels("(any)").set(1)
    for job, result in [("a", "succeeded"), ("a", "succeeded"), ("a", "timed_out")]:
        metrics.builds_total.labels(job, result).inc()
    metrics.builds_total.labels("b", "cancelled").inc()
    text = generate_latest(metrics.registry).decode()
    assert _value(text, "default_jenkins_up") == 1
    assert _value(text, "default_jenkins_executors_online") == 6
    assert _value(text, "default_jenkins_executors_busy") == 2
    assert _value(text, "default_jenkins_executors_available") == 4
    assert _value(text, "default_jenkins_executors_queue_length") == 4
    count = 'default_jenkins_builds_{}_build_count{{jenkins_job="{}"}}'
    assert _value(text, count.format("success", "a")) == 2
    assert _value(text, count.format("failed", "a")) == 1
    assert _value(text, count.format("total", "a")) == 3
    assert _value(text, count.format("aborted", "b")) == 1
    assert "conveyor_builds_total" in text  # Conveyor's own names stay


def test_off_by_default_and_on_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().jenkins_metrics is False
    assert "default_jenkins" not in generate_latest(Metrics("c2").registry).decode()
    monkeypatch.setenv("CONVEYOR_JENKINS_METRICS", "true")
    assert Settings().jenkins_metrics is True
