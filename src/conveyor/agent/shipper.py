"""Ships a build's log to the controller as sequenced chunks, in order.

Output is appended to a buffer and sent by one task, so a slow network never
blocks the build (up to a bound) and chunks arrive in sequence. Each chunk
carries (seq, byte offset): the controller ignores a chunk it already has,
so a resend after a lost answer is harmless."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from conveyor.agent.client import AgentClient

MAX_CHUNK = 256 * 1024
FLUSH_SECONDS = 0.05
MAX_BUFFER = 64 * 1024 * 1024


class LogShipper:
    def __init__(
        self, client: AgentClient, assignment_id: str, on_cancel: Callable[[], None]
    ) -> None:
        self.client = client
        self.assignment_id = assignment_id
        self.on_cancel = on_cancel
        self._buffer = bytearray()
        self._seq = 0
        self._offset = 0
        self._closed = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"log:{self.assignment_id}")

    async def write(self, data: bytes) -> None:
        if not data:
            return
        await self._room.wait()
        self._buffer += data
        if len(self._buffer) >= MAX_BUFFER:
            self._room.clear()
        self._wake.set()

    async def close(self) -> None:
        """Deliver everything written so far, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                # Let more output gather so one request carries many lines.
                await asyncio.sleep(FLUSH_SECONDS)
            chunk = bytes(self._buffer[:MAX_CHUNK])
            if not chunk:
                continue
            answer = await self.client.call(
                "POST",
                f"/agent/v1/assignments/{self.assignment_id}/log",
                params={"seq": self._seq, "offset": self._offset},
                content=chunk,
            )
            del self._buffer[: len(chunk)]
            self._seq += 1
            self._offset += len(chunk)
            if len(self._buffer) < MAX_BUFFER:
                self._room.set()
            if answer and answer.get("cancel"):
                self.on_cancel()
