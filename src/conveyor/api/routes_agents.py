"""/api/v1/agents: the fleet as users see it; drain and resume."""

from __future__ import annotations

from fastapi import APIRouter

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.schemas import AgentOut
from conveyor.controller.wakeups import DISPATCH

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


@router.get("")
async def list_agents(runtime: RuntimeDep, _: CallerDep) -> list[AgentOut]:
    return [AgentOut.of(a) for a in await runtime.store.list_agents()]


@router.get("/{agent_id}")
async def get_agent(agent_id: int, runtime: RuntimeDep, _: CallerDep) -> AgentOut:
    return AgentOut.of(await runtime.store.get_agent(agent_id))


@router.post("/{agent_id}/drain")
async def drain_agent(agent_id: int, runtime: RuntimeDep, _: CallerDep) -> AgentOut:
    await runtime.store.set_agent_draining(agent_id, True)
    return AgentOut.of(await runtime.store.get_agent(agent_id))


@router.post("/{agent_id}/resume")
async def resume_agent(agent_id: int, runtime: RuntimeDep, _: CallerDep) -> AgentOut:
    await runtime.store.set_agent_draining(agent_id, False)
    runtime.wakeups.notify(DISPATCH)
    return AgentOut.of(await runtime.store.get_agent(agent_id))
