"""Every Prometheus metric Conveyor exports, declared in one place (see docs/metrics.md).

Each :class:`~conveyor.runtime.Runtime` owns one :class:`Metrics` with its own
``CollectorRegistry`` (never the process-global one), so several runtimes in one
process (tests, ``conveyor cluster up``) do not clash.

Two kinds of series:

* **per controller**: counters and histograms (builds finished here, HTTP requests
  served here, dispatch passes run here) and a few gauges about this process
  (``conveyor_leader``, ``conveyor_store_up``, ``conveyor_db_pool_in_use``,
  ``conveyor_build_info``). Summing counters across controllers is right.
* **cluster-wide gauges** (queue, running builds, executors, agents, agent
  figures, lease epoch): set only by the leader, from a store snapshot taken by
  :class:`MetricsUpdater`; every other controller leaves them absent (and a
  controller that loses the lease clears them), so a ``sum`` across controllers
  never counts the cluster twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor import __version__
from conveyor.controller.clock import Clock
from conveyor.core.states import BuildState
from conveyor.store.agent_rows import agent_gauge_rows, decode_metrics, queue_figures

if TYPE_CHECKING:
    from conveyor.controller.leader import LeaderLease
    from conveyor.store import Store
    from conveyor.store.records import BuildRecord

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``label_expression`` value of queued builds that run on any agent.
ANY_AGENT = "*"
#: Executor pools (one for now; the autoscaler work will add more).
DEFAULT_POOL = "default"
#: ``result`` values of ``conveyor_builds_total``.
RESULTS = tuple(
    s.value
    for s in (
        BuildState.SUCCEEDED,
        BuildState.FAILED,
        BuildState.CANCELLED,
        BuildState.TIMED_OUT,
        BuildState.LOST,
    )
)
AGENT_STATES = ("online", "offline", "draining")
#: The label carrying a Conveyor job's name. Not ``job``: Prometheus sets ``job`` on
#: every scraped series (the scrape job) and would rename ours to ``exported_job``.
JOB_LABEL = "job_name"

# Buckets: queue waits and build durations span seconds to hours; HTTP and dispatch
# passes span milliseconds to seconds.
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class OptionalGauge(Collector):
    """An unlabelled gauge that is absent until set (and again after :meth:`clear`).

    ``prometheus_client`` exports an unlabelled ``Gauge`` as 0 from the start, which
    would be wrong for leader-only figures and for timestamps not known yet."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float | None = None
        registry.register(self)

    def set(self, value: float) -> None:
        self.value = float(value)

    def clear(self) -> None:
        self.value = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        if self.value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


#: (agent name, cpu_percent, memory_percent, the heartbeat's extra figures as stored)
AgentFigureRow = tuple[str, int | None, int | None, Any]

_AGENT_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "conveyor_agent_cpu_percent",
        "CPU use of online agents from their last heartbeat. Leader only.",
        ("agent",),
    ),
    (
        "conveyor_agent_memory_percent",
        "Memory use of online agents from their last heartbeat. Leader only.",
        ("agent",),
    ),
    (
        "conveyor_agent_disk_percent",
        "Disk use of online agents' work folders from their last heartbeat. Leader only.",
        ("agent",),
    ),
    (
        "conveyor_agent_load1",
        "1-minute load average of online agents from their last heartbeat. Leader only.",
        ("agent",),
    ),
    (
        "conveyor_agent_network_bytes",
        "Network bytes sent/received by online agents' hosts since boot, from their last "
        "heartbeat (graph with rate()). Leader only.",
        ("agent", "direction"),
    ),
)


class AgentGauges(Collector):
    """The per-agent gauges (``conveyor_agent_*``), built when scraped from the rows of
    the last snapshot. Setting them is one assignment: with thousands of agents, the
    labelled ``Gauge`` updates (six per agent, every 5 s) and decoding every agent's
    heartbeat extras stalled the event loop for tens of milliseconds, scraped or not."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows: list[AgentFigureRow] = []
        registry.register(self)

    def set(self, rows: list[AgentFigureRow]) -> None:
        self.rows = rows

    def clear(self) -> None:
        self.rows = []

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(n, doc, labels=list(ls)) for n, doc, ls in _AGENT_FAMILIES]

    def collect(self) -> Iterator[Metric]:
        cpu, memory, disk, load1, network = self.describe()
        assert isinstance(cpu, GaugeMetricFamily) and isinstance(network, GaugeMetricFamily)
        for name, cpu_percent, memory_percent, stored in self.rows:
            extras = decode_metrics(stored)
            for family, value in (
                (cpu, cpu_percent),
                (memory, memory_percent),
                (disk, extras.get("disk_percent")),
                (load1, extras.get("load1")),
            ):
                number = _number(value)
                if number is not None:
                    assert isinstance(family, GaugeMetricFamily)
                    family.add_metric([name], number)
            for direction, key in (("sent", "net_sent_bytes"), ("received", "net_recv_bytes")):
                number = _number(extras.get(key))
                if number is not None:
                    network.add_metric([name, direction], number)
        yield from (cpu, memory, disk, load1, network)


class Metrics:
    """The registry and every metric of one controller."""

    def __init__(self, controller_id: str, version: str = __version__) -> None:
        self.controller_id = controller_id
        self.registry = r = CollectorRegistry()

        # ---- builds (per controller: counted where the event happened)
        self.builds_total = Counter(
            "conveyor_builds_total",
            "Builds that ended, by job and result (counted by the controller that "
            "recorded the end).",
            [JOB_LABEL, "result"],
            registry=r,
        )
        self.retention_freed_bytes_total = Counter(
            "conveyor_retention_freed_bytes_total",
            "Bytes of build artifacts deleted by the retention policy (counted by the leader "
            "that deleted them).",
            registry=r,
        )
        self.retention_builds_deleted_total = Counter(
            "conveyor_retention_builds_deleted_total",
            "Builds deleted whole by build-history retention (counted by the leader).",
            registry=r,
        )
        self.retention_history_freed_bytes_total = Counter(
            "conveyor_retention_history_freed_bytes_total",
            "Bytes freed by build-history retention, by what: artifacts or logs (counted "
            "by the leader).",
            ["what"],
            registry=r,
        )
        self.build_failures_total = Counter(
            "conveyor_build_failures_total",
            "Failed, timed-out and lost builds by failure-analysis category (counted by "
            "the controller that analysed them).",
            ["category"],
            registry=r,
        )
        self.build_duration_seconds = Histogram(
            "conveyor_build_duration_seconds",
            "Build duration from start to finish, seconds.",
            [JOB_LABEL],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "conveyor_queue_wait_seconds",
            "Time builds waited in the queue (queued to assigned), observed at assignment.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.dispatch_latency_seconds = Histogram(
            "conveyor_dispatch_latency_seconds",
            "Duration of one dispatch pass that assigned at least one build.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.log_bytes_total = Counter(
            "conveyor_log_bytes_total",
            "Bytes of build log accepted from agents.",
            registry=r,
        )
        self.event_loop_lag_seconds = Histogram(
            "conveyor_event_loop_lag_seconds",
            "How late the controller's event loop ran a 50 ms timer: time something else "
            "held the loop (conveyor.looplag).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.gc_pause_seconds = Histogram(
            "conveyor_gc_pause_seconds",
            "Python garbage collections of the controller by generation, seconds each.",
            ["generation"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.http_request_duration_seconds = Histogram(
            "conveyor_http_request_duration_seconds",
            "HTTP request duration by method, route template and status.",
            ["method", "route", "status"],
            buckets=FAST_BUCKETS,
            registry=r,
        )

        # ---- cluster-wide gauges (leader only)
        self.queue_length = Gauge(
            "conveyor_queue_length",
            f"Queued builds by label expression ({ANY_AGENT!r}: any agent). Leader only.",
            ["label_expression"],
            registry=r,
        )
        self.builds_running = OptionalGauge(
            "conveyor_builds_running",
            "Builds holding an executor (assigned or running). Leader only.",
            r,
        )
        self.executors = Gauge(
            "conveyor_executors",
            "Executors of online agents: total and busy. Leader only.",
            ["pool", "state"],
            registry=r,
        )
        self.agents = Gauge(
            "conveyor_agents",
            "Agents by state (online, offline, draining). Leader only.",
            ["state"],
            registry=r,
        )
        # Per agent (five families): built at each scrape from the last snapshot.
        self.agent_gauges = AgentGauges(r)
        self.lease_epoch = OptionalGauge(
            "conveyor_lease_epoch",
            "Epoch (fencing token) of the leader lease. Leader only.",
            r,
        )

        # ---- this controller
        self.leader = Gauge(
            "conveyor_leader",
            "1 if this controller holds the leader lease, else 0.",
            ["controller"],
            registry=r,
        )
        self.store_up = Gauge(
            "conveyor_store_up",
            "1 if this controller's last store query worked, else 0.",
            registry=r,
        )
        self.db_pool_in_use = Gauge(
            "conveyor_db_pool_in_use",
            "Database connections checked out of this controller's pools.",
            registry=r,
        )
        self.backup_last_success_timestamp_seconds = OptionalGauge(
            "conveyor_backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup (absent until one is known).",
            r,
        )
        self.build_info = Gauge(
            "conveyor_build_info",
            "Always 1; the labels carry this controller's version and id.",
            ["version", "controller"],
            registry=r,
        )
        self.build_info.labels(version, controller_id).set(1)
        self.leader.labels(controller_id).set(0)
        self.store_up.set(1)
        self._cluster_gauges_set = False

    # ------------------------------------------------------------ observations
    def job_seen(self, job: str) -> None:
        """Create a job's ``builds_total`` series at 0 (before its first build ends),
        so that Prometheus's ``increase()`` counts that first end too."""
        for result in RESULTS:
            self.builds_total.labels(job, result)

    def build_finished(self, build: BuildRecord) -> None:
        self.job_seen(build.job_name)
        self.builds_total.labels(build.job_name, build.state.value).inc()
        if build.started_at is not None and build.finished_at is not None:
            seconds = (build.finished_at - build.started_at).total_seconds()
            self.build_duration_seconds.labels(build.job_name).observe(max(0.0, seconds))

    def build_failure(self, category: str) -> None:
        self.build_failures_total.labels(category).inc()

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_request_duration_seconds.labels(method, route, str(status)).observe(seconds)

    def log_bytes(self, count: int) -> None:
        self.log_bytes_total.inc(count)

    # --------------------------------------------------------------- leadership
    def set_leadership(self, epoch: int | None) -> None:
        """This controller's lease state; losing the lease clears the cluster gauges."""
        self.leader.labels(self.controller_id).set(0 if epoch is None else 1)
        if epoch is None:
            self.lease_epoch.clear()
            self.clear_cluster_gauges()
        else:
            self.lease_epoch.set(epoch)

    def clear_cluster_gauges(self) -> None:
        if not self._cluster_gauges_set:
            return
        for gauge in (
            self.queue_length,
            self.executors,
            self.agents,
        ):
            gauge.clear()
        self.builds_running.clear()
        self.agent_gauges.clear()
        self._cluster_gauges_set = False

    def set_cluster_gauges(self, snapshot: ClusterSnapshot) -> None:
        """Replace every cluster-wide gauge at once (no await in here: a scrape never
        sees half of an update)."""
        self.clear_cluster_gauges()
        for expression, count in snapshot.queue.items():
            self.queue_length.labels(expression).set(count)
        self.builds_running.set(snapshot.running)
        self.executors.labels(DEFAULT_POOL, "total").set(snapshot.executors_total)
        self.executors.labels(DEFAULT_POOL, "busy").set(snapshot.executors_busy)
        for state in AGENT_STATES:
            self.agents.labels(state).set(snapshot.agents.get(state, 0))
        # O(1): with thousands of agents, six labelled gauge updates per agent every
        # 5 s were tens of milliseconds of the event loop; a scrape builds them.
        self.agent_gauges.set(snapshot.agent_rows)
        self._cluster_gauges_set = True

    # ---------------------------------------------------------------- exposition
    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def series_names(self) -> set[str]:
        """Every series name this controller can export (``_total``, ``_bucket``…
        included), whether or not it has a value yet."""
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",),
        }
        names: set[str] = set()
        for attribute in vars(self).values():
            if isinstance(attribute, Counter | Gauge | Histogram | OptionalGauge | AgentGauges):
                for family in attribute.describe():
                    names.update(family.name + s for s in suffixes[family.type])
        return names


class ClusterSnapshot:
    """The figures behind the cluster-wide gauges, computed from store rows."""

    def __init__(self) -> None:
        self.queue: dict[str, int] = {}
        self.running = 0
        self.executors_total = 0
        self.executors_busy = 0
        self.agents: dict[str, int] = dict.fromkeys(AGENT_STATES, 0)
        #: Online agents: (name, cpu_percent, memory_percent, heartbeat extras as stored)
        self.agent_rows: list[AgentFigureRow] = []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def pool_in_use(store: Store) -> int:
    """Connections checked out of the store's engines' pools (read and write)."""
    total = 0
    engines = {id(e): e for e in (store.read_engine, store.write_engine)}
    for engine in engines.values():
        checkedout = getattr(engine.pool, "checkedout", None)
        if callable(checkedout):
            total += int(checkedout())
    return total


class MetricsUpdater:
    """Loop service (every controller, every few seconds): refreshes this controller's
    gauges and, on the leader only, the cluster-wide gauges from a store snapshot."""

    INTERVAL = 5.0

    def __init__(self, metrics: Metrics, store: Store, lease: LeaderLease, clock: Clock) -> None:
        self.metrics = metrics
        self.store = store
        self.lease = lease
        self.clock = clock

    def refresh_local(self) -> None:
        """The cheap, store-free gauges (also refreshed at every scrape)."""
        self.metrics.set_leadership(self.lease.epoch)
        self.metrics.db_pool_in_use.set(pool_in_use(self.store))

    async def run_once(self) -> None:
        self.refresh_local()
        try:
            if self.lease.is_leader:
                snapshot = await self.snapshot()
            else:
                await self.store.ping()
                snapshot = None
        except Exception as exc:  # the loop must go on reporting the store as down
            self.metrics.store_up.set(0)
            log.warning("metrics.store_query_failed", error=repr(exc))
            return
        self.metrics.store_up.set(1)
        # Leadership may have changed during the awaits: re-check before publishing.
        self.refresh_local()
        if snapshot is not None and self.lease.is_leader:
            self.metrics.set_cluster_gauges(snapshot)

    async def snapshot(self) -> ClusterSnapshot:
        started = time.perf_counter()
        queued, snap_running = await queue_figures(self.store)
        agent_rows, busy = await agent_gauge_rows(self.store)
        snap = ClusterSnapshot()
        for expression, count in queued.items():
            key = expression or ANY_AGENT
            snap.queue[key] = snap.queue.get(key, 0) + count
        snap.running = snap_running
        for agent_id, name, online, draining, executors, cpu, memory, extras in agent_rows:
            if not online:
                snap.agents["offline"] += 1
                continue
            snap.agents["draining" if draining else "online"] += 1
            snap.executors_total += executors
            snap.executors_busy += busy.get(agent_id, 0)
            # The extras (JSON) are decoded only when scraped (AgentGauges).
            snap.agent_rows.append((name, cpu, memory, extras))
        log.debug("metrics.snapshot", seconds=round(time.perf_counter() - started, 4))
        return snap
