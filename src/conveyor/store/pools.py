"""Agent pools, their provider instances and the autoscaler's decisions.

Tables on the shared :data:`conveyor.store.schema.metadata` (migration 0010):

* ``pools`` — name, labels, min/max, provider kind and config, policy, whether its
  agents are ephemeral, and the scaling state the policy carries between decisions
  (last scale-up/down), so that a new leader continues where the old one stopped;
* ``pool_instances`` — what a provider started for a pool (a PID, a container id, a
  pod name) and the agent name it registers under: the durable record of agents
  being started (``pending`` until the agent registers) and of what to stop;
* ``scaling_decisions`` — every decision the autoscaler made, with its reason.

Agents carry their pool in the ``agents.pool`` column (and ``agents.ephemeral``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from conveyor.core.scaling import Decision, ScalingState
from conveyor.errors import Conflict, NotFound
from conveyor.store.schema import Id, agents, builds, metadata
from conveyor.store.store import ACTIVE, Fence, Store
from conveyor.store.types import UTCDateTime

__all__ = [
    "PoolAgent",
    "PoolInstance",
    "PoolRecord",
    "ScalingDecisionRecord",
    "add_instance",
    "check_leader",
    "create_pool",
    "delete_pool",
    "get_pool",
    "list_decisions",
    "list_instances",
    "list_pools",
    "pool_agents",
    "pool_instances",
    "pools",
    "queued_builds",
    "record_decision",
    "remove_instance",
    "rewrite_provider_configs",
    "scaling_decisions",
    "set_agent_pool",
    "update_pool",
    "workload",
]

pools = Table(
    "pools",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("labels", JSON, nullable=False),
    Column("min_size", Integer, nullable=False),
    Column("max_size", Integer, nullable=False),
    Column("executors", Integer, nullable=False),
    Column("provider", String(20), nullable=False),  # local | command | docker | kubernetes
    Column("provider_config", JSON, nullable=False),
    Column("policy", JSON, nullable=False),  # core.scaling.parse_policy's input, min/max aside
    Column("ephemeral", Boolean, nullable=False),
    Column("last_scale_up_at", UTCDateTime, nullable=True),
    Column("last_scale_down_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

pool_instances = Table(
    "pool_instances",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("pool", String(100), ForeignKey("pools.name", ondelete="CASCADE"), nullable=False),
    Column("agent_name", String(200), nullable=False, unique=True),
    Column("instance", String(300), nullable=False),  # PID, container id, pod name…
    Column("token_id", Id, nullable=True),  # the agent's token, revoked when it is stopped
    Column("created_at", UTCDateTime, nullable=False),
)

scaling_decisions = Table(
    "scaling_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("pool", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("current", Integer, nullable=False),
    Column("target", Integer, nullable=False),
    Column("min_size", Integer, nullable=False),
    Column("max_size", Integer, nullable=False),
    Column("rule", String(30), nullable=False),
    Column("reason", Text, nullable=False),
    Column("removed", JSON, nullable=False),  # agent names stopped
    Column("drained", JSON, nullable=False),  # agent names drained
    Column("period", String(200), nullable=True),
    Column("controller", String(200), nullable=True),
    # Queued builds the pool served at the decision (migration 0017; None before it).
    Column("waiting", Integer, nullable=True),
    Index("ix_scaling_decisions_pool_id", "pool", "id"),
)


@dataclass(frozen=True)
class PoolRecord:
    id: int
    name: str
    labels: list[str]
    min_size: int
    max_size: int
    executors: int
    provider: str
    provider_config: dict[str, Any]
    policy: dict[str, Any]
    ephemeral: bool
    last_scale_up_at: datetime | None
    last_scale_down_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def state(self) -> ScalingState:
        return ScalingState(self.last_scale_up_at, self.last_scale_down_at)

    def policy_document(self) -> dict[str, Any]:
        """The full policy (the pool's min/max win over any in the policy)."""
        return {**self.policy, "min": self.min_size, "max": self.max_size}


@dataclass(frozen=True)
class PoolInstance:
    id: int
    pool: str
    agent_name: str
    instance: str
    token_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class PoolAgent:
    """An online agent of a pool as the autoscaler sees it."""

    id: int
    name: str
    executors: int
    busy: int
    draining: bool
    ephemeral: bool
    registered_at: datetime
    #: When its last build finished (None: never ran one).
    last_finished_at: datetime | None
    cpu_percent: int | None
    memory_percent: int | None


@dataclass(frozen=True)
class ScalingDecisionRecord:
    id: int
    pool: str
    at: datetime
    current: int
    target: int
    min_size: int
    max_size: int
    rule: str
    reason: str
    removed: list[str]
    drained: list[str]
    period: str | None
    controller: str | None
    #: Queued builds the pool served when it decided (None: recorded before 0017).
    waiting: int | None = None


def _pool(row: Row[Any]) -> PoolRecord:
    m = row._mapping
    return PoolRecord(
        id=m["id"],
        name=m["name"],
        labels=list(m["labels"]),
        min_size=m["min_size"],
        max_size=m["max_size"],
        executors=m["executors"],
        provider=m["provider"],
        provider_config=dict(m["provider_config"] or {}),
        policy=dict(m["policy"] or {}),
        ephemeral=bool(m["ephemeral"]),
        last_scale_up_at=m["last_scale_up_at"],
        last_scale_down_at=m["last_scale_down_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _instance(row: Row[Any]) -> PoolInstance:
    m = row._mapping
    return PoolInstance(
        id=m["id"],
        pool=m["pool"],
        agent_name=m["agent_name"],
        instance=m["instance"],
        token_id=m["token_id"],
        created_at=m["created_at"],
    )


def _decision(row: Row[Any]) -> ScalingDecisionRecord:
    m = row._mapping
    return ScalingDecisionRecord(
        id=m["id"],
        pool=m["pool"],
        at=m["at"],
        current=m["current"],
        target=m["target"],
        min_size=m["min_size"],
        max_size=m["max_size"],
        rule=m["rule"],
        reason=m["reason"],
        removed=list(m["removed"] or []),
        drained=list(m["drained"] or []),
        period=m["period"],
        controller=m["controller"],
        waiting=m["waiting"],
    )


# -------------------------------------------------------------------- pools


async def create_pool(store: Store, values: dict[str, Any], now: datetime) -> PoolRecord:
    """Insert a pool; ``values`` are checked by the caller. 409 if the name exists."""
    async with store.write() as conn:
        try:
            await conn.execute(insert(pools).values(**values, created_at=now, updated_at=now))
        except IntegrityError as exc:
            raise Conflict(f"pool {values['name']!r} exists already") from exc
        row = (await conn.execute(select(pools).where(pools.c.name == values["name"]))).one()
    return _pool(row)


async def update_pool(store: Store, name: str, values: dict[str, Any], now: datetime) -> PoolRecord:
    async with store.write() as conn:
        result = await conn.execute(
            update(pools).where(pools.c.name == name).values(**values, updated_at=now)
        )
        if result.rowcount == 0:
            raise NotFound(f"pool {name!r} not found")
        row = (await conn.execute(select(pools).where(pools.c.name == name))).one()
    return _pool(row)


async def get_pool(store: Store, name: str) -> PoolRecord:
    async with store.read() as conn:
        row = (await conn.execute(select(pools).where(pools.c.name == name))).one_or_none()
    if row is None:
        raise NotFound(f"pool {name!r} not found")
    return _pool(row)


async def list_pools(store: Store) -> list[PoolRecord]:
    async with store.read() as conn:
        rows = (await conn.execute(select(pools).order_by(pools.c.name))).all()
    return [_pool(r) for r in rows]


async def delete_pool(store: Store, name: str) -> None:
    """Delete a pool that has no instances left (stop its agents first: set max 0)."""
    async with store.write() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(pool_instances).where(pool_instances.c.pool == name)
        )
        if left:
            raise Conflict(
                f"pool {name!r} still has {left} agent(s): set its max to 0 and wait until"
                " they are stopped, then delete it"
            )
        result = await conn.execute(delete(pools).where(pools.c.name == name))
        if result.rowcount == 0:
            raise NotFound(f"pool {name!r} not found")
        await conn.execute(update(agents).where(agents.c.pool == name).values(pool=None))


async def rewrite_provider_configs(
    conn: AsyncConnection, transform: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> int:
    """Within the caller's write transaction, replace each pool's provider config by
    ``transform(name, config)`` where it changes (a key rotation re-sealing provider
    secrets). Returns how many pools changed."""
    changed = 0
    for name, config in (await conn.execute(select(pools.c.name, pools.c.provider_config))).all():
        new = transform(name, dict(config or {}))
        if new != config:
            await conn.execute(
                update(pools).where(pools.c.name == name).values(provider_config=new)
            )
            changed += 1
    return changed


async def check_leader(store: Store, fence: Fence, now: datetime) -> None:
    """FencedOut unless ``fence`` is still the current leader epoch."""
    async with store.write() as conn:
        await store._check_fence(conn, fence, now)


# --------------------------------------------------------------- instances


async def add_instance(
    store: Store,
    pool: str,
    agent_name: str,
    instance: str,
    token_id: int | None,
    now: datetime,
) -> PoolInstance:
    async with store.write() as conn:
        await conn.execute(
            insert(pool_instances).values(
                pool=pool,
                agent_name=agent_name,
                instance=instance,
                token_id=token_id,
                created_at=now,
            )
        )
        row = (
            await conn.execute(
                select(pool_instances).where(pool_instances.c.agent_name == agent_name)
            )
        ).one()
    return _instance(row)


async def list_instances(store: Store, pool: str) -> list[PoolInstance]:
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(pool_instances)
                .where(pool_instances.c.pool == pool)
                .order_by(pool_instances.c.id)
            )
        ).all()
    return [_instance(r) for r in rows]


async def remove_instance(store: Store, instance_id: int) -> None:
    async with store.write() as conn:
        await conn.execute(delete(pool_instances).where(pool_instances.c.id == instance_id))


# ------------------------------------------------------------------ agents


async def set_agent_pool(store: Store, agent_id: int, pool: str | None, ephemeral: bool) -> None:
    """Record which pool an agent (just registered) belongs to; NotFound for a pool
    that does not exist."""
    async with store.write() as conn:
        if pool is not None:
            exists = await conn.scalar(select(pools.c.id).where(pools.c.name == pool))
            if exists is None:
                raise NotFound(f"pool {pool!r} not found")
        await conn.execute(
            update(agents).where(agents.c.id == agent_id).values(pool=pool, ephemeral=ephemeral)
        )


async def pool_agents(store: Store, pool: str) -> list[PoolAgent]:
    """The pool's online agents with their busy executors and when each last finished
    a build (the policy's idle time)."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(agents).where(agents.c.pool == pool, agents.c.online.is_(True))
            )
        ).all()
        ids = [r.id for r in rows]
        busy_rows = (
            await conn.execute(
                select(builds.c.agent_id, func.count())
                .where(builds.c.agent_id.in_(ids), builds.c.state.in_(ACTIVE))
                .group_by(builds.c.agent_id)
            )
        ).all()
        last_rows = (
            await conn.execute(
                select(builds.c.agent_id, func.max(builds.c.finished_at))
                .where(builds.c.agent_id.in_(ids))
                .group_by(builds.c.agent_id)
            )
        ).all()
    busy = {agent_id: int(n) for agent_id, n in busy_rows}
    last = dict(last_rows)
    return [
        PoolAgent(
            id=r.id,
            name=r.name,
            executors=r.executors,
            busy=busy.get(r.id, 0),
            draining=bool(r.draining),
            ephemeral=bool(r.ephemeral),
            registered_at=r.registered_at,
            last_finished_at=_aware(last.get(r.id)),
            cpu_percent=r.cpu_percent,
            memory_percent=r.memory_percent,
        )
        for r in rows
    ]


def _aware(value: datetime | str | None) -> datetime | None:
    # Defensive: an aggregate over a datetime column may come back naive or as text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


async def queued_builds(store: Store) -> list[tuple[str | None, datetime]]:
    """(label expression, queued at) of every queued build."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(builds.c.label_expression, builds.c.queued_at).where(
                    builds.c.state == "queued"
                )
            )
        ).all()
    return [(r.label_expression, r.queued_at) for r in rows]


async def workload(
    store: Store, since: datetime | None = None
) -> list[tuple[datetime, str | None, float]]:
    """Finished builds as (arrival, label expression, run seconds), oldest first: the
    simulator's trace."""
    query = select(
        builds.c.queued_at, builds.c.label_expression, builds.c.started_at, builds.c.finished_at
    ).where(builds.c.started_at.is_not(None), builds.c.finished_at.is_not(None))
    if since is not None:
        query = query.where(builds.c.queued_at >= since)
    async with store.read() as conn:
        rows = (await conn.execute(query.order_by(builds.c.queued_at, builds.c.id))).all()
    return [
        (r.queued_at, r.label_expression, max(0.0, (r.finished_at - r.started_at).total_seconds()))
        for r in rows
    ]


# --------------------------------------------------------------- decisions


async def record_decision(
    store: Store,
    decision: Decision,
    removed: list[str],
    drained: list[str],
    now: datetime,
    controller: str | None,
    fence: Fence | None = None,
) -> ScalingDecisionRecord:
    """Store a decision and the pool's new scaling state in one transaction; with a
    ``fence``, only while that leader epoch is current (else FencedOut)."""
    async with store.write() as conn:
        if fence is not None:
            await store._check_fence(conn, fence, now)
        decision_id = await conn.scalar(
            insert(scaling_decisions)
            .values(
                pool=decision.pool,
                at=now,
                current=decision.current,
                target=decision.target,
                min_size=decision.min_size,
                max_size=decision.max_size,
                rule=decision.rule,
                reason=decision.reason,
                removed=removed,
                drained=drained,
                period=decision.period,
                controller=controller,
                waiting=decision.waiting,
            )
            .returning(scaling_decisions.c.id)
        )
        await conn.execute(
            update(pools)
            .where(pools.c.name == decision.pool)
            .values(
                last_scale_up_at=decision.state.last_scale_up_at,
                last_scale_down_at=decision.state.last_scale_down_at,
            )
        )
        row = (
            await conn.execute(
                select(scaling_decisions).where(scaling_decisions.c.id == decision_id)
            )
        ).one()
    return _decision(row)


async def list_decisions(store: Store, pool: str, limit: int = 100) -> list[ScalingDecisionRecord]:
    """A pool's decisions, most recent first."""
    async with store.read() as conn:
        rows = (
            await conn.execute(
                select(scaling_decisions)
                .where(scaling_decisions.c.pool == pool)
                .order_by(scaling_decisions.c.id.desc())
                .limit(limit)
            )
        ).all()
    return [_decision(r) for r in rows]
