"""PostgreSQL pool: a connection whose server session died while it sat idle in the
pool is replaced at checkout (ping after PING_AFTER_IDLE), the caller sees no error."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from conveyor.store.postgres import PostgresStore


async def _backend_pids(store: PostgresStore) -> set[int]:
    async with store.read() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    return {int(pid)}


async def test_idle_connection_killed_by_the_server_is_replaced(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool_size=1)
    killer = PostgresStore(pg_url, pool_size=1)
    try:
        (pid,) = await _backend_pids(store)
        async with killer.write() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(2.2)  # longer than PING_AFTER_IDLE: pinged, found dead
        assert await _backend_pids(store) != {pid}
    finally:
        await store.close()
        await killer.close()
