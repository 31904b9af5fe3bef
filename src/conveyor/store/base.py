"""The store's plumbing: engines, transactions, error translation.

``StoreBase`` owns connections; ``conveyor.store.store.Store`` adds the named
queries; ``sqlite.py`` and ``postgres.py`` hold the only differences between
the two databases (engine options, write serialisation, insert-or-ignore).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conveyor.errors import StoreUnavailable


class StoreBase(ABC):
    dialect: str = "?"

    def __init__(self, url: str, read_engine: AsyncEngine, write_engine: AsyncEngine) -> None:
        self.url = url
        self.read_engine = read_engine
        self.write_engine = write_engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.read_engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            if _is_connection_error(exc):
                raise StoreUnavailable(f"database unreachable: {exc.orig!r}") from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; commits on success, rolls back on error."""
        try:
            async with self._write_slot(), self.write_engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            if _is_connection_error(exc):
                raise StoreUnavailable(f"database unreachable: {exc.orig!r}") from exc
            raise

    @asynccontextmanager
    async def _write_slot(self) -> AsyncIterator[None]:
        yield

    @abstractmethod
    def insert_ignore(self, table: Table) -> Any:
        """An INSERT that silently skips rows whose primary/unique key exists."""

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()


def _is_connection_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return any(
        word in text
        for word in ("connection", "could not connect", "terminating", "closed", "refused")
    )
