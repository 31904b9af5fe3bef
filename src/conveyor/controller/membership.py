"""Controllers announce themselves in the store, so any of them can list the cluster."""

from __future__ import annotations

from datetime import timedelta

from conveyor import __version__
from conveyor.controller.clock import Clock
from conveyor.store import Store
from conveyor.store.records import ControllerRecord

HEARTBEAT_SECONDS = 2.0
#: A controller unheard of for this long is not listed; after 10x it is forgotten.
ALIVE_SECONDS = 3 * HEARTBEAT_SECONDS


class ClusterMembership:
    def __init__(
        self, store: Store, controller_id: str, address: str, role: str, clock: Clock
    ) -> None:
        self.store = store
        self.controller_id = controller_id
        self.address = address
        self.role = role
        self.clock = clock

    async def run_once(self) -> None:
        now = self.clock()
        await self.store.controller_heartbeat(
            self.controller_id, self.address, __version__, self.role, now
        )

    async def members(self) -> list[ControllerRecord]:
        now = self.clock()
        return await self.store.list_controllers(now - timedelta(seconds=ALIVE_SECONDS))

    async def forget_old(self) -> None:
        now = self.clock()
        await self.store.forget_controllers(now - timedelta(seconds=10 * ALIVE_SECONDS))
