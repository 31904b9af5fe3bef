"""/api/v1/cluster: the controllers sharing this store, the leader and its epoch."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.controller.leader import LEADER

router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])


class ControllerOut(BaseModel):
    id: str
    address: str
    version: str
    role: str
    started_at: datetime
    last_heartbeat: datetime
    leader: bool


class LeaderOut(BaseModel):
    id: str
    epoch: int
    expires_at: datetime


class ClusterOut(BaseModel):
    controllers: list[ControllerOut]
    leader: LeaderOut | None
    this_controller: str
    database: str


@router.get("")
async def cluster(runtime: RuntimeDep, _: CallerDep) -> ClusterOut:
    lease = await runtime.store.get_lease(LEADER)
    now = runtime.clock()
    leader = None
    if lease is not None and lease[2] > now:
        leader = LeaderOut(id=lease[0], epoch=lease[1], expires_at=lease[2])
    return ClusterOut(
        controllers=[
            ControllerOut(
                id=c.id,
                address=c.address,
                version=c.version,
                role=c.role,
                started_at=c.started_at,
                last_heartbeat=c.heartbeat_at,
                leader=leader is not None and leader.id == c.id,
            )
            for c in await runtime.membership.members()
        ],
        leader=leader,
        this_controller=runtime.controller_id,
        database=runtime.store.dialect,
    )
