"""conveyor.looplag: the event-loop lag sampler sees a blocked loop, times garbage
collections, and takes its GC hook away when stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

from conveyor.looplag import LoopWatch
from conveyor.metrics import Metrics


async def test_a_blocked_loop_and_a_collection_are_measured() -> None:
    metrics = Metrics("ctl-1")
    watch = LoopWatch(metrics, interval=0.01, stall_seconds=0.05)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # noqa: ASYNC251  (on purpose: something holds the loop)
    gc.collect()
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    value = metrics.registry.get_sample_value
    assert (value("conveyor_event_loop_lag_seconds_count") or 0) >= 3
    assert value("conveyor_event_loop_lag_seconds_bucket", {"le": "0.1"}) < (
        value("conveyor_event_loop_lag_seconds_count") or 0
    )  # the 0.2 s lag landed above 100 ms
    assert (value("conveyor_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    assert watch._on_gc not in gc.callbacks
