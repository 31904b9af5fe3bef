from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import pytest

from conveyor.core.dispatch import (
    AgentSlot,
    Assignment,
    DispatchPlan,
    DispatchSnapshot,
    QueuedBuild,
    Strategy,
    explain_waits,
    plan_assignments,
)
from conveyor.core.labels import LabelExpressionError, matches

T0 = datetime(2024, 1, 1, 12, 0, 0)


def build(
    build_id: int,
    *,
    job: str | None = None,
    priority: int = 0,
    at: int | None = None,
    expr: str | None = None,
    limit: int | None = None,
) -> QueuedBuild:
    return QueuedBuild(
        build_id=build_id,
        job_name=job if job is not None else f"job-{build_id}",
        priority=priority,
        queued_at=T0 + timedelta(seconds=build_id if at is None else at),
        label_expression=expr,
        job_concurrency=limit,
    )


def agent(
    agent_id: int,
    name: str | None = None,
    labels: Sequence[str] = (),
    *,
    executors: int = 1,
    busy: int = 0,
    online: bool = True,
    draining: bool = False,
    cpu: float | None = None,
) -> AgentSlot:
    return AgentSlot(
        agent_id=agent_id,
        name=name if name is not None else f"agent-{agent_id}",
        labels=frozenset(labels),
        executors=executors,
        busy=busy,
        online=online,
        draining=draining,
        cpu_percent=cpu,
    )


def plan(
    queued: Sequence[QueuedBuild],
    agents: Sequence[AgentSlot],
    strategy: Strategy = Strategy.LABEL_MATCH,
    active: Mapping[str, int] | None = None,
    cursor: int | None = None,
) -> DispatchPlan:
    snap = DispatchSnapshot(queued, agents, active or {}, cursor)
    return plan_assignments(snap, strategy)


def pairs(p: DispatchPlan) -> list[tuple[int, int]]:
    return [(a.build_id, a.agent_id) for a in p.assignments]


# ---------------------------------------------------------------- ordering


def test_priority_then_fifo_then_build_id() -> None:
    queued = [
        build(1, at=10),
        build(2, priority=5, at=30),
        build(3, at=5),
        build(4, priority=5, at=20),
        build(6, at=5),
        build(5, at=5),
    ]
    p = plan(queued, [agent(1, executors=10)])
    assert [b for b, _ in pairs(p)] == [4, 2, 3, 5, 6, 1]
    assert p.waiting == {}


def test_only_first_builds_get_scarce_executors() -> None:
    queued = [build(1, at=3), build(2, priority=1, at=9), build(3, at=1)]
    p = plan(queued, [agent(1, executors=2)])
    assert pairs(p) == [(2, 1), (3, 1)]
    assert p.waiting == {1: "the only agent is busy (2/2 executors)"}


def test_duplicate_build_ids_are_assigned_once() -> None:
    p = plan([build(1), build(1)], [agent(1, executors=4)])
    assert pairs(p) == [(1, 1)]


# ---------------------------------------------------------------- matching


def test_label_expression_and_name_as_label() -> None:
    agents = [
        agent(1, "arm-box", ["linux", "docker", "arm64"]),
        agent(2, "x86-box", ["linux", "docker"]),
        agent(3, "mac", ["macos"]),
    ]
    queued = [
        build(1, expr="linux && (docker || podman) && !arm64"),
        build(2, expr="mac"),
        build(3, expr="arm-box"),
    ]
    assert pairs(plan(queued, agents)) == [(1, 2), (2, 3), (3, 1)]


def test_none_expression_matches_any_agent() -> None:
    p = plan([build(1)], [agent(7, labels=["whatever"])])
    assert pairs(p) == [(1, 7)]


def test_offline_and_draining_agents_are_ignored() -> None:
    agents = [
        agent(1, "a1", ["linux"], online=False),
        agent(2, "a2", ["linux"], draining=True),
        agent(3, "a3", ["linux"]),
    ]
    p = plan([build(1, expr="linux"), build(2, expr="linux")], agents)
    assert pairs(p) == [(1, 3)]
    assert p.waiting == {2: "the only agent matching `linux` is busy (1/1 executors)"}


def test_executors_never_over_committed() -> None:
    agents = [agent(1, executors=3, busy=1), agent(2, executors=2, busy=2), agent(3, busy=5)]
    p = plan([build(i) for i in range(10)], agents)
    assert Counter(a for _, a in pairs(p)) == {1: 2}
    assert len(p.waiting) == 8
    assert set(p.waiting.values()) == {"all 3 agents are busy (10/6 executors)"}


# ---------------------------------------------------------------- job concurrency


def test_job_concurrency_counts_snapshot_and_plan() -> None:
    queued = [build(i, job="deploy", limit=2) for i in range(1, 5)]
    p = plan(queued, [agent(1, executors=10)], active={"deploy": 1})
    assert pairs(p) == [(1, 1)]
    assert p.waiting == {
        2: "job concurrency limit reached (2 running)",
        3: "job concurrency limit reached (2 running)",
        4: "job concurrency limit reached (2 running)",
    }


def test_unplaced_build_does_not_consume_job_slot() -> None:
    queued = [
        build(1, job="j", limit=1, expr="gpu"),
        build(2, job="j", limit=1),
    ]
    p = plan(queued, [agent(1, labels=["linux"])])
    assert pairs(p) == [(2, 1)]
    assert p.waiting == {1: "no online agent matches `gpu`"}


def test_unlimited_job_concurrency() -> None:
    p = plan([build(i, job="j") for i in range(5)], [agent(1, executors=5)], active={"j": 100})
    assert len(p.assignments) == 5


# ---------------------------------------------------------------- head-of-line


def test_no_head_of_line_blocking() -> None:
    agents = [agent(1, "l1", ["linux"]), agent(2, "w1", ["windows"])]
    queued = [
        build(1, priority=10, expr="gpu"),  # nothing matches
        build(2, priority=9, expr="windows"),
        build(3, priority=8, expr="windows"),  # windows now full
        build(4, priority=1, expr="linux"),
    ]
    p = plan(queued, agents)
    assert pairs(p) == [(2, 2), (4, 1)]
    assert p.waiting == {
        1: "no online agent matches `gpu`",
        3: "the only agent matching `windows` is busy (1/1 executors)",
    }


def test_lower_priority_may_take_executor_a_waiting_build_could_use() -> None:
    # Documented policy: no reservation. Build 1 waits on its job limit; build 2 runs.
    queued = [build(1, priority=5, job="j", limit=0), build(2, priority=0)]
    p = plan(queued, [agent(1)])
    assert pairs(p) == [(2, 1)]


# ---------------------------------------------------------------- strategies


def test_label_match_packs_by_name_then_id() -> None:
    agents = [
        agent(5, "b", executors=2),
        agent(3, "a", executors=1),
        agent(2, "b", executors=1),
        agent(9, "c", executors=4),
    ]
    p = plan([build(i) for i in range(1, 6)], agents, Strategy.LABEL_MATCH)
    assert [a for _, a in pairs(p)] == [3, 2, 5, 5, 9]
    assert p.round_robin_after is None


def test_label_match_passes_cursor_through() -> None:
    p = plan([build(1)], [agent(1)], Strategy.LABEL_MATCH, cursor=42)
    assert p.round_robin_after == 42


def test_round_robin_rotates_from_cursor_and_wraps() -> None:
    agents = [agent(i, executors=5) for i in (10, 20, 30, 40)]
    p = plan([build(i) for i in range(1, 7)], agents, Strategy.ROUND_ROBIN, cursor=20)
    assert [a for _, a in pairs(p)] == [30, 40, 10, 20, 30, 40]
    assert p.round_robin_after == 40


def test_round_robin_without_cursor_starts_at_lowest_id() -> None:
    agents = [agent(i) for i in (7, 3, 5)]
    p = plan([build(1), build(2)], agents, Strategy.ROUND_ROBIN)
    assert [a for _, a in pairs(p)] == [3, 5]
    assert p.round_robin_after == 5


def test_round_robin_skips_full_and_non_matching_agents() -> None:
    agents = [
        agent(1, labels=["linux"], executors=1),
        agent(2, labels=["windows"], executors=9),
        agent(3, labels=["linux"], executors=1, busy=1),
        agent(4, labels=["linux"], executors=2),
    ]
    queued = [build(i, expr="linux") for i in range(1, 5)]
    p = plan(queued, agents, Strategy.ROUND_ROBIN, cursor=1)
    assert [a for _, a in pairs(p)] == [4, 1, 4]
    assert p.waiting == {4: "all 3 agents matching `linux` are busy (4/4 executors)"}
    assert p.round_robin_after == 4


def test_round_robin_cursor_is_shared_across_expressions() -> None:
    agents = [agent(1, labels=["a"], executors=5), agent(2, labels=["a", "b"], executors=5)]
    queued = [build(1, expr="a"), build(2, expr="b"), build(3, expr="a")]
    p = plan(queued, agents, Strategy.ROUND_ROBIN)
    assert [a for _, a in pairs(p)] == [1, 2, 1]


def test_least_load_prefers_fewest_busy_then_cpu_then_name() -> None:
    agents = [
        agent(1, "a", executors=4, busy=2, cpu=1.0),
        agent(2, "b", executors=4, busy=0, cpu=90.0),
        agent(3, "c", executors=4, busy=0, cpu=10.0),
        agent(4, "d", executors=4, busy=0, cpu=None),
    ]
    p = plan([build(i) for i in range(1, 9)], agents, Strategy.LEAST_LOAD)
    # busy 0: c (cpu 10) < b (cpu 90) < d (cpu unknown sorts last); then busy ties again.
    assert [a for _, a in pairs(p)] == [3, 2, 4, 3, 2, 4, 1, 3]
    assert p.round_robin_after is None


def test_least_load_name_breaks_ties() -> None:
    agents = [agent(2, "zeta", executors=2), agent(1, "alpha", executors=2)]
    p = plan([build(1), build(2), build(3)], agents, Strategy.LEAST_LOAD)
    assert [a for _, a in pairs(p)] == [1, 2, 1]


def test_strategy_accepts_plain_string() -> None:
    snap = DispatchSnapshot([build(1)], [agent(1)], {})
    assert plan_assignments(snap, "round-robin").round_robin_after == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------- reasons


def test_reason_no_agents_online() -> None:
    p = plan([build(1), build(2, expr="linux")], [agent(1, online=False)])
    assert p.waiting == {1: "no agents online", 2: "no agents online"}
    assert plan([build(1)], []).waiting == {1: "no agents online"}


def test_reason_matching_agents_offline_or_draining() -> None:
    agents = [
        agent(1, labels=["linux"], online=False),
        agent(2, labels=["linux"], draining=True),
        agent(3, labels=["windows"]),
        agent(4, labels=["mac"], online=False),
    ]
    queued = [build(1, expr="linux"), build(2, expr="mac"), build(3, expr="gpu && linux")]
    assert explain_waits(DispatchSnapshot(queued, agents, {})) == {
        1: "2 agents match `linux` but are offline or draining",
        2: "1 agent matches `mac` but is offline or draining",
        3: "no online agent matches `gpu && linux`",
    }


def test_reason_all_online_agents_draining() -> None:
    p = plan([build(1)], [agent(1, draining=True), agent(2, online=False)])
    assert p.waiting == {1: "all online agents are draining"}


def test_reason_busy_counts() -> None:
    agents = [
        agent(1, labels=["linux"], executors=2, busy=2),
        agent(2, labels=["linux"], executors=2, busy=1),
        agent(3, labels=["linux"], executors=2, busy=2),
        agent(4, labels=["windows"], executors=2),
    ]
    p = plan([build(1, expr="linux"), build(2, expr="linux")], agents)
    assert pairs(p) == [(1, 2)]
    assert p.waiting == {2: "all 3 agents matching `linux` are busy (6/6 executors)"}


def test_reason_uses_canonical_expression() -> None:
    p = plan([build(1, expr="  linux&&docker ")], [agent(1, labels=["linux"])])
    assert p.waiting == {1: "no online agent matches `linux && docker`"}


def test_invalid_expression_never_assigned() -> None:
    p = plan([build(1, expr="linux && (docker"), build(2, expr="")], [agent(1, executors=5)])
    assert p.assignments == ()
    assert p.waiting == {
        1: "invalid label expression: label expression 'linux && (docker': "
        "expected ')' at position 16",
        2: "invalid label expression: label expression '': empty expression",
    }


def test_reasons_after_every_executor_is_taken() -> None:
    agents = [agent(1, labels=["linux"]), agent(2, labels=["mac"], online=False)]
    queued = [
        build(1),
        build(2),
        build(3, expr="linux"),
        build(4, expr="mac"),
        build(5, expr="nope"),
        build(6, expr="bad && ("),
        build(7, job="j", limit=0),
    ]
    p = plan(queued, agents)
    assert pairs(p) == [(1, 1)]
    assert p.waiting == {
        2: "the only agent is busy (1/1 executors)",
        3: "the only agent matching `linux` is busy (1/1 executors)",
        4: "1 agent matches `mac` but is offline or draining",
        5: "no online agent matches `nope`",
        6: "invalid label expression: label expression 'bad && (': "
        "expected a label, '!' or '(', found end of expression at position 8",
        7: "job concurrency limit reached (0 running)",
    }


def test_explain_waits_equals_plan_waiting() -> None:
    snap = DispatchSnapshot(
        [build(i, expr="linux") for i in range(4)], [agent(1, labels=["linux"])]
    )
    assert explain_waits(snap) == dict(plan_assignments(snap).waiting)
    assert len(explain_waits(snap)) == 3


def test_every_build_is_assigned_or_waiting() -> None:
    queued = [build(i, expr=e) for i, e in enumerate(["a", None, "b", "(", "a || b"])]
    p = plan(queued, [agent(1, labels=["a"], executors=2)])
    assigned = {a.build_id for a in p.assignments}
    assert assigned.isdisjoint(p.waiting)
    assert assigned | set(p.waiting) == {b.build_id for b in queued}


# ---------------------------------------------------------------- property test

LABEL_SETS = [
    ["linux", "docker"],
    ["linux", "podman", "arm64"],
    ["windows"],
    ["linux", "docker", "x86-64"],
    [],
]
EXPRESSIONS = [
    None,
    "linux",
    "linux && docker",
    "linux && (docker || podman) && !arm64",
    "windows || arm64",
    "gpu",
    "agent-3",
    "!linux",
    "linux &&",
]


def random_snapshot(rng: random.Random) -> DispatchSnapshot:
    agents = [
        agent(
            i,
            f"agent-{i}",
            rng.choice(LABEL_SETS),
            executors=rng.randint(0, 3),
            busy=rng.randint(0, 4),
            online=rng.random() < 0.8,
            draining=rng.random() < 0.1,
            cpu=rng.choice([None, rng.uniform(0, 100)]),
        )
        for i in rng.sample(range(1, 100), rng.randint(0, 12))
    ]
    jobs = [f"job-{i}" for i in range(6)]
    limits = {j: rng.choice([None, 0, 1, 2, 3]) for j in jobs}
    queued = []
    for build_id in rng.sample(range(1, 100), rng.randint(0, 40)):
        job = rng.choice(jobs)
        queued.append(
            build(
                build_id,
                job=job,
                priority=rng.randint(0, 3),
                at=rng.randint(0, 20),
                expr=rng.choice(EXPRESSIONS),
                limit=limits[job],
            )
        )
    queued += rng.sample(queued, min(len(queued), 3))  # duplicates on purpose
    active = {j: rng.randint(0, 2) for j in jobs if rng.random() < 0.5}
    cursor = rng.choice([None, rng.randint(0, 100)])
    return DispatchSnapshot(queued, agents, active, cursor)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_randomized_invariants(strategy: Strategy) -> None:
    rng = random.Random(20240101)
    for _ in range(400):
        snap = random_snapshot(rng)
        p = plan_assignments(snap, strategy)
        agents = {a.agent_id: a for a in snap.agents}
        builds = {b.build_id: b for b in snap.queued}

        assigned = [a.build_id for a in p.assignments]
        assert len(assigned) == len(set(assigned)), "build assigned twice"
        assert set(assigned).isdisjoint(p.waiting)
        assert set(assigned) | set(p.waiting) == set(builds)

        per_agent = Counter(a.agent_id for a in p.assignments)
        for agent_id, n in per_agent.items():
            slot = agents[agent_id]
            assert slot.online and not slot.draining
            assert slot.busy + n <= slot.executors, "agent over-committed"

        per_job = Counter(builds[b].job_name for b in assigned)
        for job, n in per_job.items():
            limit = next(b.job_concurrency for b in builds.values() if b.job_name == job)
            if limit is not None:
                assert snap.active_per_job.get(job, 0) + n <= limit

        for a in p.assignments:
            b, slot = builds[a.build_id], agents[a.agent_id]
            assert matches(b.label_expression, slot.labels | {slot.name})

        # Work-conserving: free executors only shrink during a plan, so a build waiting
        # for an agent has no matching free executor left at the end either.
        for build_id, reason in p.waiting.items():
            b = builds[build_id]
            if reason.startswith("invalid label expression"):
                with pytest.raises(LabelExpressionError):
                    matches(b.label_expression, set())
                continue
            if reason.startswith("job concurrency limit"):
                assert b.job_concurrency is not None
                assert snap.active_per_job.get(b.job_name, 0) + per_job[b.job_name] >= (
                    b.job_concurrency
                )
                continue
            for slot in snap.agents:
                if slot.online and not slot.draining:
                    free = slot.executors - slot.busy - per_agent[slot.agent_id]
                    if free > 0:
                        assert not matches(b.label_expression, slot.labels | {slot.name})

        if strategy is not Strategy.ROUND_ROBIN:
            assert p.round_robin_after == snap.round_robin_after
        elif p.assignments:
            assert p.round_robin_after == p.assignments[-1].agent_id


def test_assignment_is_a_value() -> None:
    assert Assignment(1, 2) == Assignment(1, 2)


# ---------------------------------------------------------------- performance


@pytest.mark.parametrize("strategy", list(Strategy))
def test_large_snapshot_is_fast(strategy: Strategy) -> None:
    rng = random.Random(7)
    agents = [
        agent(
            i,
            f"agent-{i}",
            rng.choice(LABEL_SETS),
            executors=rng.randint(1, 4),
            busy=rng.randint(0, 2),
            online=rng.random() < 0.9,
            draining=rng.random() < 0.05,
            cpu=rng.choice([None, rng.uniform(0, 100)]),
        )
        for i in range(2000)
    ]
    expressions = [*EXPRESSIONS[:-1], *(f"agent-{i} || gpu" for i in range(200))]
    queued = [
        build(
            i,
            job=f"job-{rng.randint(0, 300)}",
            priority=rng.randint(0, 3),
            at=rng.randint(0, 10_000),
            expr=rng.choice(expressions),
            limit=rng.choice([None, 1, 2, 5]),
        )
        for i in range(10_000)
    ]
    snap = DispatchSnapshot(queued, agents, {}, None)
    start = time.perf_counter()
    p = plan_assignments(snap, strategy)
    elapsed = time.perf_counter() - start
    assert len(p.assignments) + len(p.waiting) == 10_000
    # A liveness bound only (a quadratic plan would take minutes); speed lives in bench/.
    assert elapsed < 20.0, f"{elapsed:.3f}s"
