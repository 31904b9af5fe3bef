"""PostgreSQL through asyncpg: pooled, pre-pinged, READ COMMITTED."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import create_async_engine

from conveyor.store.store import Store


def asyncpg_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError(f"not a PostgreSQL URL: {url}")


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = 10) -> None:
        engine = create_async_engine(
            asyncpg_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=10,
            isolation_level="READ COMMITTED",
            connect_args={"timeout": 10, "command_timeout": 60},
        )
        super().__init__(url, engine, engine)

    def insert_ignore(self, table: Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()
