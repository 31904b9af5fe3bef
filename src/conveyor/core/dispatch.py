"""Dispatch policy: which queued build goes to which agent, given a snapshot.

:func:`plan_assignments` is pure: it takes a :class:`DispatchSnapshot` (the queue,
the agents and the number of active builds per job) and returns a
:class:`DispatchPlan` (assignments plus a human reason for every build that still
waits). The caller is responsible for applying the plan atomically (e.g. in a
transaction that re-checks the agents' executor counts).

Policy
------
* Builds are considered in order of ``(-priority, queued_at, build_id)``: higher
  priority first, FIFO within a priority. Duplicate ``build_id``\\s are considered
  once (the first occurrence in that order).
* A build with an invalid label expression is never assigned
  (reason ``"invalid label expression: ..."``).
* A build whose job already has ``job_concurrency`` builds active (the snapshot's
  ``active_per_job`` plus assignments made earlier in this plan) waits.
* Otherwise the build goes to an *eligible* agent: online, not draining, with a free
  executor (``busy < executors``, counting this plan's assignments) and whose
  ``labels | {name}`` satisfy the expression (``None`` = any agent).
* **No head-of-line blocking, no reservation**: a build that cannot be placed does
  not stop later (lower-priority) builds from taking any executor they match, even
  one the waiting build could later use. Each build simply takes a matching free
  executor in order.

Strategies choose among the eligible agents:

* ``label-match``: the first in ``(name, agent_id)`` order — packs work onto the
  first agents.
* ``round-robin``: the first by ``agent_id`` strictly greater than the cursor
  (``round_robin_after``), wrapping around; the cursor moves to each assigned agent
  and the final cursor is returned in the plan.
* ``least-load``: fewest busy executors (including this plan's assignments), then
  lowest ``cpu_percent`` — an agent with *unknown* CPU (``None``) sorts after every
  agent with a known value — then ``(name, agent_id)``.

Cost is about O(queued · log + distinct expressions · agents): each distinct
expression is parsed and matched against the agents once.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from conveyor.core.labels import LabelExpression, LabelExpressionError, parse_label_expression

__all__ = [
    "AgentSlot",
    "Assignment",
    "DispatchPlan",
    "DispatchSnapshot",
    "QueuedBuild",
    "Strategy",
    "explain_waits",
    "plan_assignments",
]


class Strategy(StrEnum):
    LABEL_MATCH = "label-match"
    ROUND_ROBIN = "round-robin"
    LEAST_LOAD = "least-load"


@dataclass(frozen=True)
class QueuedBuild:
    build_id: int
    job_name: str
    priority: int  # higher runs first
    queued_at: datetime  # FIFO within a priority (tie-break by build_id)
    label_expression: str | None  # None = any agent
    job_concurrency: int | None  # max builds of this job active at once; None = unlimited


@dataclass(frozen=True)
class AgentSlot:
    agent_id: int
    name: str  # the agent's name is also one of its labels for matching
    labels: frozenset[str]
    executors: int
    busy: int  # executors in use
    online: bool
    draining: bool = False  # takes no new builds
    cpu_percent: float | None = None


@dataclass(frozen=True)
class DispatchSnapshot:
    queued: Sequence[QueuedBuild]
    agents: Sequence[AgentSlot]
    active_per_job: Mapping[str, int] = field(default_factory=dict)
    round_robin_after: int | None = None  # agent_id assigned last by round-robin


@dataclass(frozen=True)
class Assignment:
    build_id: int
    agent_id: int


@dataclass(frozen=True)
class DispatchPlan:
    assignments: tuple[Assignment, ...]
    waiting: Mapping[int, str]  # build_id -> human reason it still waits (dispatch order)
    round_robin_after: int | None


# ------------------------------------------------------------------ internals


class _Agents:
    """Mutable per-plan view of the agents (indexed by position in ``snapshot.agents``)."""

    def __init__(self, agents: Sequence[AgentSlot], strategy: Strategy) -> None:
        self.slots = agents
        self.busy = [a.busy for a in agents]
        self.free = [max(0, a.executors - a.busy) for a in agents]
        self.eligible = [a.online and not a.draining for a in agents]
        self.any_online = any(a.online for a in agents)
        self.total_free = sum(f for f, ok in zip(self.free, self.eligible, strict=True) if ok)
        # Group agents by label set: an expression is evaluated once per distinct set,
        # plus once per agent whose *name* the expression mentions.
        group_of: dict[frozenset[str], int] = {}
        self.group_labels: list[frozenset[str]] = []
        self.group_size: list[int] = []
        self.group: list[int] = []
        self.by_name: dict[str, list[int]] = {}
        for i, a in enumerate(agents):
            g = group_of.get(a.labels)
            if g is None:
                g = group_of[a.labels] = len(self.group_labels)
                self.group_labels.append(a.labels)
                self.group_size.append(0)
            self.group_size[g] += 1
            self.group.append(g)
            self.by_name.setdefault(a.name, []).append(i)
        # Strategy order, and each group's eligible members in that order.
        if strategy is Strategy.ROUND_ROBIN:
            self.order = sorted(range(len(agents)), key=lambda i: agents[i].agent_id)
        else:
            self.order = sorted(
                range(len(agents)), key=lambda i: (agents[i].name, agents[i].agent_id)
            )
        self.rank = [0] * len(agents)
        self.group_members: list[list[int]] = [[] for _ in self.group_labels]
        for r, i in enumerate(self.order):
            self.rank[i] = r
            if self.eligible[i]:
                self.group_members[self.group[i]].append(i)

    def take(self, i: int) -> None:
        self.busy[i] += 1
        self.free[i] -= 1
        self.total_free -= 1

    def load_key(self, i: int) -> tuple[int, float, str, int]:
        a = self.slots[i]
        cpu = math.inf if a.cpu_percent is None else a.cpu_percent
        return (self.busy[i], cpu, a.name, a.agent_id)


class _Pool:
    """The agents matching one expression, with a strategy-specific pick structure."""

    def __init__(self, agents: _Agents, expr: LabelExpression | None, strategy: Strategy) -> None:
        self.agents = agents
        self.strategy = strategy
        self.shown = "" if expr is None else str(expr)
        if expr is None:
            self.match_count = len(agents.slots)
            # Eligible (online, not draining) matching agents, in strategy order.
            self.members = [i for i in agents.order if agents.eligible[i]]
        else:
            # Evaluate once per distinct label set; agents whose name the expression
            # mentions are evaluated individually (their name may change the result).
            group_ok = [expr.matches(labels) for labels in agents.group_labels]
            self.match_count = sum(
                size for size, ok in zip(agents.group_size, group_ok, strict=True) if ok
            )
            flipped: set[int] = set()
            for name in expr.labels() & agents.by_name.keys():
                for i in agents.by_name[name]:
                    slot = agents.slots[i]
                    ok = expr.matches(slot.labels | {slot.name})
                    if ok != group_ok[agents.group[i]]:
                        flipped.add(i)
                        self.match_count += 1 if ok else -1
            members = [
                i
                for g, ok in enumerate(group_ok)
                if ok
                for i in agents.group_members[g]
                if i not in flipped
            ]
            members.extend(
                i for i in flipped if agents.eligible[i] and not group_ok[agents.group[i]]
            )
            members.sort(key=agents.rank.__getitem__)
            self.members = members
        self._reason: str | None = None
        # Pick structures; agents leave them (lazily) once full. Executor counts only
        # ever go down within a plan, so a full agent never becomes free again.
        self._next = 0  # label-match: index of the first possibly-free member
        self._ids = [agents.slots[i].agent_id for i in self.members]  # round-robin
        self._rr = list(self.members)
        self._heap: list[tuple[tuple[int, float, str, int], int]] = []  # least-load
        if strategy is Strategy.LEAST_LOAD:
            self._heap = [(agents.load_key(i), i) for i in self.members]
            heapq.heapify(self._heap)

    def pick(self, cursor: int | None) -> int | None:
        """Index of the agent to use, or None if every member is full."""
        free = self.agents.free
        if self.strategy is Strategy.LABEL_MATCH:
            members = self.members
            while self._next < len(members) and free[members[self._next]] <= 0:
                self._next += 1
            return members[self._next] if self._next < len(members) else None
        if self.strategy is Strategy.ROUND_ROBIN:
            ids, rr = self._ids, self._rr
            j = 0 if cursor is None else bisect_right(ids, cursor)
            while rr:
                if j >= len(rr):
                    j = 0
                if free[rr[j]] > 0:
                    return rr[j]
                del ids[j], rr[j]
            return None
        heap = self._heap
        while heap:
            key, i = heap[0]
            if free[i] <= 0:
                heapq.heappop(heap)
            elif key != (current := self.agents.load_key(i)):
                heapq.heapreplace(heap, (current, i))
            else:
                return i
        return None

    def reason(self) -> str:
        """Why a build for this expression cannot be placed (call only when pick() is None).

        Once a pool is exhausted it stays exhausted for the rest of the plan, and an
        exhausted agent's busy count is ``max(busy, executors)``, so this is computed once.
        """
        if self._reason is None:
            self._reason = self._compute_reason()
        return self._reason

    def _compute_reason(self) -> str:
        slots = self.agents.slots
        shown = f"`{self.shown}`"
        if self.members:
            total = sum(slots[i].executors for i in self.members)
            busy = sum(max(slots[i].busy, slots[i].executors) for i in self.members)
            count = len(self.members)
            if not self.shown:
                who = "the only agent is" if count == 1 else f"all {count} agents are"
            elif count == 1:
                who = f"the only agent matching {shown} is"
            else:
                who = f"all {count} agents matching {shown} are"
            return f"{who} busy ({busy}/{total} executors)"
        if not self.agents.any_online:
            return "no agents online"
        if not self.shown:
            return "all online agents are draining"
        if self.match_count == 1:
            return f"1 agent matches {shown} but is offline or draining"
        if self.match_count:
            return f"{self.match_count} agents match {shown} but are offline or draining"
        return f"no online agent matches {shown}"


def _sort_key(build: QueuedBuild) -> tuple[int, datetime, int]:
    return (-build.priority, build.queued_at, build.build_id)


# ------------------------------------------------------------------ public API


def plan_assignments(
    snapshot: DispatchSnapshot, strategy: Strategy = Strategy.LABEL_MATCH
) -> DispatchPlan:
    """Decide which queued builds start where. See the module docstring for the policy."""
    strategy = Strategy(strategy)
    agents = _Agents(snapshot.agents, strategy)
    pools: dict[str | None, _Pool] = {}
    invalid: dict[str, str] = {}
    active: dict[str, int] = dict(snapshot.active_per_job)
    cursor = snapshot.round_robin_after
    assignments: list[Assignment] = []
    waiting: dict[int, str] = {}
    seen: set[int] = set()

    for build in sorted(snapshot.queued, key=_sort_key):
        if build.build_id in seen:
            continue
        seen.add(build.build_id)
        text = build.label_expression
        pool = pools.get(text)
        if pool is None:
            if text in invalid:
                waiting[build.build_id] = invalid[text]
                continue
            try:
                expr = None if text is None else parse_label_expression(text)
            except LabelExpressionError as exc:
                invalid[text or ""] = waiting[build.build_id] = f"invalid label expression: {exc}"
                continue
            pool = pools[text] = _Pool(agents, expr, strategy)

        limit = build.job_concurrency
        running = active.get(build.job_name, 0)
        if limit is not None and running >= limit:
            waiting[build.build_id] = f"job concurrency limit reached ({running} running)"
            continue

        chosen = pool.pick(cursor) if agents.total_free > 0 else None
        if chosen is None:
            waiting[build.build_id] = pool.reason()
            continue
        agents.take(chosen)
        agent_id = agents.slots[chosen].agent_id
        assignments.append(Assignment(build.build_id, agent_id))
        active[build.job_name] = running + 1
        if strategy is Strategy.ROUND_ROBIN:
            cursor = agent_id

    return DispatchPlan(assignments=tuple(assignments), waiting=waiting, round_robin_after=cursor)


def explain_waits(
    snapshot: DispatchSnapshot, strategy: Strategy = Strategy.LABEL_MATCH
) -> dict[int, str]:
    """Why each queued build that would not be dispatched now is waiting (build_id -> reason)."""
    return dict(plan_assignments(snapshot, strategy).waiting)
