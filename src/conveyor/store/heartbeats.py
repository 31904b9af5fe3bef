"""Heartbeats written in groups: one write transaction for every heartbeat that
arrived while the previous group was being written ("group commit").

With thousands of agents a transaction per heartbeat is what limits a
controller: SQLite takes one writer at a time and each commit costs a thread
hop and a WAL write, so heartbeats queue behind each other (500 agents: p50
2.4 s). A group costs about the same as one heartbeat. When heartbeats are rare
a group holds one heartbeat and adds no delay: nothing waits for a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update

from conveyor.errors import NotFound
from conveyor.store.schema import agents
from conveyor.store.store import Store

#: Most heartbeats one transaction carries (bounded statement size and lock hold).
MAX_GROUP = 500
#: Under load, at most one group write per this many seconds: a heartbeat that
#: arrives within it of the previous write waits for the rest of it, so that the
#: heartbeats of thousands of agents (2,000 agents: ~670/s) make ~50 transactions a
#: second, not hundreds of tiny ones. A heartbeat after a quiet spell is written at
#: once. 20 ms is nothing next to the agent timeout (15 s) that the reaper applies.
LINGER_SECONDS = 0.02


@dataclass(frozen=True)
class Beat:
    agent_id: int
    now: datetime
    cpu_percent: int | None
    memory_percent: int | None
    metrics: dict[str, Any] | None


async def touch_agents(store: Store, beats: list[Beat]) -> dict[int, bool | None]:
    """Record many heartbeats in one transaction.

    Returns agent id -> True if it was offline until now, False if it was online,
    None if there is no such agent (nothing is written for it)."""
    ids = sorted({b.agent_id for b in beats})
    async with store.write() as conn:
        rows = (
            await conn.execute(select(agents.c.id, agents.c.online).where(agents.c.id.in_(ids)))
        ).all()
        was_online = {r.id: bool(r.online) for r in rows}
        latest: dict[int, Beat] = {}
        for beat in beats:  # the last heartbeat of an agent wins
            if beat.agent_id in was_online:
                latest[beat.agent_id] = beat
        plain = [
            {"b_id": b.agent_id, "b_seen": b.now} for b in latest.values() if b.metrics is None
        ]
        full = [
            {
                "b_id": b.agent_id,
                "b_seen": b.now,
                "b_cpu": b.cpu_percent,
                "b_mem": b.memory_percent,
                "b_metrics": b.metrics,
            }
            for b in latest.values()
            if b.metrics is not None
        ]
        where = agents.c.id == bindparam("b_id")
        if plain:
            await conn.execute(
                update(agents).where(where).values(last_seen_at=bindparam("b_seen"), online=True),
                plain,
            )
        if full:
            await conn.execute(
                update(agents)
                .where(where)
                .values(
                    last_seen_at=bindparam("b_seen"),
                    online=True,
                    cpu_percent=bindparam("b_cpu"),
                    memory_percent=bindparam("b_mem"),
                    metrics=bindparam("b_metrics"),
                ),
                full,
            )
    return {
        b.agent_id: (not was_online[b.agent_id]) if b.agent_id in was_online else None
        for b in beats
    }


class HeartbeatGroups:
    """Collects heartbeats and writes them a group at a time (see the module doc)."""

    def __init__(self, store: Store, linger: float = LINGER_SECONDS) -> None:
        self.store = store
        self.linger = linger
        self._pending: list[tuple[Beat, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._last_write = -1e9  # monotonic end of the last group write
        #: Group writes so far (one transaction each).
        self.writes = 0

    async def touch(
        self,
        agent_id: int,
        now: datetime,
        cpu_percent: int | None = None,
        memory_percent: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> bool:
        """Like ``Store.touch_agent``: True if the agent was offline until now;
        NotFound for an unknown agent."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((Beat(agent_id, now, cpu_percent, memory_percent, metrics), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_groups())
        return await future

    async def _write_groups(self) -> None:
        while self._pending:
            wait = self._last_write + self.linger - time.monotonic()
            if wait > 0:  # busy: let this group gather the heartbeats arriving meanwhile
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError as exc:  # no waiter may hang
                    for _, future in self._pending:
                        if not future.done():
                            future.set_exception(exc)
                    self._pending = []
                    raise
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            try:
                self.writes += 1
                came_back = await touch_agents(self.store, [beat for beat, _ in group])
            except BaseException as exc:  # every waiter gets the error, none hangs
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._last_write = time.monotonic()
            for beat, future in group:
                if future.done():
                    continue
                result = came_back.get(beat.agent_id)
                if result is None:
                    future.set_exception(
                        NotFound(f"agent {beat.agent_id} not found; register again")
                    )
                else:
                    future.set_result(result)


def heartbeat_groups(runtime: Any) -> HeartbeatGroups:
    """The runtime's heartbeat writer (made on first use, kept on the runtime)."""
    groups: HeartbeatGroups | None = getattr(runtime, "_heartbeat_groups", None)
    if groups is None or groups.store is not runtime.store:
        groups = HeartbeatGroups(runtime.store)
        with contextlib.suppress(AttributeError):  # a runtime with __slots__: no cache
            runtime._heartbeat_groups = groups
    return groups
