"""Cross-controller wake-ups through PostgreSQL LISTEN/NOTIFY.

Every controller LISTENs on one channel; ``notify(ch)`` wakes local waiters at
once and sends ``NOTIFY conveyor, ch`` so that waiters on the other
controllers (an agent's long-poll, a live-log follower, the leader's
dispatcher) wake within milliseconds. NOTIFY is a hint: if the listening
connection drops, every local waiter is woken to re-check the store, and the
connection is re-made with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import asyncpg
import structlog

from conveyor.controller.wakeups import Wakeups

log = structlog.get_logger(__name__)

PG_CHANNEL = "conveyor"
MAX_PAYLOAD = 7000  # NOTIFY payloads must stay under 8000 bytes


def plain_dsn(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


class PgWakeups(Wakeups):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.dsn = plain_dsn(url)
        self._outgoing: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._sender_pid: int | None = None
        self.connected = asyncio.Event()

    def notify(self, channel: str) -> None:
        self.notify_local(channel)
        try:
            self._outgoing.put_nowait(channel)
        except asyncio.QueueFull:  # a hint only; waiters also poll the store
            log.warning("wakeups.queue_full")

    def wake_everyone(self) -> None:
        for channel in list(self._events):
            self.notify_local(channel)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="wakeups:listen"),
            asyncio.create_task(self._send(), name="wakeups:send"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def _on_notify(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid != self._sender_pid:  # our own NOTIFYs already woke local waiters
            self.notify_local(payload)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(PG_CHANNEL, self._on_notify)
                self.connected.set()
                delay = 0.2
                # Anything may have happened while we were not listening.
                self.wake_everyone()
                while not conn.is_closed():
                    await asyncio.sleep(2)
                    await conn.execute("SELECT 1", timeout=5)
            except Exception as exc:  # any failure: re-connect, and wake waiters meanwhile
                log.warning("wakeups.listen_lost", error=repr(exc), retry_in=round(delay, 2))
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            self.connected.clear()
            self.wake_everyone()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(5.0, delay * 2)

    async def _send(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while True:
                channel = await self._outgoing.get()
                batch = {channel}
                while not self._outgoing.empty() and len(batch) < 500:
                    batch.add(self._outgoing.get_nowait())
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.dsn, timeout=5)
                        self._sender_pid = conn.get_server_pid()
                    await conn.executemany(
                        f"SELECT pg_notify('{PG_CHANNEL}', $1)",
                        [(c[:MAX_PAYLOAD],) for c in batch],
                        timeout=5,
                    )
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    TimeoutError,
                ) as exc:
                    # Dropped hints are fine: waiters re-check the store on their timeouts.
                    log.warning("wakeups.notify_failed", error=repr(exc))
                    if conn is not None:
                        conn.terminate()
                    conn = None
                    await asyncio.sleep(0.5)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
