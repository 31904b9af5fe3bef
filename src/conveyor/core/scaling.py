"""Autoscaling policy: pure code. A pool snapshot, the queue, ``now`` and the last
decision's state go in; a :class:`Decision` (target size, agents to stop, agents to
drain, and a sentence saying why) comes out. No I/O: the autoscaler loop and the
simulator both call :func:`decide` with what they observed.

Size = agents of the pool that take builds (registered, not draining) plus agents
the provider is still starting (``pending``). Draining agents are on their way out
and do not count.

Rules, in the order they are weighed:

* **schedule** — the last period whose cron expression matches ``now`` (in the
  period's time zone) overrides min/max;
* **bounds** — below min: grow to min at once; above max: shrink to max (idle agents
  are stopped, busy ones drained, never stopped);
* **scale up** (outside the up-cooldown) — builds for a label the pool serves waited
  longer than T; executor utilization at or above a threshold (while builds wait);
  average CPU above 80 % or memory above 85 % on the busy agents (while builds
  wait); API latency above a threshold. The biggest proposal wins;
* **scale down** (outside the down-cooldown, which also follows any scale-up) —
  agents idle longer than the idle time, at most K per decision, ephemeral first,
  then the newest, so long-lived agents stay.

Idle agents already draining are always listed for removal: they finished their
builds, so stopping them interrupts nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.core.labels import LabelExpressionError, parse_label_expression

__all__ = [
    "AgentView",
    "Decision",
    "Period",
    "PolicyError",
    "PoolSnapshot",
    "PoolSpec",
    "ScalingPolicy",
    "ScalingState",
    "WaitingBuild",
    "decide",
    "effective_bounds",
    "parse_policy",
    "parse_pool_document",
]


class PolicyError(ValueError):
    """An invalid policy document (bad field, bad cron expression, bad time zone)."""


@dataclass(frozen=True)
class Period:
    """While ``cron`` matches the current minute (in ``timezone``), these bounds apply.

    ``* 0-6 * * 1-5`` is "weekday nights", ``* * * * 6,0`` "weekends". A bound left
    ``None`` keeps the pool's own."""

    name: str
    cron: str
    timezone: str = "UTC"
    min_size: int | None = None
    max_size: int | None = None

    def matches(self, now: datetime) -> bool:
        return _cron_matches(self.cron, self.timezone, now.replace(second=0, microsecond=0))


@lru_cache(maxsize=4096)
def _cron_matches(cron: str, timezone: str, minute: datetime) -> bool:
    """Whether ``cron`` matches ``minute`` read in ``timezone`` (cached: the simulator
    asks for the same minutes again and again)."""
    local = minute.astimezone(ZoneInfo(timezone))
    return bool(croniter.match(cron, local.replace(tzinfo=None)))


@dataclass(frozen=True)
class ScalingPolicy:
    min_size: int = 0
    max_size: int = 4
    #: Builds waiting longer than this (seconds) for a label the pool serves → grow.
    scale_up_wait_seconds: float = 30.0
    #: Busy executors / all executors at or above this → grow by one (None: off).
    scale_up_utilization: float | None = 0.9
    cpu_percent_high: float | None = 80.0
    memory_percent_high: float | None = 85.0
    #: API latency (seconds, as measured by the caller) above this → grow by one.
    api_latency_seconds: float | None = None
    #: Most agents added by one decision (the wait rule may want many).
    max_scale_up_step: int = 10
    #: An agent idle this long may be removed.
    scale_down_idle_seconds: float = 300.0
    #: At most this many agents removed per decision (gradual scale-down).
    max_scale_down_step: int = 1
    #: No scale-up this long after the last scale-up (agents need time to arrive).
    scale_up_cooldown_seconds: float = 30.0
    #: No scale-down this long after the last change of size in either direction.
    scale_down_cooldown_seconds: float = 60.0
    periods: tuple[Period, ...] = ()


@dataclass(frozen=True)
class AgentView:
    id: int
    name: str
    busy: int
    executors: int
    started_at: datetime
    #: When the agent last became idle (None while busy).
    idle_since: datetime | None
    ephemeral: bool = False
    draining: bool = False
    cpu_percent: float | None = None
    memory_percent: float | None = None


@dataclass(frozen=True)
class WaitingBuild:
    label_expression: str | None
    waited_seconds: float


@dataclass(frozen=True)
class PoolSnapshot:
    name: str
    labels: frozenset[str]
    agents: tuple[AgentView, ...]
    #: Agents requested from the provider that have not registered yet.
    pending: int = 0
    #: Executors one new agent brings (to turn waiting builds into agents).
    executors_per_agent: int = 1


@dataclass(frozen=True)
class ScalingState:
    """What a decision leaves for the next one (stored, so a new leader continues)."""

    last_scale_up_at: datetime | None = None
    last_scale_down_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    pool: str
    current: int
    target: int
    min_size: int
    max_size: int
    #: Idle agents to stop now (never a busy one).
    remove: tuple[int, ...]
    #: Busy agents to drain (they finish their builds, take no new one; stopped later).
    drain: tuple[int, ...]
    #: min | max | schedule-min | schedule-max | wait | utilization | cpu | memory |
    #: latency | idle | cooldown | busy | none
    rule: str
    reason: str
    state: ScalingState
    period: str | None = None
    #: Queued builds this pool serves (any wait): recorded for the pool's chart.
    waiting: int = 0

    @property
    def changed(self) -> bool:
        return self.target != self.current or bool(self.remove) or bool(self.drain)


# ----------------------------------------------------------------- policy documents

_POLICY_FIELDS = {
    "min": "min_size",
    "max": "max_size",
    "scale_up_wait_seconds": "scale_up_wait_seconds",
    "scale_up_utilization": "scale_up_utilization",
    "cpu_percent_high": "cpu_percent_high",
    "memory_percent_high": "memory_percent_high",
    "api_latency_seconds": "api_latency_seconds",
    "max_scale_up_step": "max_scale_up_step",
    "scale_down_idle_seconds": "scale_down_idle_seconds",
    "max_scale_down_step": "max_scale_down_step",
    "scale_up_cooldown_seconds": "scale_up_cooldown_seconds",
    "scale_down_cooldown_seconds": "scale_down_cooldown_seconds",
}
_INT_FIELDS = {"min_size", "max_size", "max_scale_up_step", "max_scale_down_step"}
_OPTIONAL_FIELDS = {
    "scale_up_utilization",
    "cpu_percent_high",
    "memory_percent_high",
    "api_latency_seconds",
}


def _number(key: str, value: Any, integer: bool, optional: bool) -> int | float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"policy field {key!r} must be a number, not {value!r}")
    if value < 0:
        raise PolicyError(f"policy field {key!r} must not be negative ({value})")
    if integer:
        if int(value) != value:
            raise PolicyError(f"policy field {key!r} must be a whole number ({value})")
        return int(value)
    return float(value)


def _period(index: int, raw: Any) -> Period:
    if not isinstance(raw, dict):
        raise PolicyError(f"periods[{index}] must be a mapping")
    unknown = set(raw) - {"name", "cron", "timezone", "min", "max"}
    if unknown:
        raise PolicyError(f"periods[{index}]: unknown field(s) {', '.join(sorted(unknown))}")
    cron = raw.get("cron")
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise PolicyError(f"periods[{index}]: invalid cron expression {cron!r}")
    tz = raw.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PolicyError(f"periods[{index}]: unknown time zone {tz!r}") from exc
    bounds = {
        f"{k}_size": _number(f"periods[{index}].{k}", raw[k], True, True)
        for k in ("min", "max")
        if k in raw
    }
    period = Period(
        name=str(raw.get("name") or f"period {index + 1}"),
        cron=cron,
        timezone=str(tz),
        min_size=bounds.get("min_size"),  # type: ignore[arg-type]
        max_size=bounds.get("max_size"),  # type: ignore[arg-type]
    )
    if (
        period.min_size is not None
        and period.max_size is not None
        and period.min_size > period.max_size
    ):
        raise PolicyError(f"periods[{index}]: min {period.min_size} > max {period.max_size}")
    return period


def parse_policy(document: dict[str, Any] | None) -> ScalingPolicy:
    """A policy from its YAML/JSON form (keys as in docs/scaling.md); raises PolicyError."""
    document = dict(document or {})
    unknown = set(document) - set(_POLICY_FIELDS) - {"periods"}
    if unknown:
        raise PolicyError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, attr in _POLICY_FIELDS.items():
        if key in document:
            values[attr] = _number(
                key, document[key], attr in _INT_FIELDS, attr in _OPTIONAL_FIELDS
            )
    raw_periods = document.get("periods") or []
    if not isinstance(raw_periods, list):
        raise PolicyError("periods must be a list")
    values["periods"] = tuple(_period(i, p) for i, p in enumerate(raw_periods))
    policy = ScalingPolicy(**values)
    if policy.min_size > policy.max_size:
        raise PolicyError(f"min {policy.min_size} > max {policy.max_size}")
    if policy.max_scale_down_step < 1 or policy.max_scale_up_step < 1:
        raise PolicyError("max_scale_up_step and max_scale_down_step must be at least 1")
    return policy


# ---------------------------------------------------------------------- the decision


def effective_bounds(policy: ScalingPolicy, now: datetime) -> tuple[int, int, str | None]:
    """(min, max, name of the period that set them or None): the last matching period
    wins; a period's min above the pool's max raises the max with it (and vice versa)."""
    lo, hi, name = policy.min_size, policy.max_size, None
    for period in policy.periods:
        if period.matches(now):
            lo = policy.min_size if period.min_size is None else period.min_size
            hi = policy.max_size if period.max_size is None else period.max_size
            name = period.name
    if lo > hi:
        if name is not None and lo != policy.min_size:
            hi = lo
        else:
            lo = hi
    return lo, hi, name


def _serves(pool_labels: frozenset[str], expression: str | None) -> bool:
    if expression is None:
        return True
    try:
        return parse_label_expression(expression).matches(pool_labels)
    except LabelExpressionError:
        return False  # such a build never runs anywhere; it is no reason to scale


def _since(now: datetime, then: datetime | None) -> float:
    return math.inf if then is None else (now - then).total_seconds()


def _average(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


@dataclass
class _Proposal:
    target: int
    rule: str
    reason: str


def _scale_up_proposals(
    policy: ScalingPolicy,
    pool: PoolSnapshot,
    active: Sequence[AgentView],
    queue: Sequence[WaitingBuild],
    api_latency_seconds: float | None,
    current: int,
) -> list[_Proposal]:
    out: list[_Proposal] = []
    served = [b for b in queue if _serves(pool.labels, b.label_expression)]
    waited = [b for b in served if b.waited_seconds > policy.scale_up_wait_seconds]
    if waited:
        per_agent = max(1, pool.executors_per_agent)
        free = sum(max(0, a.executors - a.busy) for a in active) + pool.pending * per_agent
        missing = len(waited) - free
        if missing > 0:
            step = min(policy.max_scale_up_step, math.ceil(missing / per_agent))
            expressions = sorted({b.label_expression or "any" for b in waited})
            shown = ", ".join(f"`{e}`" for e in expressions[:3])
            more = f" (+{len(expressions) - 3} more)" if len(expressions) > 3 else ""
            out.append(
                _Proposal(
                    current + step,
                    "wait",
                    f"{len(waited)} builds waited > {policy.scale_up_wait_seconds:g} s"
                    f" for {shown}{more}",
                )
            )
    executors = sum(a.executors for a in active)
    if policy.scale_up_utilization is not None and executors:
        used = sum(min(a.busy, a.executors) for a in active) / executors
        if used >= policy.scale_up_utilization and served:
            out.append(
                _Proposal(
                    current + 1,
                    "utilization",
                    f"executor utilization {used:.0%} ≥ {policy.scale_up_utilization:.0%}",
                )
            )
    # Saturated hosts are a reason to grow only while work waits for this pool: an
    # agent more does not make an idle pool's host any cooler.
    loaded = [a for a in active if a.busy] if served else []
    cpu = _average([a.cpu_percent for a in loaded])
    if policy.cpu_percent_high is not None and cpu is not None and cpu > policy.cpu_percent_high:
        out.append(
            _Proposal(
                current + 1,
                "cpu",
                f"average CPU {cpu:.0f} % > {policy.cpu_percent_high:g} % on busy agents",
            )
        )
    mem = _average([a.memory_percent for a in loaded])
    if (
        policy.memory_percent_high is not None
        and mem is not None
        and mem > policy.memory_percent_high
    ):
        out.append(
            _Proposal(
                current + 1,
                "memory",
                f"average memory {mem:.0f} % > {policy.memory_percent_high:g} % on busy agents",
            )
        )
    if (
        policy.api_latency_seconds is not None
        and api_latency_seconds is not None
        and api_latency_seconds > policy.api_latency_seconds
    ):
        out.append(
            _Proposal(
                current + 1,
                "latency",
                f"API latency {api_latency_seconds:.2f} s > {policy.api_latency_seconds:g} s",
            )
        )
    return out


def _removal_order(agents: Sequence[AgentView]) -> list[AgentView]:
    """Ephemeral agents first, then the newest: long-lived agents stay longest."""
    return sorted(agents, key=lambda a: (not a.ephemeral, -a.started_at.timestamp(), -a.id))


def decide(
    policy: ScalingPolicy,
    pool: PoolSnapshot,
    queue: Sequence[WaitingBuild],
    now: datetime,
    state: ScalingState,
    api_latency_seconds: float | None = None,
) -> Decision:
    """The decision for one pool at ``now``. Pure: same inputs, same decision."""
    lo, hi, period = effective_bounds(policy, now)
    active = [a for a in pool.agents if not a.draining]
    current = len(active) + pool.pending
    # Drained agents with nothing left to run: stopping them interrupts nothing.
    finished_draining = tuple(a.id for a in pool.agents if a.draining and a.busy == 0)
    waiting = sum(1 for b in queue if _serves(pool.labels, b.label_expression))

    def make(
        target: int,
        rule: str,
        why: str,
        remove: Sequence[int] = (),
        drain: Sequence[int] = (),
        new_state: ScalingState = state,
    ) -> Decision:
        bounds = f" (period {period}: min {lo}, max {hi})" if period else ""
        if target != current:
            reason = f"pool {pool.name} {current} → {target}: {why}{bounds}"
        else:
            reason = f"pool {pool.name} stays at {current}: {why}{bounds}"
        return Decision(
            pool=pool.name,
            current=current,
            target=target,
            min_size=lo,
            max_size=hi,
            remove=tuple(dict.fromkeys((*finished_draining, *remove))),
            drain=tuple(drain),
            rule=rule,
            reason=reason,
            state=new_state,
            period=period,
            waiting=waiting,
        )

    # Bounds first: they are not subject to cooldowns.
    if current < lo:
        why = f"below the minimum {lo}" + (f" of period {period}" if period else "")
        return make(lo, "schedule-min" if period else "min", why, new_state=state)
    if current > hi:
        excess = current - hi
        # Pending agents cannot be drained yet; count them as the first to go away
        # only once registered. Idle ones are stopped, busy ones drained.
        ordered = _removal_order(active)
        idle = [a for a in ordered if a.busy == 0][:excess]
        busy = [a for a in ordered if a.busy > 0][: max(0, excess - len(idle))]
        target = current - len(idle) - len(busy)
        why = f"above the maximum {hi}" + (f" of period {period}" if period else "")
        return make(
            target,
            "schedule-max" if period else "max",
            why,
            remove=[a.id for a in idle],
            drain=[a.id for a in busy],
            new_state=replace(state, last_scale_down_at=now),
        )

    if _since(now, state.last_scale_up_at) >= policy.scale_up_cooldown_seconds:
        proposals = _scale_up_proposals(policy, pool, active, queue, api_latency_seconds, current)
        if proposals:
            best = max(proposals, key=lambda p: p.target)
            target = min(hi, best.target)
            if target > current:
                return make(
                    target, best.rule, best.reason, new_state=replace(state, last_scale_up_at=now)
                )
            return make(current, best.rule, f"{best.reason}, but the pool is at its maximum {hi}")

    last_change = max(
        (t for t in (state.last_scale_up_at, state.last_scale_down_at) if t is not None),
        default=None,
    )
    idle_for = policy.scale_down_idle_seconds
    idle = [
        a
        for a in active
        if a.busy == 0 and a.idle_since is not None and _since(now, a.idle_since) >= idle_for
    ]
    if idle and current > lo:
        if any(_serves(pool.labels, b.label_expression) for b in queue):
            # Builds for this pool are queued: an idle agent is about to get one.
            return make(current, "busy", f"{len(idle)} idle agent(s), but builds are queued")
        if _since(now, last_change) < policy.scale_down_cooldown_seconds:
            return make(current, "cooldown", f"{len(idle)} idle agent(s), in cooldown")
        chosen = _removal_order(idle)[: min(policy.max_scale_down_step, current - lo)]
        return make(
            current - len(chosen),
            "idle",
            f"{len(chosen)} agent(s) idle > {idle_for:g} s ({', '.join(a.name for a in chosen)})",
            remove=[a.id for a in chosen],
            new_state=replace(state, last_scale_down_at=now),
        )
    return make(current, "none", "no rule applies")


# ------------------------------------------------------------------ pool documents

POOL_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,49}$"
PROVIDER_KINDS = ("local", "command", "docker", "kubernetes")
#: The fields of a pool document (YAML file, API body), in their canonical order.
POOL_FIELDS = (
    "name",
    "labels",
    "min",
    "max",
    "executors",
    "provider",
    "provider_config",
    "policy",
    "ephemeral",
)


@dataclass(frozen=True)
class PoolSpec:
    """A pool as a user writes it (YAML file, API body): checked, not yet stored."""

    name: str
    labels: tuple[str, ...]
    min_size: int
    max_size: int
    executors: int
    provider: str
    provider_config: dict[str, Any]
    policy: dict[str, Any]
    ephemeral: bool

    def scaling_policy(self) -> ScalingPolicy:
        return parse_policy({**self.policy, "min": self.min_size, "max": self.max_size})

    def values(self) -> dict[str, Any]:
        """The pool as the store keeps it (column names)."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "min_size": self.min_size,
            "max_size": self.max_size,
            "executors": self.executors,
            "provider": self.provider,
            "provider_config": self.provider_config,
            "policy": self.policy,
            "ephemeral": self.ephemeral,
        }


def parse_pool_document(document: Any) -> PoolSpec:
    """A :class:`PoolSpec` from its YAML/JSON form (docs/scaling.md); PolicyError
    says what is wrong. ``min``/``max`` live at the top level (or in ``policy``)."""
    import re

    from conveyor.core.labels import is_valid_label

    if not isinstance(document, dict):
        raise PolicyError("a pool is a mapping (name, labels, min, max, provider, policy…)")
    allowed = set(POOL_FIELDS)
    unknown = set(document) - allowed
    if unknown:
        raise PolicyError(f"unknown pool field(s): {', '.join(sorted(unknown))}")
    name = document.get("name")
    if not isinstance(name, str) or not re.match(POOL_NAME_PATTERN, name):
        raise PolicyError(
            f"pool name {name!r}: lowercase letters, digits and '-', at most 50 characters"
        )
    labels = document.get("labels", [])
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",") if part.strip()]
    if not isinstance(labels, list) or not all(
        isinstance(x, str) and is_valid_label(x) for x in labels
    ):
        raise PolicyError(f"labels must be a list of valid labels, not {labels!r}")
    policy = document.get("policy") or {}
    if not isinstance(policy, dict):
        raise PolicyError("policy must be a mapping")
    policy = dict(policy)
    lo = document.get("min", policy.pop("min", 0))
    hi = document.get("max", policy.pop("max", 4))
    policy.pop("min", None)
    policy.pop("max", None)
    executors = document.get("executors", 1)
    if isinstance(executors, bool) or not isinstance(executors, int) or not 1 <= executors <= 64:
        raise PolicyError(f"executors must be a whole number from 1 to 64, not {executors!r}")
    provider = document.get("provider", "local")
    if provider not in PROVIDER_KINDS:
        raise PolicyError(f"provider {provider!r}: use one of {', '.join(PROVIDER_KINDS)}")
    provider_config = document.get("provider_config") or {}
    if not isinstance(provider_config, dict):
        raise PolicyError("provider_config must be a mapping")
    ephemeral = document.get("ephemeral", False)
    if not isinstance(ephemeral, bool):
        raise PolicyError("ephemeral must be true or false")
    checked = parse_policy({**policy, "min": lo, "max": hi})
    return PoolSpec(
        name=name,
        labels=tuple(sorted(set(labels))),
        min_size=checked.min_size,
        max_size=checked.max_size,
        executors=executors,
        provider=provider,
        provider_config=dict(provider_config),
        policy=policy,
        ephemeral=ephemeral,
    )
