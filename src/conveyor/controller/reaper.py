"""The reaper loop (leader only): agents that stopped heartbeating go offline, and
their builds are lost (then retried when the pipeline's retry policy allows)."""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from conveyor.controller.builds import BuildService
from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.controller.membership import ClusterMembership
from conveyor.store import Store

log = structlog.get_logger(__name__)


class Reaper:
    def __init__(
        self,
        store: Store,
        builds: BuildService,
        lease: LeaderLease,
        agent_timeout: float,
        clock: Clock,
        membership: ClusterMembership,
    ) -> None:
        self.membership = membership
        self._epoch: int | None = None
        self._leading_since: datetime | None = None
        self.store = store
        self.builds = builds
        self.lease = lease
        self.agent_timeout = agent_timeout
        self.clock = clock

    async def run_once(self) -> int:
        fence = self.lease.fence
        if fence is None:
            return 0
        await self.membership.forget_old()
        for build_id in await self.store.uncompacted_finished_builds():
            await self.builds.compact_log(build_id)
        for build_id in await self.store.compacted_builds_with_chunks():
            await self.store.drop_log_chunks(build_id)  # left by a crash midway
        now = self.clock()
        if self._epoch != fence.epoch or self._leading_since is None:
            self._epoch, self._leading_since = fence.epoch, now
        if (now - self._leading_since).total_seconds() < self.agent_timeout:
            # A new leader (or one back from an outage of every controller) first gives
            # every agent one full timeout to check in: their silence may have been ours.
            return 0
        lost = await self.store.reap_agents(now - timedelta(seconds=self.agent_timeout), fence, now)
        for build in lost:
            log.warning("build.lost", build_id=build.id, agent_id=build.agent_id)
            await self.builds.on_finished(build)
        return len(lost)
