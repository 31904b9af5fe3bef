"""The dispatcher loop (leader only): snapshot -> core.dispatch decides -> store assigns."""

from __future__ import annotations

import time
import uuid

import structlog

from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.controller.wakeups import Wakeups, agent_channel
from conveyor.core.dispatch import DispatchSnapshot, Strategy, plan_assignments
from conveyor.metrics import Metrics
from conveyor.store import Store
from conveyor.store.queue_probe import has_queued_builds

log = structlog.get_logger(__name__)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        wakeups: Wakeups,
        lease: LeaderLease,
        strategy: Strategy,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.wakeups = wakeups
        self.lease = lease
        self.strategy = strategy
        self.clock = clock
        self._round_robin_after: int | None = None

    async def snapshot(self) -> DispatchSnapshot:
        rows = await self.store.dispatch_rows(self.clock())
        return DispatchSnapshot(
            queued=rows.queued,
            agents=rows.agents,
            active_per_job=rows.active_per_job,
            round_robin_after=self._round_robin_after,
        )

    async def run_once(self) -> int:
        """One dispatch pass; returns how many builds were assigned."""
        fence = self.lease.fence
        if fence is None:
            return 0
        started = time.perf_counter()
        if not await has_queued_builds(self.store):  # no need to read every agent
            return 0
        snapshot = await self.snapshot()
        if not snapshot.queued:
            return 0
        plan = plan_assignments(snapshot, self.strategy)
        if not plan.assignments:
            return 0
        triples = [(a.build_id, a.agent_id, uuid.uuid4().hex) for a in plan.assignments]
        now = self.clock()
        done = await self.store.assign_builds(triples, fence, now)
        self._round_robin_after = plan.round_robin_after
        for agent_id in {agent for _, agent, _ in done}:
            self.wakeups.notify(agent_channel(agent_id))
        if done and self.metrics is not None:
            # Latency of a pass that assigned; queue wait of each build it assigned.
            self.metrics.dispatch_latency_seconds.observe(time.perf_counter() - started)
            queued_at = {b.build_id: b.queued_at for b in snapshot.queued}
            for build_id, _, _ in done:
                if build_id in queued_at:
                    waited = (now - queued_at[build_id]).total_seconds()
                    self.metrics.queue_wait_seconds.observe(max(0.0, waited))
        return len(done)
