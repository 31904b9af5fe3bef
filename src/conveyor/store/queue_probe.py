"""A cheap "is anything queued?" for the dispatcher and the queue page.

A dispatch pass reads every agent (labels, executors, load) to plan assignments.
Every registration and every agent coming back wakes the dispatcher, so with
an empty queue and thousands of agents registering it read all agents once per
registration (2,000 agents: quadratic, registrations stalled). One index probe
on ``ix_builds_state`` answers first; the full read happens only when there is
something to assign.
"""

from __future__ import annotations

from conveyor.store.store import Store


async def has_queued_builds(store: Store) -> bool:
    async with store.dispatch_reader() as reader:
        return await reader.has_queued()
