"""The autoscaling policy, one rule at a time, plus property tests (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core.scaling import (
    AgentView,
    Period,
    PolicyError,
    PoolSnapshot,
    ScalingPolicy,
    ScalingState,
    WaitingBuild,
    decide,
    effective_bounds,
    parse_policy,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday, noon UTC


def agent(
    id: int,
    busy: int = 0,
    executors: int = 1,
    age: float = 3600,
    idle: float | None = 3600,
    **kw: object,
) -> AgentView:
    return AgentView(
        id=id,
        name=f"a{id}",
        busy=busy,
        executors=executors,
        started_at=NOW - timedelta(seconds=age),
        idle_since=None if busy else NOW - timedelta(seconds=idle if idle is not None else 0),
        **kw,  # type: ignore[arg-type]
    )


def pool(*agents: AgentView, labels: str = "linux", pending: int = 0) -> PoolSnapshot:
    return PoolSnapshot(
        name="linux", labels=frozenset(labels.split(",")), agents=agents, pending=pending
    )


def waiting(n: int, seconds: float = 60, expr: str | None = "linux") -> list[WaitingBuild]:
    return [WaitingBuild(expr, seconds) for _ in range(n)]


def test_builds_waiting_longer_than_t_for_a_served_label_grow_the_pool() -> None:
    policy = ScalingPolicy(min_size=1, max_size=5, scale_up_utilization=None)
    busy = [agent(i, busy=1) for i in range(3)]
    d = decide(policy, pool(*busy), waiting(7), NOW, ScalingState())
    assert (d.current, d.target, d.rule) == (3, 5, "wait")
    assert d.reason == "pool linux 3 → 5: 7 builds waited > 30 s for `linux`"
    assert d.state.last_scale_up_at == NOW
    assert d.waiting == 7


def test_a_decision_counts_the_queued_builds_the_pool_serves() -> None:
    policy = ScalingPolicy(min_size=1, max_size=5)
    queue = [*waiting(2, seconds=1), *waiting(3, expr="windows"), *waiting(1, expr=None)]
    d = decide(policy, pool(agent(1, busy=1)), queue, NOW, ScalingState())
    assert d.waiting == 3  # two for `linux`, one for any agent; not the windows ones


def test_builds_for_other_labels_or_not_waiting_long_do_not_grow_it() -> None:
    policy = ScalingPolicy(min_size=1, max_size=5, scale_up_utilization=None)
    p = pool(agent(1, busy=1))
    assert decide(policy, p, waiting(4, expr="windows"), NOW, ScalingState()).target == 1
    assert decide(policy, p, waiting(4, seconds=10), NOW, ScalingState()).target == 1


def test_free_executors_and_pending_agents_absorb_waiting_builds() -> None:
    policy = ScalingPolicy(min_size=0, max_size=10, scale_up_utilization=None)
    d = decide(
        policy, pool(agent(1, busy=1, executors=3), pending=1), waiting(3), NOW, ScalingState()
    )
    # 2 free executors + 1 pending agent (1 executor) cover the 3 builds.
    assert d.target == d.current == 2


def test_executor_utilization_grows_by_one() -> None:
    policy = ScalingPolicy(min_size=1, max_size=5, scale_up_utilization=0.75)
    p = pool(agent(1, busy=2, executors=2), agent(2, busy=1, executors=2))
    d = decide(policy, p, waiting(1, seconds=1), NOW, ScalingState())
    assert (d.target, d.rule) == (3, "utilization")
    assert "utilization 75%" in d.reason


def test_cpu_and_memory_rules_on_busy_agents_while_builds_wait() -> None:
    policy = ScalingPolicy(min_size=1, max_size=5, scale_up_utilization=None)
    queue = waiting(1, seconds=1)
    hot = pool(
        agent(1, busy=1, executors=2, cpu_percent=90), agent(2, busy=1, executors=2, cpu_percent=75)
    )
    d = decide(policy, hot, queue, NOW, ScalingState())
    assert (d.target, d.rule) == (3, "cpu")
    assert "average CPU 82 % > 80 % on busy agents" in d.reason
    full = pool(
        agent(1, busy=1, executors=2, memory_percent=90),
        agent(2, busy=1, executors=2, memory_percent=85),
    )
    d = decide(policy, full, queue, NOW, ScalingState())
    assert (d.target, d.rule) == (3, "memory")
    calm = pool(agent(1, busy=1, executors=2, cpu_percent=80, memory_percent=85))
    assert decide(policy, calm, queue, NOW, ScalingState()).rule == "none"
    # A hot host with nothing waiting, or hot idle agents: no reason to grow.
    assert decide(policy, hot, [], NOW, ScalingState()).target == 2
    idle_hot = pool(agent(1, cpu_percent=99, idle=1), agent(2, busy=1, executors=2, cpu_percent=10))
    assert decide(policy, idle_hot, queue, NOW, ScalingState()).target == 2


def test_api_latency_rule_only_when_configured() -> None:
    p = pool(agent(1, idle=1))
    off = ScalingPolicy(min_size=1, max_size=3)
    assert decide(off, p, [], NOW, ScalingState(), api_latency_seconds=9).target == 1
    on = ScalingPolicy(min_size=1, max_size=3, api_latency_seconds=0.5)
    d = decide(on, p, [], NOW, ScalingState(), api_latency_seconds=0.8)
    assert (d.target, d.rule) == (2, "latency")


def test_growth_is_capped_at_max_and_step() -> None:
    policy = ScalingPolicy(min_size=0, max_size=4, scale_up_utilization=None)
    d = decide(policy, pool(agent(1, busy=1)), waiting(50), NOW, ScalingState())
    assert d.target == 4
    stepped = ScalingPolicy(min_size=0, max_size=40, max_scale_up_step=3)
    assert decide(stepped, pool(agent(1, busy=1)), waiting(50), NOW, ScalingState()).target == 4
    at_max = decide(
        policy, pool(*[agent(i, busy=1) for i in range(4)]), waiting(9), NOW, ScalingState()
    )
    assert at_max.target == 4 and "at its maximum 4" in at_max.reason


def test_scale_up_cooldown() -> None:
    policy = ScalingPolicy(min_size=0, max_size=9, scale_up_cooldown_seconds=60)
    p = pool(agent(1, busy=1))
    recent = ScalingState(last_scale_up_at=NOW - timedelta(seconds=30))
    assert decide(policy, p, waiting(3), NOW, recent).target == 1
    old = ScalingState(last_scale_up_at=NOW - timedelta(seconds=61))
    assert decide(policy, p, waiting(3), NOW, old).target == 4


def test_idle_agents_go_gradually_ephemeral_first_then_newest() -> None:
    policy = ScalingPolicy(
        min_size=1, max_size=9, scale_down_idle_seconds=300, max_scale_down_step=2
    )
    old = agent(1, age=86400)
    newer = agent(2, age=7200)
    newest = agent(3, age=3600)
    eph = agent(4, age=90000, ephemeral=True)
    d = decide(policy, pool(old, newer, newest, eph), [], NOW, ScalingState())
    assert d.rule == "idle" and d.target == 2
    assert d.remove == (4, 3)
    assert d.state.last_scale_down_at == NOW
    # Next decision right after: in cooldown.
    again = decide(policy, pool(old, newer), [], NOW + timedelta(seconds=5), d.state)
    assert again.target == 2 and again.rule == "cooldown" and not again.remove
    later = decide(policy, pool(old, newer), [], NOW + timedelta(seconds=61), d.state)
    assert later.remove == (2,) and later.target == 1  # never below min; the oldest stays


def test_no_scale_down_while_builds_for_the_pool_are_queued() -> None:
    policy = ScalingPolicy(min_size=0, max_size=9, scale_down_idle_seconds=300)
    p = pool(agent(1), agent(2))
    d = decide(policy, p, waiting(1, seconds=1), NOW, ScalingState())
    assert d.rule == "busy" and not d.remove and d.target == 2
    other = decide(policy, p, waiting(1, seconds=1, expr="windows"), NOW, ScalingState())
    assert other.rule == "idle" and len(other.remove) == 1


def test_agents_not_idle_long_enough_or_busy_stay() -> None:
    policy = ScalingPolicy(min_size=0, max_size=9, scale_down_idle_seconds=300)
    p = pool(agent(1, idle=100), agent(2, busy=1))
    d = decide(policy, p, [], NOW, ScalingState())
    assert d.target == 2 and not d.remove


def test_scale_down_waits_after_a_scale_up() -> None:
    policy = ScalingPolicy(min_size=0, max_size=9, scale_down_cooldown_seconds=120)
    state = ScalingState(last_scale_up_at=NOW - timedelta(seconds=60))
    d = decide(policy, pool(agent(1)), [], NOW, state)
    assert d.rule == "cooldown" and not d.remove


def test_below_min_grows_at_once_ignoring_cooldown() -> None:
    policy = ScalingPolicy(min_size=2, max_size=4)
    state = ScalingState(last_scale_up_at=NOW)
    d = decide(policy, pool(), [], NOW, state)
    assert (d.target, d.rule) == (2, "min")
    assert d.reason == "pool linux 0 → 2: below the minimum 2"


def test_above_max_stops_idle_and_drains_busy_never_stops_busy() -> None:
    policy = ScalingPolicy(min_size=0, max_size=1)
    p = pool(agent(1, busy=1, age=10), agent(2, busy=1, age=20), agent(3, age=5000))
    d = decide(policy, p, [], NOW, ScalingState())
    assert d.target == 1
    assert d.remove == (3,)
    assert d.drain == (1,)  # the newest busy one drains; the oldest stays


def test_idle_draining_agents_are_always_removed() -> None:
    policy = ScalingPolicy(min_size=0, max_size=3)
    p = pool(agent(1), agent(2, draining=True), agent(3, busy=1, draining=True))
    d = decide(policy, p, [], NOW, ScalingState(last_scale_up_at=NOW))
    assert 2 in d.remove and 3 not in d.remove
    assert d.current == 1


def test_periods_override_bounds_last_match_wins_in_its_time_zone() -> None:
    policy = ScalingPolicy(
        min_size=2,
        max_size=8,
        periods=(
            Period("weekday nights", "* 0-6 * * 1-5", "Europe/Berlin", min_size=1),
            Period("weekends", "* * * * 6,0", "Europe/Berlin", min_size=0, max_size=2),
            Period("all of friday night", "* 0-6 * * 5", "Europe/Berlin", min_size=3),
        ),
    )
    assert effective_bounds(policy, NOW) == (2, 8, None)
    # 01:30 UTC Wednesday = 02:30 in Berlin: weekday night.
    wed_night = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    assert effective_bounds(policy, wed_night) == (1, 8, "weekday nights")
    # 23:30 UTC Friday = 00:30 Saturday in Berlin: weekend, not a weekday night.
    fri_late = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    assert effective_bounds(policy, fri_late) == (0, 2, "weekends")
    # 02:00 UTC Friday: both weekday nights and friday night match; the last wins.
    fri_night = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)
    assert effective_bounds(policy, fri_night) == (3, 8, "all of friday night")
    d = decide(policy, pool(agent(1, busy=1)), [], fri_night, ScalingState())
    assert d.target == 3 and d.rule == "schedule-min" and "period all of friday night" in d.reason


def test_weekend_period_shrinks_the_pool_to_its_max() -> None:
    policy = ScalingPolicy(
        min_size=2, max_size=8, periods=(Period("weekends", "* * * * 6,0", "UTC", max_size=1),)
    )
    saturday = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    d = decide(policy, pool(agent(1, age=99999), agent(2)), [], saturday, ScalingState())
    assert (d.min_size, d.max_size, d.target, d.remove) == (1, 1, 1, (2,))


def test_parse_policy_and_its_errors() -> None:
    policy = parse_policy(
        {
            "min": 1,
            "max": 6,
            "scale_up_wait_seconds": 20,
            "periods": [{"name": "nights", "cron": "* 0-6 * * *", "timezone": "UTC", "min": 0}],
        }
    )
    assert policy.max_size == 6 and policy.periods[0].min_size == 0
    for bad, message in [
        ({"min": 3, "max": 1}, "min 3 > max 1"),
        ({"mx": 3}, "unknown policy field"),
        ({"max": "lots"}, "must be a number"),
        ({"max": -1}, "must not be negative"),
        ({"periods": [{"cron": "every night"}]}, "invalid cron"),
        ({"periods": [{"cron": "* * * * *", "timezone": "Mars/Olympus"}]}, "unknown time zone"),
        ({"max_scale_down_step": 0}, "at least 1"),
    ]:
        with pytest.raises(PolicyError, match=message):
            parse_policy(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ properties

agent_strategy = st.builds(
    lambda i, busy, execs, age, idle, eph, drain, cpu: AgentView(
        id=i,
        name=f"a{i}",
        busy=min(busy, execs),
        executors=execs,
        started_at=NOW - timedelta(seconds=age),
        idle_since=None if busy else NOW - timedelta(seconds=idle),
        ephemeral=eph,
        draining=drain,
        cpu_percent=cpu,
    ),
    st.integers(1, 10_000),
    st.integers(0, 3),
    st.integers(1, 3),
    st.floats(0, 1e6),
    st.floats(0, 1e4),
    st.booleans(),
    st.booleans(),
    st.none() | st.floats(0, 100),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ScalingPolicy, list[AgentView], list[WaitingBuild]]:
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(lo, 10))
    policy = ScalingPolicy(
        min_size=lo,
        max_size=hi,
        scale_down_idle_seconds=draw(st.floats(0, 600)),
        max_scale_down_step=draw(st.integers(1, 4)),
        scale_up_cooldown_seconds=draw(st.floats(0, 120)),
        scale_down_cooldown_seconds=draw(st.floats(0, 120)),
    )
    agents = draw(st.lists(agent_strategy, max_size=14, unique_by=lambda a: a.id))
    queue = draw(
        st.lists(
            st.builds(WaitingBuild, st.sampled_from([None, "linux", "windows"]), st.floats(0, 300)),
            max_size=30,
        )
    )
    return policy, agents, queue


@settings(max_examples=300, deadline=None)
@given(
    scenarios(), st.lists(st.tuples(st.floats(1, 400), st.integers(0, 3)), min_size=1, max_size=12)
)
def test_size_stays_within_bounds_and_busy_agents_are_never_removed(
    scenario: tuple[ScalingPolicy, list[AgentView], list[WaitingBuild]],
    steps: list[tuple[float, int]],
) -> None:
    policy, agents, queue = scenario
    now, state = NOW, ScalingState()
    next_id = 100_000
    for elapsed, finished in steps:
        now += timedelta(seconds=elapsed)
        d = decide(policy, pool(*agents), queue, now, state)
        by_id = {a.id: a for a in agents}
        for removed in d.remove:
            assert by_id[removed].busy == 0, "a busy agent was chosen for removal"
        assert not set(d.remove) & set(d.drain)
        assert d.min_size <= d.target <= d.max_size, d.reason
        # Apply it: stop removed agents, drain drained ones, start new idle ones.
        agents = [
            (a if a.id not in d.drain else AgentView(**{**a.__dict__, "draining": True}))
            for a in agents
            if a.id not in d.remove
        ]
        active = [a for a in agents if not a.draining]
        for _ in range(d.target - len(active)):
            next_id += 1
            agents.append(AgentView(next_id, f"n{next_id}", 0, 1, now, now))
        # Some builds finish: busy agents become idle.
        for _ in range(finished):
            busy = [a for a in agents if a.busy]
            if busy:
                a = busy[0]
                agents[agents.index(a)] = AgentView(**{**a.__dict__, "busy": 0, "idle_since": now})
        assert d.min_size <= len([a for a in agents if not a.draining]) <= d.max_size
        state = d.state
