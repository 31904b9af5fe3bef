"""A cheap "is anything queued?" for the dispatcher.

A dispatch pass reads every agent (labels, executors, load) to plan assignments.
Every registration and every agent coming back wakes the dispatcher, so with
an empty queue and thousands of agents registering it read all agents once per
registration (2,000 agents: quadratic, registrations stalled). One index probe
on ``ix_builds_state`` answers first; the full read happens only when there is
something to assign.
"""

from __future__ import annotations

from sqlalchemy import select

from conveyor.core.states import BuildState
from conveyor.store.schema import builds
from conveyor.store.store import Store


async def has_queued_builds(store: Store) -> bool:
    async with store.read() as conn:
        found = await conn.scalar(
            select(builds.c.id).where(builds.c.state == BuildState.QUEUED.value).limit(1)
        )
    return found is not None
