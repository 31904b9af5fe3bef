"""PostgreSQL through asyncpg: pooled, pinged when idle, READ COMMITTED."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor.store.store import Store

#: A pooled connection unused for longer than this is pinged before it is handed out.
PING_AFTER_IDLE = 2.0


def asyncpg_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError(f"not a PostgreSQL URL: {url}")


def ping_when_idle(engine: AsyncEngine, idle: float = PING_AFTER_IDLE) -> None:
    """Pessimistic disconnect handling for connections that sat in the pool.

    SQLAlchemy's ``pool_pre_ping`` pings at *every* checkout, and its asyncpg ping is
    three round trips (BEGIN, ``;``, ROLLBACK): on a busy controller that was about a
    sixth of the event loop. A connection used within the last ``idle`` seconds is
    handed out as is; if the server went away meanwhile, its first statement fails
    as a disconnect, which invalidates the whole pool, and the caller gets
    ``StoreUnavailable`` (503, retried by agents and clients) once.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["conveyor_idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("conveyor_idle_since")
        if since is None or time.monotonic() - since < idle:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool drops this connection and checks out another (a fresh one).
            raise DisconnectionError(f"pooled connection is gone: {exc!r}") from exc


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = 10) -> None:
        engine = create_async_engine(
            asyncpg_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=10,
            isolation_level="READ COMMITTED",
            connect_args={"timeout": 10, "command_timeout": 60},
        )
        ping_when_idle(engine)
        super().__init__(url, engine, engine)

    def insert_ignore(self, table: Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()
