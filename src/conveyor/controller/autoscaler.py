"""The autoscaler (leader only): for each pool, observe, let the pure policy decide
(:func:`conveyor.core.scaling.decide`), then act through the pool's provider.

One step per pool:

1. reconcile: instances the provider no longer has (an ephemeral agent that exited,
   a crashed process) are forgotten; an idle agent of such an instance goes offline;
   an instance that never registered within the launch timeout is deleted;
2. snapshot: the pool's agents (busy, idle since, ephemeral, CPU/memory), agents still
   starting (``pending``), the queue, the API latency;
3. decide, and act: start agents; drain the ones chosen for removal; stop a drained
   agent only once the store says it runs nothing — an agent is never stopped in the
   step that drained it (the dispatcher may have given it a build just before), so
   no build is interrupted;
4. store the decision and the scaling state (cooldowns) in one transaction, so a new
   leader continues from where this one stopped.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import update

from conveyor.controller.clock import Clock
from conveyor.controller.leader import LeaderLease
from conveyor.core.scaling import (
    AgentView,
    Decision,
    PolicyError,
    PoolSnapshot,
    WaitingBuild,
    decide,
    parse_policy,
)
from conveyor.credentials.service import CredentialVault
from conveyor.providers import AgentLaunch, Provider, acquire_agent_token, make_provider
from conveyor.providers.base import revoke_agent_token
from conveyor.providers.secrets import resolve_config
from conveyor.store import Store
from conveyor.store.pools import (
    PoolAgent,
    PoolInstance,
    PoolRecord,
    ScalingDecisionRecord,
    add_instance,
    check_leader,
    list_instances,
    list_pools,
    pool_agents,
    queued_builds,
    record_decision,
    remove_instance,
)
from conveyor.store.schema import agents
from conveyor.store.store import FencedOut

log = structlog.get_logger(__name__)

#: An instance whose agent has not registered after this long is deleted.
DEFAULT_LAUNCH_TIMEOUT = 120.0


class Autoscaler:
    def __init__(
        self,
        store: Store,
        lease: LeaderLease,
        clock: Clock,
        controller_url: str,
        home: Path,
        controller_id: str | None = None,
        latency: Callable[[], float | None] | None = None,
        launch_timeout: float = DEFAULT_LAUNCH_TIMEOUT,
        on_decision: Callable[[ScalingDecisionRecord], Any] | None = None,
        provider_factory: Callable[[PoolRecord], Provider] | None = None,
        credentials: CredentialVault | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.clock = clock
        self.controller_url = controller_url
        self.home = home
        self.controller_id = controller_id
        self.latency = latency or (lambda: None)
        self.launch_timeout = launch_timeout
        #: Hook for the audit log (see docs/scaling.md); called with every stored decision.
        self.on_decision = on_decision
        #: Decrypts the provider configs' secrets (providers/secrets.py).
        self.credentials = credentials
        self.provider_factory = provider_factory
        self.providers: dict[str, tuple[str, Provider]] = {}
        self._last_kind: dict[str, tuple[str, int, int]] = {}

    async def provider_for(self, pool: PoolRecord) -> Provider:
        """One provider per pool, rebuilt when the pool's provider settings change or a
        credential it references is replaced. Its secrets are resolved here (sealed
        values decrypted, references read through the vault) and live only in memory."""
        factory = self.provider_factory
        if factory is not None:  # tests hand in their own provider
            key = repr((pool.provider, sorted(pool.provider_config.items())))

            def build() -> Provider:
                return factory(pool)

        else:
            config = await resolve_config(self.credentials, pool.name, pool.provider_config)
            # A digest, not the config: the key must not keep secrets around as text.
            key = hashlib.sha256(
                json.dumps([pool.provider, config], sort_keys=True, default=str).encode()
            ).hexdigest()

            def build() -> Provider:
                return make_provider(pool.provider, config, self.home)

        cached = self.providers.get(pool.name)
        if cached is None or cached[0] != key:
            if cached is not None:
                await _close_quietly(cached[1])
            self.providers[pool.name] = (key, build())
        return self.providers[pool.name][1]

    async def run_once(self) -> list[ScalingDecisionRecord]:
        """One step over every pool; nothing unless this controller leads."""
        if self.lease.fence is None:
            return []
        stored = []
        for pool in await list_pools(self.store):
            try:
                record = await self.step(pool)
            except FencedOut:
                log.warning("autoscaler.not_leader_anymore")
                break
            except Exception:
                log.exception("autoscaler.pool_failed", pool=pool.name)
                continue
            if record is not None:
                stored.append(record)
        return stored

    async def step(self, pool: PoolRecord) -> ScalingDecisionRecord | None:
        now = self.clock()
        fence = self.lease.fence
        if fence is None:
            return None
        # A paused former leader must not start or stop agents: check the epoch first.
        await check_leader(self.store, fence, now)
        provider = await self.provider_for(pool)
        instances = await list_instances(self.store, pool.name)
        registered = {a.name: a for a in await pool_agents(self.store, pool.name)}
        instances = await self._reconcile(pool, provider, instances, registered)
        by_name = {i.agent_name: i for i in instances}
        pending = [i for i in instances if i.agent_name not in registered]
        views = [
            _view(a, now)
            for a in registered.values()
            # A drained agent the autoscaler did not start is not its to stop.
            if not a.draining or a.name in by_name
        ]
        snapshot = PoolSnapshot(
            name=pool.name,
            labels=frozenset(pool.labels),
            agents=tuple(views),
            pending=len(pending),
            executors_per_agent=1 if pool.ephemeral else pool.executors,
        )
        queue = [
            WaitingBuild(expr, max(0.0, (now - queued_at).total_seconds()))
            for expr, queued_at in await queued_builds(self.store)
        ]
        try:
            policy = parse_policy(pool.policy_document())
        except PolicyError as exc:
            log.error("autoscaler.bad_policy", pool=pool.name, error=str(exc))
            return None
        decision = decide(policy, snapshot, queue, now, pool.state, self.latency())
        removed, drained = await self._apply(pool, provider, decision, registered, by_name)
        # A decision that changes nothing is recorded only when its kind is new (not
        # once per step while, say, builds keep waiting at the pool's maximum).
        kind = (decision.rule, decision.current, decision.target)
        if not (decision.changed or removed or drained) and (
            self._last_kind.get(pool.name) == kind or decision.rule == "none"
        ):
            return None
        self._last_kind[pool.name] = kind
        record = await record_decision(
            self.store, decision, removed, drained, now, self.controller_id, fence
        )
        log.info(
            "autoscaler.decision",
            pool=pool.name,
            current=decision.current,
            target=decision.target,
            rule=decision.rule,
            reason=decision.reason,
            removed=removed,
            drained=drained,
        )
        if self.on_decision is not None:
            await _maybe_await(self.on_decision(record))
        return record

    async def _reconcile(
        self,
        pool: PoolRecord,
        provider: Provider,
        instances: list[PoolInstance],
        registered: dict[str, PoolAgent],
    ) -> list[PoolInstance]:
        now = self.clock()
        alive = await provider.list(pool.name, {i.instance: i.agent_name for i in instances})
        kept = []
        for inst in instances:
            agent = registered.get(inst.agent_name)
            if inst.instance not in alive:
                # Gone (an ephemeral agent after its build, a crash). Its agent row goes
                # offline if idle; a busy one is left to the reaper, which loses (and
                # retries) its builds properly.
                await self._forget(inst, agent)
                registered.pop(inst.agent_name, None)
                log.info("autoscaler.instance_gone", pool=pool.name, agent=inst.agent_name)
                continue
            age = (now - inst.created_at).total_seconds()
            if agent is None and age > self.launch_timeout:
                log.warning(
                    "autoscaler.launch_timeout", pool=pool.name, agent=inst.agent_name, age=age
                )
                await provider.delete(pool.name, inst.instance)
                await self._forget(inst, None)
                continue
            kept.append(inst)
        return kept

    async def _forget(self, inst: PoolInstance, agent: PoolAgent | None) -> None:
        await remove_instance(self.store, inst.id)
        if inst.token_id is not None:
            await revoke_agent_token(self.store, inst.token_id, self.clock())
        if agent is not None and agent.busy == 0:
            async with self.store.write() as conn:
                await conn.execute(
                    update(agents).where(agents.c.id == agent.id).values(online=False)
                )

    async def _apply(
        self,
        pool: PoolRecord,
        provider: Provider,
        decision: Decision,
        registered: dict[str, PoolAgent],
        by_name: dict[str, PoolInstance],
    ) -> tuple[list[str], list[str]]:
        by_id = {a.id: a for a in registered.values()}
        removed: list[str] = []
        drained: list[str] = []
        for agent_id in (*decision.drain, *decision.remove):
            agent = by_id[agent_id]
            if agent.draining:
                continue
            await self.store.set_agent_draining(agent_id, True)
            drained.append(agent.name)
        for agent_id in decision.remove:
            agent = by_id[agent_id]
            inst = by_name.get(agent.name)
            if not agent.draining or inst is None:
                continue  # drained just now: stopped at a later step, once surely idle
            fresh = await self.store.get_agent(agent_id)
            if fresh.busy:
                continue  # given a build before the drain took effect: it finishes first
            await provider.delete(pool.name, inst.instance)
            await self._forget(inst, by_id[agent_id])
            removed.append(agent.name)
        for _ in range(max(0, decision.target - decision.current)):
            await self._start(pool, provider)
        return removed, drained

    async def _start(self, pool: PoolRecord, provider: Provider) -> None:
        now = self.clock()
        name = f"{pool.name}-{uuid.uuid4().hex[:8]}"
        token, token_id = await acquire_agent_token(self.store, pool.name, name, now)
        launch = AgentLaunch(
            pool=pool.name,
            agent_name=name,
            url=self.controller_url,
            token=token,
            labels=list(pool.labels),
            executors=1 if pool.ephemeral else pool.executors,
            ephemeral=pool.ephemeral,
        )
        try:
            instance = await provider.create(launch)
        except Exception:
            await revoke_agent_token(self.store, token_id, now)
            raise
        await add_instance(self.store, pool.name, name, instance, token_id, now)

    async def close(self) -> None:
        for _, provider in self.providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("autoscaler.provider_close_failed")
        self.providers.clear()


def _view(agent: PoolAgent, now: Any) -> AgentView:
    idle_since = None
    if agent.busy == 0:
        idle_since = max(agent.registered_at, agent.last_finished_at or agent.registered_at)
    return AgentView(
        id=agent.id,
        name=agent.name,
        busy=agent.busy,
        executors=agent.executors,
        started_at=agent.registered_at,
        idle_since=idle_since,
        ephemeral=agent.ephemeral,
        draining=agent.draining,
        cpu_percent=agent.cpu_percent,
        memory_percent=agent.memory_percent,
    )


async def _close_quietly(provider: Provider) -> None:
    try:
        await provider.close()
    except Exception:
        log.exception("autoscaler.provider_close_failed")


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


def request_latency(metrics: Any) -> Callable[[], float | None]:
    """Mean API request time since the previous call, from this controller's request
    histogram (long-polls, streams and log uploads excluded): the policy's latency."""
    last: dict[str, float] = {"sum": 0.0, "count": 0.0}

    def read() -> float | None:
        total = count = 0.0
        for metric in metrics.http_request_duration_seconds.collect():
            for sample in metric.samples:
                route = sample.labels.get("route", "")
                if "/poll" in route or "/log" in route or "/stream" in route:
                    continue
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
        d_sum, d_count = total - last["sum"], count - last["count"]
        last.update(sum=total, count=count)
        return d_sum / d_count if d_count > 0 else None

    return read


__all__ = ["DEFAULT_LAUNCH_TIMEOUT", "Autoscaler", "request_latency"]
