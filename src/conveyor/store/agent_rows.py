"""Every agent in one go, cheaply: for ``GET /api/v1/agents`` and the metrics snapshot.

With thousands of agents, turning rows into records was the cost, not the query:
SQLAlchemy's per-row type processing (on SQLite, a regular expression per
datetime), an ``AgentRecord`` per row, then a pydantic model per agent and the
response's validation. It ran on the event loop in one go, ~35-60 ms at 2,000
agents, a stall for every other request. Here the rows come back as plain
tuples (datetimes and labels as the driver gives them, converted with C-level
``datetime.fromisoformat`` / ``json.loads``) and become plain dicts that the
route serialises in one pydantic-core call."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, func, select, type_coerce

from conveyor.core.states import ACTIVE_STATES, BuildState
from conveyor.store.schema import agents, builds
from conveyor.store.store import Store

_ACTIVE = [s.value for s in ACTIVE_STATES]


def _utc(value: Any) -> datetime:
    """A UTC datetime from what the driver returned: SQLite's naive UTC text
    (``2026-12-05 01:45:11.127430``) or PostgreSQL's datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


async def _busy(conn: Any) -> dict[int, int]:
    rows = await conn.execute(
        select(builds.c.agent_id, func.count())
        .where(builds.c.state.in_(_ACTIVE))
        .group_by(builds.c.agent_id)
    )
    return {agent_id: count for agent_id, count in rows.all()}


async def agent_listing(store: Store) -> list[dict[str, Any]]:
    """Every agent by name, as ``conveyor.api.schemas.AgentOut`` fields (same keys,
    same order, same values as ``AgentOut.of(record)``)."""
    query = select(
        agents.c.id,
        agents.c.name,
        type_coerce(agents.c.labels, String),
        agents.c.executors,
        agents.c.online,
        agents.c.draining,
        agents.c.version,
        type_coerce(agents.c.registered_at, String),
        type_coerce(agents.c.last_seen_at, String),
        agents.c.cpu_percent,
        agents.c.memory_percent,
        agents.c.pool,
        agents.c.ephemeral,
    ).order_by(agents.c.name)
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        busy = await _busy(conn)
    when: Callable[[Any], datetime] = _utc
    if rows and isinstance(rows[0][7], str):  # SQLite: naive UTC text, every row
        fromiso = datetime.fromisoformat

        def naive_text(text: Any) -> datetime:
            return fromiso(text).replace(tzinfo=UTC)

        when = naive_text

    # Fleets share a few label sets: each distinct JSON text is decoded once.
    label_sets: dict[Any, Any] = {}
    out = []
    for (
        id_,
        name,
        labels,
        executors,
        online,
        draining,
        version,
        registered,
        seen,
        cpu,
        memory,
        pool,
        ephemeral,
    ) in rows:
        decoded = label_sets.get(labels) if isinstance(labels, str) else None
        if decoded is None:
            decoded = _json(labels)
            if isinstance(labels, str):
                label_sets[labels] = decoded
        out.append(
            {
                "id": id_,
                "name": name,
                "labels": decoded,
                "executors": executors,
                "busy": busy.get(id_, 0),
                "state": "offline" if not online else ("draining" if draining else "online"),
                "version": version,
                "registered_at": when(registered),
                "last_seen_at": when(seen),
                "cpu_percent": cpu,
                "memory_percent": memory,
                "pool": pool,
                "ephemeral": bool(ephemeral),
            }
        )
    return out


#: (id, name, online, draining, executors, cpu_percent, memory_percent, metrics as
#: stored: JSON text, or already decoded)
GaugeRow = tuple[int, str, bool, bool, int, int | None, int | None, Any]


async def agent_gauge_rows(store: Store) -> tuple[list[GaugeRow], dict[int, int]]:
    """For the metrics snapshot: every agent's figures, and agent id -> active
    builds. The heartbeat's extra figures are left undecoded: only a scrape needs
    them (:func:`decode_metrics`)."""
    query = select(
        agents.c.id,
        agents.c.name,
        agents.c.online,
        agents.c.draining,
        agents.c.executors,
        agents.c.cpu_percent,
        agents.c.memory_percent,
        type_coerce(agents.c.metrics, String),
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        busy = await _busy(conn)
    return [
        (id_, name, bool(online), bool(draining), executors, cpu, memory, metrics)
        for id_, name, online, draining, executors, cpu, memory, metrics in rows
    ], busy


async def queue_figures(store: Store) -> tuple[dict[str | None, int], int]:
    """For the metrics snapshot: queued builds by label expression, and the number of
    active builds (counted in SQL: no row per build, no row per agent)."""
    async with store.read() as conn:
        queued = (
            await conn.execute(
                select(builds.c.label_expression, func.count())
                .where(builds.c.state == BuildState.QUEUED.value)
                .group_by(builds.c.label_expression)
            )
        ).all()
        active = (
            await conn.execute(select(func.count()).where(builds.c.state.in_(_ACTIVE)))
        ).scalar_one()
    return {expression: count for expression, count in queued}, int(active)


def decode_metrics(value: Any) -> dict[str, Any]:
    """The heartbeat's extra figures as stored (text on SQLite, maybe decoded)."""
    try:
        decoded = _json(value)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
