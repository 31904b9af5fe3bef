"""/api/v1/agents: the fleet as users see it; drain and resume."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.schemas import AgentOut
from conveyor.controller.wakeups import DISPATCH
from conveyor.store.agent_rows import agent_listing

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


class AgentItem(TypedDict):
    """``AgentOut`` as a plain dict (same fields, same order): serialised without a
    model instance per agent."""

    id: int
    name: str
    labels: list[str]
    executors: int
    busy: int
    state: str
    version: str
    registered_at: datetime
    last_seen_at: datetime
    cpu_percent: int | None
    memory_percent: int | None
    pool: str | None
    ephemeral: bool


_LISTING = TypeAdapter(list[AgentItem])


@router.get("", response_model=list[AgentOut])
async def list_agents(runtime: RuntimeDep, _: CallerDep) -> Response:
    # The whole fleet in one pydantic-core call (no record, model or response
    # validation per agent): with 2,000 agents, what the old listing cost stalled the
    # event loop for tens of milliseconds (conveyor.store.agent_rows).
    rows = await agent_listing(runtime.store)
    return Response(_LISTING.dump_json(rows), media_type="application/json")  # type: ignore[arg-type]


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
