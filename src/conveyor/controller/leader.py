"""The leader lease: which controller runs the singleton loops, and its fencing epoch."""

from __future__ import annotations

import structlog

from conveyor.controller.clock import Clock
from conveyor.errors import StoreUnavailable
from conveyor.store import Store
from conveyor.store.store import Fence

log = structlog.get_logger(__name__)

LEADER = "leader"


class LeaderLease:
    def __init__(self, store: Store, holder: str, ttl: float, clock: Clock) -> None:
        self.store = store
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self.epoch: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    @property
    def fence(self) -> Fence | None:
        return None if self.epoch is None else Fence(LEADER, self.holder, self.epoch)

    async def run_once(self) -> bool:
        """Take or renew the lease; returns whether this controller leads now."""
        try:
            epoch = await self.store.acquire_lease(LEADER, self.holder, self.ttl, self.clock())
        except StoreUnavailable:
            epoch = None
        if epoch != self.epoch:
            log.info("leader.changed", holder=self.holder, leading=epoch is not None, epoch=epoch)
        self.epoch = epoch
        return epoch is not None

    def next_attempt_in(self) -> float:
        """The leader renews every TTL/3; the others try often, so that a dead
        leader's lease is taken over soon after it expires."""
        return self.ttl / 3 if self.is_leader else min(self.ttl / 10, 0.5)

    async def release(self) -> None:
        if self.epoch is not None:
            await self.store.release_lease(LEADER, self.holder, self.clock())
            self.epoch = None
