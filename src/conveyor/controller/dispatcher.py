"""The dispatcher loop (leader only): snapshot -> core.dispatch decides -> store assigns."""

from __future__ import annotations

import time
import uuid

import structlog

from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.controller.wakeups import Wakeups, agent_channel
from conveyor.core.dispatch import (
    AgentSlot,
    DispatchPlan,
    DispatchSnapshot,
    QueuedBuild,
    Strategy,
    plan_assignments,
)
from conveyor.metrics import Metrics
from conveyor.store import Store
from conveyor.store.store import DispatchReader

log = structlog.get_logger(__name__)

#: Queued builds read by the first page of a pass (at least 4 per free executor).
QUEUE_PAGE = 64
#: At most this many queued builds are considered in one pass.
QUEUE_LIMIT = 10_000


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

    async def _plan(
        self,
        reader: DispatchReader,
        agent_slots: list[AgentSlot],
        per_job: dict[str, int],
        free: int,
    ) -> tuple[DispatchSnapshot, DispatchPlan]:
        """Plan over the head of the queue, reading further pages only while the
        executors are not all taken and the queue goes on: builds that cannot be
        placed (labels, job concurrency) never hide later ones that can."""
        queued: list[QueuedBuild] = []
        page = min(max(QUEUE_PAGE, 4 * free), QUEUE_LIMIT)
        while True:
            rows = await reader.queued(page, queued[-1] if queued else None)
            queued.extend(rows)
            snapshot = DispatchSnapshot(
                queued=queued,
                agents=agent_slots,
                active_per_job=per_job,
                round_robin_after=self._round_robin_after,
            )
            plan = plan_assignments(snapshot, self.strategy)
            if len(plan.assignments) >= free or len(rows) < page or len(queued) >= QUEUE_LIMIT:
                return snapshot, plan
            page = min(4 * page, QUEUE_LIMIT - len(queued))

    async def run_once(self) -> int:
        """One dispatch pass; returns how many builds were assigned.

        Its cost does not grow with the queue: one index probe when nothing is
        queued; the agents and their busy executors next, stopping there when no
        executor is free (what every trigger during a burst finds); then the
        queue only as far as the free executors could reach.
        """
        fence = self.lease.fence
        if fence is None:
            return 0
        started = time.perf_counter()
        async with self.store.dispatch_reader() as reader:
            if not await reader.has_queued():  # no need to read every agent
                return 0
            agent_slots, per_job = await reader.capacity()
            free = sum(
                max(0, a.executors - a.busy) for a in agent_slots if a.online and not a.draining
            )
            if free == 0:
                return 0
            snapshot, plan = await self._plan(reader, agent_slots, per_job, free)
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
