"""Background loops a test can step: each service exposes ``run_once()``; ``LoopRunner``
calls it forever, woken early by a wake-up channel, and survives its errors."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import structlog

from conveyor.controller.wakeups import Wakeups
from conveyor.errors import StoreUnavailable

log = structlog.get_logger(__name__)


class LoopRunner:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float | Callable[[], float],
        wakeups: Wakeups | None = None,
        channel: str | None = None,
        settle: float = 0.0,
    ) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.wakeups = wakeups
        self.channel = channel
        # After a wake-up, wait this long before the next step, so that a burst
        # of wake-ups (a few triggers and finishes) makes one step, not one each.
        self.settle = settle
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"loop:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            event = (
                self.wakeups.waiter(self.channel)
                if self.wakeups is not None and self.channel is not None
                else None
            )
            try:
                await self.step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                failures += 1
                log.warning("loop.store_unavailable", loop=self.name, error=str(exc))
            except Exception:
                failures += 1
                log.exception("loop.failed", loop=self.name)
            delay = self.interval() if callable(self.interval) else self.interval
            if failures:
                # Back off with jitter while the store (or a bug) keeps failing.
                delay = min(30.0, delay * 2 ** min(failures, 6)) * random.uniform(0.5, 1)
            if event is not None and not failures:
                if await Wakeups.wait(event, delay) and self.settle > 0:
                    await asyncio.sleep(self.settle)
            else:
                await asyncio.sleep(delay)
