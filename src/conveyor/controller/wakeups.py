"""Wake-ups: tell waiters (agent long-polls, log followers, the dispatcher) that
something they wait for may have happened. A hint, never the only path: every
waiter also re-checks the store after a timeout.

In-process channels here; PostgreSQL LISTEN/NOTIFY fans the same channels out
across controllers (conveyor.controller.pg_wakeups).
"""

from __future__ import annotations

import asyncio
import contextlib


class Wakeups:
    """Named channels. ``waiter(ch)`` must be taken *before* checking the store, then
    awaited: a notify between the check and the wait is never lost."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, channel: str) -> asyncio.Event:
        event = self._events.get(channel)
        if event is None:
            event = self._events[channel] = asyncio.Event()
        return event

    def notify(self, channel: str) -> None:
        self.notify_local(channel)

    def notify_local(self, channel: str) -> None:
        event = self._events.pop(channel, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        if timeout <= 0:
            return event.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()

    async def start(self) -> None:
        """Start listening (cross-process implementations)."""

    async def stop(self) -> None:
        """Stop listening."""


DISPATCH = "dispatch"


def agent_channel(agent_id: int) -> str:
    return f"agent.{agent_id}"


def build_channel(build_id: int) -> str:
    return f"build.{build_id}"
