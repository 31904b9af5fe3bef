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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
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
        except (DBAPIError, OSError, TimeoutError, PoolTimeout) as exc:
            if _is_connection_error(exc) or isinstance(exc, PoolTimeout):
                raise StoreUnavailable(f"database unreachable: {_short(exc)}") from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction; commits on success, rolls back on error."""
        try:
            async with self._write_slot(), self.write_engine.begin() as conn:
                yield conn
        except (DBAPIError, OSError, TimeoutError, PoolTimeout) as exc:
            if _is_connection_error(exc) or isinstance(exc, PoolTimeout):
                raise StoreUnavailable(f"database unreachable: {_short(exc)}") from exc
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


#: SQLSTATEs that mean "the server is not there right now" (class 08: connection
#: exceptions; 57P01-03: shutting down, crash recovery, cannot connect now).
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
UNAVAILABLE_WORDS = (
    "connection",
    "could not connect",
    "shutting down",
    "terminating",
    "closed",
    "refused",
    "starting up",
    "unable to open database",
)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    chain: list[BaseException] = [exc]
    orig = getattr(exc, "orig", None)
    if orig is not None:
        chain += [orig, *(e for e in (orig.__cause__, orig.__context__) if e is not None)]
    for error in chain:
        if isinstance(error, OSError | TimeoutError):
            return True
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str) and state.startswith(UNAVAILABLE_SQLSTATES):
            return True
    text = str(orig if orig is not None else exc).lower()
    return any(word in text for word in UNAVAILABLE_WORDS)


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0][:300]
