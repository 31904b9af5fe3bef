"""The web UI's pool pages: /ui/pools (every pool, its bounds and size, its last
decision) and /ui/pools/NAME (provider, labels, the policy with its schedule periods
and the one in effect now, the agents, the recent scaling decisions with their
reasons, and a chart of the pool's size drawn from those decisions).

Read-only, like the API's GET /api/v1/pools: agent.read to see (the route gate in
conveyor.security.policy), and the provider config shown redacted, never a secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.routes_pools import PoolOut, pool_out
from conveyor.core.scaling import (
    Period,
    PolicyError,
    ScalingPolicy,
    effective_bounds,
    parse_policy,
)
from conveyor.runtime import Runtime
from conveyor.store.pools import PoolRecord, ScalingDecisionRecord, get_pool, list_decisions
from conveyor.store.pools import list_pools as store_list_pools
from conveyor.web import charts
from conveyor.web.routes_ui import PageRoute, render

#: Decisions listed on a pool's page, and the span of its size chart.
RECENT_DECISIONS = 50
CHART_HOURS = 6
#: Decisions read for the chart (the span's, plus the one before it).
CHART_DECISIONS = 1000

router = APIRouter(route_class=PageRoute, include_in_schema=False)

#: Policy fields shown on the page, in the order of docs/scaling.md, with their unit.
POLICY_FIELDS = [
    ("scale_up_wait_seconds", "grow when builds wait longer than", "s"),
    ("max_scale_up_step", "most agents added at once", ""),
    ("scale_up_utilization", "grow at executor utilization", "ratio"),
    ("cpu_percent_high", "grow when busy agents' CPU is above", "%"),
    ("memory_percent_high", "grow when busy agents' memory is above", "%"),
    ("api_latency_seconds", "grow when API latency is above", "s"),
    ("scale_down_idle_seconds", "an agent may go after idling", "s"),
    ("max_scale_down_step", "most agents removed at once", ""),
    ("scale_up_cooldown_seconds", "no scale-up within", "s"),
    ("scale_down_cooldown_seconds", "no scale-down within", "s"),
]


@dataclass(frozen=True)
class PoolView:
    """One pool as the pages show it."""

    pool: PoolOut
    lo: int
    hi: int
    period: str | None
    policy: ScalingPolicy | None
    policy_error: str | None
    last: ScalingDecisionRecord | None


def _policy_rows(policy: ScalingPolicy) -> list[tuple[str, str]]:
    rows = []
    for attr, label, unit in POLICY_FIELDS:
        value = getattr(policy, attr)
        if value is None:
            shown = "off"
        elif unit == "ratio":
            shown = f"{value:.0%}"
        elif unit == "%":
            shown = f"{value:g} %"
        elif unit == "s":
            shown = charts.human_duration(float(value))
        else:
            shown = str(value)
        rows.append((label, shown))
    return rows


def _bounds(period: Period) -> str:
    parts = []
    if period.min_size is not None:
        parts.append(f"min {period.min_size}")
    if period.max_size is not None:
        parts.append(f"max {period.max_size}")
    return ", ".join(parts) or "the pool's own bounds"


async def _view(runtime: Runtime, record: PoolRecord, now: datetime) -> PoolView:
    out = await pool_out(runtime, record)
    try:
        policy: ScalingPolicy | None = parse_policy(record.policy_document())
        policy_error = None
    except PolicyError as exc:  # stored before a rule changed: say so, show the rest
        policy, policy_error = None, str(exc)
    lo, hi, period = (
        effective_bounds(policy, now) if policy else (record.min_size, record.max_size, None)
    )
    recent = await list_decisions(runtime.store, record.name, 1)
    return PoolView(out, lo, hi, period, policy, policy_error, recent[0] if recent else None)


@router.get("/ui/pools")
async def pools_page(
    request: Request, runtime: RuntimeDep, caller: CallerDep, fragment: str | None = None
) -> Response:
    now = runtime.clock()
    views = [await _view(runtime, p, now) for p in await store_list_pools(runtime.store)]
    return render(request, "pools.html", caller, "pools", {"pools": views}, fragment)


@router.get("/ui/pools/{name}")
async def pool_page(
    name: str,
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    fragment: str | None = None,
) -> Response:
    now = runtime.clock()
    record = await get_pool(runtime.store, name)  # 404 page for an unknown pool
    view = await _view(runtime, record, now)
    decisions = await list_decisions(runtime.store, name, CHART_DECISIONS)
    periods: list[dict[str, Any]] = []
    if view.policy is not None:
        for index, period in enumerate(view.policy.periods):
            periods.append(
                {
                    "period": period,
                    "bounds": _bounds(period),
                    "matches": period.matches(now),
                    # The last matching one wins: only it is in effect.
                    "in_effect": period.name == view.period
                    and not any(p.matches(now) for p in view.policy.periods[index + 1 :]),
                }
            )
    context = {
        "v": view,
        "periods": periods,
        "policy_rows": _policy_rows(view.policy) if view.policy else [],
        "decisions": decisions[:RECENT_DECISIONS],
        "chart": charts.pool_size_chart(decisions, view.pool.size, now, CHART_HOURS),
        "chart_hours": CHART_HOURS,
        "now": now,
    }
    return render(request, "pool.html", caller, "pools", context, fragment)
