"""SQLite: WAL, a busy timeout, and writes serialised in-process with BEGIN IMMEDIATE.

Reads use a small pool of connections (WAL readers never block the writer);
writes go through one connection guarded by an asyncio lock, so writers
queue in the event loop instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor.store.sqlite_driver import OneHopConnection, connect
from conveyor.store.store import Store


def _configure(engine: AsyncEngine, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives any process crash; only an OS crash or power
        # loss can drop the last commits (documented in docs/operations.md).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///").removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        async_url = f"sqlite+aiosqlite:///{path}"
        database = path or ":memory:"

        def connector() -> OneHopConnection:
            return connect(database, check_same_thread=False)

        # A fixed read pool: overflow connections were opened and closed again under
        # load (a thread and four PRAGMAs each); 8 is what pool + overflow allowed.
        read_engine = create_async_engine(
            async_url, async_creator=connector, pool_size=8, max_overflow=0
        )
        # Every write runs in engine.begin(), which commits or rolls back itself: the
        # pool's rollback on return would be one more trip to the driver's thread.
        write_engine = create_async_engine(
            async_url,
            async_creator=connector,
            pool_size=1,
            max_overflow=0,
            pool_reset_on_return=None,
        )
        _configure(read_engine, immediate=False)
        _configure(write_engine, immediate=True)
        super().__init__(url, read_engine, write_engine)
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def _write_slot(self) -> AsyncIterator[None]:
        async with self._write_lock:
            yield

    def insert_ignore(self, table: Table) -> Any:
        return sqlite_insert(table).on_conflict_do_nothing()
