"""Event-loop stalls and garbage-collection pauses, measured where they happen.

A controller is one event loop: anything that runs long on it (a big listing, a
snapshot, a full garbage collection over thousands of pending coroutines) delays
every other request, and shows up only as a latency tail. :class:`LoopWatch`
sleeps ``interval`` again and again and records how late it wakes up
(``conveyor_event_loop_lag_seconds``), and times every collection
(``conveyor_gc_pause_seconds`` by generation, through ``gc.callbacks``). A lag of
``stall_seconds`` or more is logged (``loop.stall``, with the GC time of the same
spell), so a benchmark or an operator can see how often and how long the loop
stalls."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import structlog

from conveyor.metrics import Metrics

log = structlog.get_logger(__name__)

INTERVAL = 0.05
STALL_SECONDS = 0.1
#: Allocations between two young collections (CPython's default: 700). A controller
#: with thousands of agents allocates quickly (a few objects per request); at 700 it
#: ran young collections hundreds of times a second, and full ones every few seconds.
GC_THRESHOLD0 = 10_000


def settle_gc() -> None:
    """Once the controller has started: everything loaded so far (modules, the app,
    its routes and models, the runtime: ~170,000 objects) goes to the permanent
    generation (``gc.freeze``), so that full collections no longer walk it (one full
    collection took 0.3-0.5 s on this machine's loaded cores before, ~0 after), and
    young collections run less often. The objects frozen live as long as the process
    anyway."""
    gc.collect()
    gc.freeze()
    _, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, threshold1, threshold2)


class LoopWatch:
    def __init__(
        self, metrics: Metrics, interval: float = INTERVAL, stall_seconds: float = STALL_SECONDS
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.stall_seconds = stall_seconds
        self._gc_started = 0.0
        self._gc_cpu_started = 0.0
        #: GC time since the last wake-up (seconds), by generation: wall, and CPU of
        #: the collecting thread (on a busy machine a collection may be preempted:
        #: its wall time then says more about the machine than about the heap).
        self._gc_spell: dict[int, float] = {}
        self._gc_cpu_spell: dict[int, float] = {}

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_cpu_started = time.thread_time()
            return
        seconds = time.perf_counter() - self._gc_started
        cpu = time.thread_time() - self._gc_cpu_started
        generation = int(info.get("generation", 0))
        self.metrics.gc_pause_seconds.labels(str(generation)).observe(seconds)
        self._gc_spell[generation] = self._gc_spell.get(generation, 0.0) + seconds
        self._gc_cpu_spell[generation] = self._gc_cpu_spell.get(generation, 0.0) + cpu

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                self._gc_spell = {}
                self._gc_cpu_spell = {}
                started = time.perf_counter()
                await asyncio.sleep(self.interval)
                lag = max(0.0, time.perf_counter() - started - self.interval)
                self.metrics.event_loop_lag_seconds.observe(lag)
                if lag >= self.stall_seconds:
                    log.warning(
                        "loop.stall",
                        seconds=round(lag, 3),
                        gc_ms={g: round(s * 1000, 1) for g, s in self._gc_spell.items()},
                        gc_cpu_ms={g: round(s * 1000, 1) for g, s in self._gc_cpu_spell.items()},
                    )
        finally:
            gc.callbacks.remove(self._on_gc)
