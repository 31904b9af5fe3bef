"""/api/v1/pools: agent pools (CRUD) and their autoscaling decisions; plus the agent
protocol's self-drain, used by ephemeral agents once they have their one build."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.schemas import AgentOut
from conveyor.core.scaling import PolicyError, PoolSpec, parse_pool_document
from conveyor.errors import InvalidInput
from conveyor.providers import make_provider
from conveyor.providers.secrets import check_references, placeholders, redacted, seal_config
from conveyor.store.pools import (
    PoolRecord,
    ScalingDecisionRecord,
    create_pool,
    delete_pool,
    get_pool,
    list_decisions,
    list_instances,
    list_pools,
    update_pool,
    workload,
)

router = APIRouter(tags=["pools"])


class PoolIn(BaseModel):
    """A pool (docs/scaling.md). ``min``/``max`` may also sit inside ``policy``."""

    name: str
    labels: list[str] = Field(default_factory=list)
    min: int | None = None
    max: int | None = None
    executors: int = 1
    provider: str = "local"
    provider_config: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)
    ephemeral: bool = False


class PoolPatch(BaseModel):
    """Fields to change; the others keep their value."""

    labels: list[str] | None = None
    min: int | None = None
    max: int | None = None
    executors: int | None = None
    provider: str | None = None
    provider_config: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    ephemeral: bool | None = None


class PoolOut(BaseModel):
    name: str
    labels: list[str]
    min: int
    max: int
    executors: int
    provider: str
    provider_config: dict[str, Any]
    policy: dict[str, Any]
    ephemeral: bool
    size: int = 0
    agents: list[AgentOut] = Field(default_factory=list)
    starting: list[str] = Field(default_factory=list)
    last_scale_up_at: datetime | None
    last_scale_down_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, p: PoolRecord) -> PoolOut:
        return cls(
            name=p.name,
            labels=p.labels,
            min=p.min_size,
            max=p.max_size,
            executors=p.executors,
            provider=p.provider,
            provider_config=_redacted(p.provider_config),
            policy=p.policy,
            ephemeral=p.ephemeral,
            last_scale_up_at=p.last_scale_up_at,
            last_scale_down_at=p.last_scale_down_at,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class DecisionOut(BaseModel):
    id: int
    pool: str
    at: datetime
    current: int
    target: int
    min: int
    max: int
    rule: str
    reason: str
    removed: list[str]
    drained: list[str]
    period: str | None
    controller: str | None
    waiting: int | None = None

    @classmethod
    def of(cls, d: ScalingDecisionRecord) -> DecisionOut:
        return cls(
            id=d.id,
            pool=d.pool,
            at=d.at,
            current=d.current,
            target=d.target,
            min=d.min_size,
            max=d.max_size,
            rule=d.rule,
            reason=d.reason,
            removed=d.removed,
            drained=d.drained,
            period=d.period,
            controller=d.controller,
            waiting=d.waiting,
        )


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    """Provider configs may hold credentials (a Kubernetes token): never shown."""
    return redacted(config)


def _spec(document: dict[str, Any], runtime: Any) -> PoolSpec:
    try:
        spec = parse_pool_document({k: v for k, v in document.items() if v is not None})
    except PolicyError as exc:
        raise InvalidInput(str(exc)) from None
    # Checks the config's shape, with every secret as a placeholder.
    make_provider(spec.provider, placeholders(spec.provider_config), runtime.settings.home)
    return spec


async def _sealed(
    runtime: Any, name: str, config: dict[str, Any], stored: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The provider config to store: inline secrets encrypted, references checked
    (providers/secrets.py). Raises before anything is stored."""
    sealed = seal_config(runtime.credentials, name, config, stored)
    await check_references(runtime.credentials, sealed)
    return sealed


async def pool_out(runtime: Any, pool: PoolRecord) -> PoolOut:
    out = PoolOut.of(pool)
    members = [a for a in await runtime.store.list_agents() if a.pool == pool.name and a.online]
    out.agents = [AgentOut.of(a) for a in members]
    names = {a.name for a in members}
    out.starting = [
        i.agent_name
        for i in await list_instances(runtime.store, pool.name)
        if i.agent_name not in names
    ]
    out.size = len([a for a in members if not a.draining]) + len(out.starting)
    return out


@router.get("/api/v1/pools")
async def pools_list(runtime: RuntimeDep, _: CallerDep) -> list[PoolOut]:
    return [await pool_out(runtime, p) for p in await list_pools(runtime.store)]


@router.post("/api/v1/pools", status_code=201)
async def pools_create(body: PoolIn, runtime: RuntimeDep, _: CallerDep) -> PoolOut:
    spec = _spec(body.model_dump(), runtime)
    values = spec.values()
    values["provider_config"] = await _sealed(runtime, spec.name, spec.provider_config)
    pool = await create_pool(runtime.store, values, runtime.clock())
    return await pool_out(runtime, pool)


@router.get("/api/v1/pools/{name}")
async def pools_get(name: str, runtime: RuntimeDep, _: CallerDep) -> PoolOut:
    return await pool_out(runtime, await get_pool(runtime.store, name))


@router.patch("/api/v1/pools/{name}")
async def pools_update(name: str, body: PoolPatch, runtime: RuntimeDep, _: CallerDep) -> PoolOut:
    pool = await get_pool(runtime.store, name)
    current = {
        "name": pool.name,
        "labels": pool.labels,
        "min": pool.min_size,
        "max": pool.max_size,
        "executors": pool.executors,
        "provider": pool.provider,
        "provider_config": pool.provider_config,
        "policy": pool.policy,
        "ephemeral": pool.ephemeral,
    }
    changes = body.model_dump(exclude_none=True)
    if "policy" in changes:
        # min/max given inside a new policy move to the top level.
        for key in ("min", "max"):
            if key in changes["policy"] and key not in changes:
                changes[key] = changes["policy"].pop(key)
    spec = _spec({**current, **changes}, runtime)
    values = spec.values()
    del values["name"]
    if "provider_config" in changes:
        values["provider_config"] = await _sealed(
            runtime, name, spec.provider_config, pool.provider_config
        )
    else:  # as stored (sealed already)
        values["provider_config"] = pool.provider_config
    return await pool_out(runtime, await update_pool(runtime.store, name, values, runtime.clock()))


@router.delete("/api/v1/pools/{name}", status_code=204)
async def pools_delete(name: str, runtime: RuntimeDep, _: CallerDep) -> Response:
    await delete_pool(runtime.store, name)
    return Response(status_code=204)


@router.get("/api/v1/pools/{name}/decisions")
async def pools_decisions(
    name: str,
    runtime: RuntimeDep,
    _: CallerDep,
    limit: int = Query(default=50, ge=1, le=1000),
) -> list[DecisionOut]:
    """The pool's autoscaling decisions, most recent first, each with its reason."""
    await get_pool(runtime.store, name)  # 404 for an unknown pool
    return [DecisionOut.of(d) for d in await list_decisions(runtime.store, name, limit)]


@router.post("/agent/v1/agents/{agent_id}/drain", tags=["agent protocol"])
async def agent_self_drain(agent_id: int, runtime: RuntimeDep, _: CallerDep) -> dict[str, bool]:
    """An agent asks to take no new build (an ephemeral agent, once it has its one)."""
    await runtime.store.set_agent_draining(agent_id, True)
    return {"draining": True}


class WorkloadRow(BaseModel):
    arrival: datetime
    label: str | None
    duration: float


@router.get("/api/v1/scaling/workload")
async def scaling_workload(
    runtime: RuntimeDep,
    _: CallerDep,
    since: datetime | None = None,
    limit: int = Query(default=100_000, ge=1, le=1_000_000),
) -> list[WorkloadRow]:
    """The recorded workload (finished builds: arrival, label expression, run time),
    oldest first: what `conveyor scaling trace` writes for the simulator."""
    if since is not None and since.tzinfo is None:
        raise InvalidInput("since must carry a time zone, e.g. 2026-12-01T00:00:00Z")
    rows = await workload(runtime.store, since)
    return [WorkloadRow(arrival=a, label=label, duration=d) for a, label, d in rows[:limit]]
