"""Reading a build's log wherever it lives: live chunks in the store, or the
compacted blob once the build ended; and following it as Server-Sent Events."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator

from starlette.requests import Request

from conveyor.controller.wakeups import Wakeups, build_channel
from conveyor.runtime import Runtime
from conveyor.store.records import BuildRecord

SSE_CHUNK = 256 * 1024
KEEPALIVE_SECONDS = 15.0


async def read_log(runtime: Runtime, build: BuildRecord, offset: int, limit: int) -> bytes:
    if build.log_blob is not None:
        return await runtime.blobs.read_range(build.log_blob, offset, limit)
    data = await runtime.store.read_log_chunks(build.id, offset, limit)
    if not data and offset < build.log_size:
        # Compacted between our two reads: the blob has it now.
        fresh = await runtime.store.get_build(build.id)
        if fresh.log_blob is not None:
            return await runtime.blobs.read_range(fresh.log_blob, offset, limit)
    return data


def _event(name: str, payload: dict[str, object]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n"


async def follow_log(
    runtime: Runtime, build_id: int, offset: int, request: Request
) -> AsyncIterator[str]:
    """Yield SSE events: ``log`` {offset, text} as bytes arrive, then ``end`` {state}."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        waiter = runtime.wakeups.waiter(build_channel(build_id))
        build = await runtime.store.get_build(build_id)
        data = await read_log(runtime, build, offset, SSE_CHUNK)
        if data:
            text = decoder.decode(data)
            # next_offset is exact in bytes even when a character spans two events.
            yield _event("log", {"offset": offset, "next_offset": offset + len(data), "text": text})
            offset += len(data)
            continue
        finished = build.state.finished
        if finished and (build.log_blob is not None or offset >= build.log_size):
            tail = decoder.decode(b"", final=True)
            if tail:
                yield _event("log", {"offset": offset, "next_offset": offset, "text": tail})
            yield _event(
                "end", {"state": build.state.value, "offset": offset, "cause": build.cause}
            )
            return
        if await request.is_disconnected():
            return
        if not await Wakeups.wait(waiter, KEEPALIVE_SECONDS):
            yield ": keepalive\n\n"
