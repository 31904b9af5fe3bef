"""The policy simulator: replay a recorded workload through :func:`conveyor.core.scaling.decide`
(the very function the autoscaler calls) on a virtual clock, and measure queue wait and
cost (agent-hours). Pure: a trace and a pool in, a :class:`SimulationResult` out.

Discrete-event model: build arrivals, build ends, agents becoming ready (a start-up
delay after the decision that asked for them) and autoscaler steps (every
``interval`` seconds) are events on one heap. Between events, queued builds are given
FIFO to ready, non-draining agents with a free executor. An agent costs from the
moment it is asked for until it is stopped; an ephemeral agent stops after its build.
Builds whose label expression the pool does not serve are left out (counted apart).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from conveyor.core.labels import LabelExpressionError, matches
from conveyor.core.scaling import (
    AgentView,
    PoolSnapshot,
    PoolSpec,
    ScalingState,
    WaitingBuild,
    decide,
    effective_bounds,
)

__all__ = ["SimulationResult", "TraceBuild", "percentile", "simulate"]


@dataclass(frozen=True)
class TraceBuild:
    arrival: datetime
    label_expression: str | None
    duration: float  # seconds


@dataclass
class _Agent:
    id: int
    launched_at: datetime
    ready_at: datetime
    executors: int
    ephemeral: bool
    running: list[datetime] = field(default_factory=list)  # end times
    idle_since: datetime | None = None
    draining: bool = False
    stopped_at: datetime | None = None
    builds_done: int = 0


@dataclass(frozen=True)
class SimulationResult:
    builds: int
    skipped: int  # builds the pool does not serve (label expression)
    waits: tuple[float, ...]  # queue wait of each served build, seconds
    agent_hours: float
    peak_agents: int
    decisions: int
    #: (time, queued builds, agents incl. starting ones) at every autoscaler step.
    timeline: tuple[tuple[datetime, int, int], ...]
    reasons: tuple[str, ...]

    @property
    def wait_p50(self) -> float:
        return percentile(self.waits, 50)

    @property
    def wait_p95(self) -> float:
        return percentile(self.waits, 95)

    @property
    def wait_max(self) -> float:
        return max(self.waits, default=0.0)


def percentile(values: tuple[float, ...] | list[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# Event kinds, in the order they are handled at the same instant: builds end first
# (their executors free), then agents become ready, then arrivals, then the step.
_END, _READY, _ARRIVAL, _STEP = 0, 1, 2, 3


def simulate(
    pool: PoolSpec,
    trace: list[TraceBuild],
    interval: float = 10.0,
    startup_seconds: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Replay ``trace`` (any order) through ``pool``'s policy. ``on_progress(done,
    total)`` is told as builds finish (for a progress bar)."""
    policy = pool.scaling_policy()
    labels = frozenset(pool.labels)
    served: list[TraceBuild] = []
    skipped = 0
    for build in sorted(trace, key=lambda b: b.arrival):
        if _serves(labels, build.label_expression):
            served.append(build)
        else:
            skipped += 1
    if not served:
        return SimulationResult(len(trace), skipped, (), 0.0, 0, 0, (), ())

    start = served[0].arrival
    counter = itertools.count()
    events: list[tuple[datetime, int, int, object]] = []

    def push(at: datetime, kind: int, payload: object = None) -> None:
        heapq.heappush(events, (at, kind, next(counter), payload))

    agents: dict[int, _Agent] = {}
    ids = itertools.count(1)

    def launch(now: datetime, delay: float) -> None:
        agent = _Agent(
            id=next(ids),
            launched_at=now,
            ready_at=now + timedelta(seconds=delay),
            executors=1 if pool.ephemeral else pool.executors,
            ephemeral=pool.ephemeral,
        )
        agents[agent.id] = agent
        push(agent.ready_at, _READY, agent.id)

    lo, _, _ = effective_bounds(policy, start)
    for _ in range(lo):
        launch(start, 0.0)  # the pool exists already at its minimum
    for build in served:
        push(build.arrival, _ARRIVAL, build)
    push(start, _STEP)

    queue: deque[TraceBuild] = deque()
    waits: list[float] = []
    timeline: list[tuple[datetime, int, int]] = []
    reasons: list[str] = []
    state = ScalingState()
    remaining = len(served)
    peak = 0
    now = start

    def live() -> list[_Agent]:
        return [a for a in agents.values() if a.stopped_at is None]

    def dispatch(now: datetime) -> None:
        for agent in sorted(live(), key=lambda a: a.id):
            if agent.ready_at > now or agent.draining:
                continue
            while queue and len(agent.running) < agent.executors:
                if agent.ephemeral and (agent.builds_done or agent.running):
                    break
                build = queue.popleft()
                waits.append((now - build.arrival).total_seconds())
                end = now + timedelta(seconds=build.duration)
                agent.running.append(end)
                agent.idle_since = None
                push(end, _END, agent.id)

    while events and remaining > 0:
        now, kind, _, payload = heapq.heappop(events)
        if kind == _END:
            agent = agents[int(payload)]  # type: ignore[call-overload]
            agent.running.remove(min(agent.running))
            agent.builds_done += 1
            remaining -= 1
            if on_progress is not None:
                on_progress(len(served) - remaining, len(served))
            if not agent.running:
                agent.idle_since = now
                if agent.ephemeral:
                    agent.stopped_at = now
        elif kind == _ARRIVAL:
            queue.append(payload)  # type: ignore[arg-type]
        elif kind == _STEP:
            views = tuple(
                AgentView(
                    id=a.id,
                    name=f"sim-{a.id}",
                    busy=len(a.running),
                    executors=a.executors,
                    started_at=a.ready_at,
                    idle_since=(a.idle_since or a.ready_at) if not a.running else None,
                    ephemeral=a.ephemeral,
                    draining=a.draining,
                )
                for a in live()
                if a.ready_at <= now
            )
            pending = sum(1 for a in live() if a.ready_at > now)
            snapshot = PoolSnapshot(
                pool.name, labels, views, pending, 1 if pool.ephemeral else pool.executors
            )
            waiting = [
                WaitingBuild(b.label_expression, (now - b.arrival).total_seconds()) for b in queue
            ]
            decision = decide(policy, snapshot, waiting, now, state)
            state = decision.state
            for agent_id in decision.remove:
                agents[agent_id].stopped_at = now
            for agent_id in decision.drain:
                agents[agent_id].draining = True
            for _ in range(max(0, decision.target - decision.current)):
                launch(now, startup_seconds)
            if decision.changed:
                reasons.append(f"{now:%Y-%m-%d %H:%M:%S} {decision.reason}")
            size = len([a for a in live() if not a.draining])
            peak = max(peak, len(live()))
            timeline.append((now, len(queue), size))
            push(now + timedelta(seconds=interval), _STEP)
        dispatch(now)

    end = now
    agent_seconds = sum(
        ((a.stopped_at or end) - a.launched_at).total_seconds()
        for a in agents.values()
        if a.launched_at < end
    )
    return SimulationResult(
        builds=len(trace),
        skipped=skipped,
        waits=tuple(waits),
        agent_hours=max(0.0, agent_seconds) / 3600,
        peak_agents=peak,
        decisions=len(reasons),
        timeline=tuple(timeline),
        reasons=tuple(reasons),
    )


def _serves(labels: frozenset[str], expression: str | None) -> bool:
    try:
        return matches(expression, labels)
    except LabelExpressionError:
        return False
