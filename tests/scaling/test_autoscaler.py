"""The autoscaler loop against the real store (SQLite and PostgreSQL), stepped by
hand with a fake clock; the provider is a recording fake (a seam we own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.controller.autoscaler import Autoscaler, request_latency
from conveyor.controller.leader import LeaderLease
from conveyor.core.states import BuildState
from conveyor.metrics import Metrics
from conveyor.providers.base import AgentLaunch, Provider
from conveyor.store import Store
from conveyor.store.pools import create_pool, list_decisions, list_instances, set_agent_pool
from conveyor.store.store import JobFields, NewBuild
from tests.conftest import FakeClock

SPEC = "name: app\nstages:\n  - name: build\n    steps:\n      - sh: make\n"


class RecordingProvider(Provider):
    kind = "fake"

    def __init__(self) -> None:
        self.launches: list[AgentLaunch] = []
        self.live: set[str] = set()
        self.deleted: list[str] = []

    async def create(self, launch: AgentLaunch) -> str:
        self.launches.append(launch)
        instance = f"i-{len(self.launches)}"
        self.live.add(instance)
        return instance

    async def delete(self, pool: str, instance: str) -> None:
        self.deleted.append(instance)
        self.live.discard(instance)

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        return set(self.live)


def autoscaler(store: Store, clock: FakeClock, holder: str, provider: Provider) -> Autoscaler:
    lease = LeaderLease(store, holder, 5.0, clock)
    scaler = Autoscaler(
        store,
        lease,
        clock,
        controller_url="http://127.0.0.1:1",
        home=Path("."),
        controller_id=holder,
        provider_factory=lambda pool: provider,
    )
    step = scaler.run_once

    async def renew_then_step() -> list[Any]:
        # The fake clock jumps: renew the lease as its loop would have meanwhile.
        if scaler.lease.is_leader:
            await scaler.lease.run_once()
        return await step()

    scaler.run_once = renew_then_step  # type: ignore[method-assign]
    return scaler


async def make_pool(store: Store, clock: FakeClock, min_size: int = 1, **policy: Any) -> None:
    await create_pool(
        store,
        {
            "name": "linux",
            "labels": ["linux"],
            "min_size": min_size,
            "max_size": 3,
            "executors": 1,
            "provider": "local",
            "provider_config": {},
            "policy": {
                "scale_up_wait_seconds": 10,
                "scale_up_cooldown_seconds": 60,
                "scale_down_idle_seconds": 30,
                "scale_down_cooldown_seconds": 10,
                **policy,
            },
            "ephemeral": False,
        },
        clock(),
    )


async def register(store: Store, clock: FakeClock, launch: AgentLaunch) -> int:
    agent = await store.register_agent(launch.agent_name, launch.labels, 1, "t", clock())
    await set_agent_pool(store, agent.id, launch.pool, launch.ephemeral)
    return agent.id


async def queue_builds(store: Store, clock: FakeClock, n: int) -> list[int]:
    try:
        await store.create_job(
            JobFields(name="app", spec=SPEC, description=None, label_expression="linux",
                      concurrency=None, priority=0),
            None,
            clock(),
        )  # fmt: skip
    except Exception:
        pass  # exists already
    ids = []
    for _ in range(n):
        build = await store.create_build(
            NewBuild(job_name="app", parameters={}, plan={"stages": []}, steps=[], priority=0,
                     label_expression="linux", trigger="test"),
            clock(),
        )  # fmt: skip
        ids.append(build.id)
    return ids


async def test_only_the_leader_scales_and_a_new_leader_continues_from_the_store(
    store: Store, clock: FakeClock
) -> None:
    await make_pool(store, clock)
    provider_a, provider_b = RecordingProvider(), RecordingProvider()
    a = autoscaler(store, clock, "a", provider_a)
    b = autoscaler(store, clock, "b", provider_b)
    assert await a.lease.run_once() and not await b.lease.run_once()

    assert await b.run_once() == []  # not the leader: nothing at all
    [first] = await a.run_once()
    assert (first.current, first.target, first.rule) == (0, 1, "min")
    assert first.reason == "pool linux 0 → 1: below the minimum 1" and first.controller == "a"
    [launch] = provider_a.launches
    assert launch.agent_name.startswith("linux-") and launch.labels == ["linux"]
    assert launch.token.startswith("cva_") and "--pool" in launch.agent_args()
    # Starting but not registered: it counts (pending), no second one is started.
    assert await a.run_once() == []
    assert len(provider_a.launches) == 1

    await register(store, clock, launch)
    await queue_builds(store, clock, 3)
    clock.advance(15)
    [grow] = await a.run_once()
    assert (grow.current, grow.target, grow.rule) == (1, 3, "wait")
    assert grow.reason == "pool linux 1 → 3: 3 builds waited > 10 s for `linux`"
    assert (first.waiting, grow.waiting) == (0, 3)  # stored, for the pool page's chart
    [stored, _] = await list_decisions(store, "linux")
    assert stored.waiting == 3
    assert len(provider_a.launches) == 3

    # The leader goes away; b takes over. The scale-up cooldown (60 s) was stored,
    # so b, still inside it, does not scale up again although builds keep waiting.
    await a.lease.release()
    clock.advance(6)
    assert await b.lease.run_once()
    for launch in provider_a.launches[1:]:
        await register(store, clock, launch)
        provider_b.live.add(f"i-{provider_a.launches.index(launch) + 1}")
    provider_b.live.add("i-1")
    await queue_builds(store, clock, 5)
    clock.advance(20)
    decisions = await b.run_once()
    assert provider_b.launches == []
    assert all(d.target <= d.current for d in decisions)
    # After the cooldown it would grow, but the pool is at its maximum.
    clock.advance(60)
    [at_max] = await b.run_once()
    assert at_max.target == 3 and "at its maximum 3" in at_max.reason
    assert provider_b.launches == []


async def test_scale_down_drains_first_and_stops_only_idle_agents(
    store: Store, clock: FakeClock
) -> None:
    await make_pool(store, clock, max_scale_down_step=2)
    provider = RecordingProvider()
    a = autoscaler(store, clock, "a", provider)
    await a.lease.run_once()
    await a.run_once()  # 0 → 1 (min)
    ids = [await register(store, clock, provider.launches[0])]
    build_id, other = await queue_builds(store, clock, 2)
    clock.advance(61)
    await a.run_once()  # 2 builds waited > 10 s, one agent with 1 executor: 1 → 2
    ids += [await register(store, clock, launch) for launch in provider.launches[1:]]
    assert len(ids) == 2

    # The newest agent takes the build; the first stays idle.
    await store.assign_builds([(build_id, ids[1], "as-1")], None, clock())
    await store.start_build("as-1", ids[1], clock())
    await store.request_cancel(other, clock(), "test")
    clock.advance(31)
    # The idle one goes (never the busy one), even though it is the long-lived one:
    # drained in this step…
    [drain] = await a.run_once()
    assert drain.rule == "idle" and (drain.current, drain.target) == (2, 1)
    assert drain.drained == [provider.launches[0].agent_name] and drain.removed == []
    assert provider.deleted == []  # not stopped in the step that drained it
    assert (await store.get_agent(ids[0])).draining
    assert not (await store.get_agent(ids[1])).draining
    # …and stopped in the next one, once the store says it runs nothing.
    clock.advance(1)
    [stop] = await a.run_once()
    assert stop.removed == [provider.launches[0].agent_name]
    assert provider.deleted == ["i-1"]
    assert not (await store.get_agent(ids[0])).online
    assert (await store.get_agent(ids[1])).online
    assert (await store.get_build(build_id)).state == BuildState.RUNNING  # untouched
    assert [i.agent_name for i in await list_instances(store, "linux")] == [
        provider.launches[1].agent_name
    ]


async def test_a_drained_agent_that_got_a_build_is_not_stopped_until_idle(
    store: Store, clock: FakeClock
) -> None:
    await make_pool(store, clock, min_size=0)
    provider = RecordingProvider()
    a = autoscaler(store, clock, "a", provider)
    await a.lease.run_once()
    [build_id] = await queue_builds(store, clock, 1)
    clock.advance(61)
    await a.run_once()  # 0 → 1
    agent_id = await register(store, clock, provider.launches[0])
    # The dispatcher gave it a build just as it was being drained.
    await store.set_agent_draining(agent_id, True)
    await store.assign_builds([(build_id, agent_id, "as-1")], None, clock())
    clock.advance(100)
    await a.run_once()
    assert provider.deleted == []
    await store.start_build("as-1", agent_id, clock())
    await store.finish_build("as-1", agent_id, BuildState.SUCCEEDED, None, clock())
    clock.advance(1)
    [stop] = await a.run_once()
    assert stop.removed == [provider.launches[0].agent_name] and provider.deleted == ["i-1"]


async def test_a_deposed_leader_neither_acts_nor_records(store: Store, clock: FakeClock) -> None:
    await make_pool(store, clock)
    provider = RecordingProvider()
    a = autoscaler(store, clock, "a", provider)
    assert await a.lease.run_once()
    # a pauses; its lease expires and b takes over, while a still believes it leads.
    clock.advance(10)
    b = autoscaler(store, clock, "b", RecordingProvider())
    assert await b.lease.run_once()
    assert a.lease.fence is not None
    assert await Autoscaler.run_once(a) == []  # no renewal: a still believes it leads
    assert provider.launches == []
    assert await list_decisions(store, "linux") == []


def test_request_latency_is_the_mean_since_the_last_reading_without_long_polls() -> None:
    metrics = Metrics("c1")
    latency = request_latency(metrics)
    assert latency() is None  # no requests yet
    metrics.observe_http("GET", "/api/v1/builds", 200, 0.2)
    metrics.observe_http("GET", "/api/v1/jobs", 200, 0.4)
    metrics.observe_http("POST", "/agent/v1/agents/{agent_id}/poll", 200, 25.0)
    assert latency() == pytest.approx(0.3)
    assert latency() is None  # nothing new since
    metrics.observe_http("GET", "/api/v1/builds", 200, 1.0)
    assert latency() == pytest.approx(1.0)
