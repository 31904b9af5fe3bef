"""The main metric names of Jenkins's Prometheus plugin, computed from Conveyor's own
metrics at scrape time, so Grafana dashboards built for Jenkins keep working
(setting ``jenkins_metrics``, env ``CONVEYOR_JENKINS_METRICS=true``; docs/metrics.md).

Like Conveyor's gauges, executor and queue figures come from the leader; build counts
are counted per controller since it started (Jenkins counts from its build history)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.metrics import JOB_LABEL, Metrics

PREFIX = "default_jenkins"
# Conveyor results -> the plugin's per-result build counters.
_RESULT_COUNTS = {
    "succeeded": "success",
    "failed": "failed",
    "timed_out": "failed",
    "lost": "failed",
    "cancelled": "aborted",
}


def _samples(metric: Iterable[Metric]) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in metric:
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


class JenkinsMetrics(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield GaugeMetricFamily(f"{PREFIX}_up", "Is Jenkins ready to receive requests", value=1)
        total = busy = 0.0
        for _, labels, value in _samples(m.executors.collect()):
            if labels.get("state") == "total":
                total += value
            elif labels.get("state") == "busy":
                busy += value
        queued = sum(v for _, _, v in _samples(m.queue_length.collect()))
        executors = {
            "available": (total - busy, "Executors available"),
            "busy": (busy, "Executors busy"),
            "online": (total, "Executors online"),
            "defined": (total, "Executors defined"),
            "queue_length": (queued, "Executors queue length"),
        }
        for name, (value, help_text) in executors.items():
            yield GaugeMetricFamily(f"{PREFIX}_executors_{name}", help_text, value=value)
        counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for name, labels, value in _samples(m.builds_total.collect()):
            if not name.endswith("_total"):
                continue  # the _created sample
            job = labels.get(JOB_LABEL, "")
            counts[job]["total"] += value
            kind = _RESULT_COUNTS.get(labels.get("result", ""))
            if kind is not None:
                counts[job][kind] += value
        for kind in ("success", "failed", "aborted", "total"):
            family = GaugeMetricFamily(
                f"{PREFIX}_builds_{kind}_build_count",
                f"Builds with result {kind} (total: all results), per job",
                labels=["jenkins_job"],
            )
            for job, by_kind in sorted(counts.items()):
                family.add_metric([job], by_kind.get(kind, 0.0))
            yield family


def install_jenkins_metrics(metrics: Metrics) -> None:
    """Add the Jenkins names to this controller's /metrics (and /prometheus)."""
    metrics.registry.register(JenkinsMetrics(metrics))
