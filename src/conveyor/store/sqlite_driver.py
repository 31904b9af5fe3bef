"""aiosqlite with one thread hand-off per statement instead of three or four.

SQLAlchemy's aiosqlite adaptation runs every statement as separate trips to the
connection's worker thread: create a cursor, execute, fetch all rows, close the
cursor; each trip is a queue put, a wake-up of the event loop from the thread
and a GIL hand-over. On a busy controller those trips were about a third of the
event loop's time. :class:`OneHopConnection` is an ``aiosqlite.Connection``
whose cursors do all of it in one trip (execute, fetch every row, close) and
answer ``fetch*``/``close`` from what that trip brought back. SQLAlchemy reads
every row of a non-streamed result at once anyway, and Conveyor streams none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite


class OneHopCursor:
    """The part of ``aiosqlite.Cursor`` SQLAlchemy uses, one thread trip per execute."""

    def __init__(self, conn: OneHopConnection) -> None:
        self._conn = conn
        self._rows: list[Any] = []
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    def _run(self, call: Callable[[sqlite3.Cursor], object]) -> tuple[Any, ...]:
        # Runs on the connection's worker thread.
        cursor = self._conn._conn.cursor()
        try:
            call(cursor)
            description = cursor.description
            rows = cursor.fetchall() if description else []
            return rows, description, cursor.rowcount, cursor.lastrowid
        finally:
            cursor.close()

    async def _trip(self, call: Callable[[sqlite3.Cursor], object]) -> OneHopCursor:
        result = await self._conn._execute(self._run, call)  # type: ignore[no-untyped-call]
        self._rows, self.description, self.rowcount, self.lastrowid = result
        return self

    async def execute(self, sql: str, parameters: Any = None) -> OneHopCursor:
        params = () if parameters is None else parameters
        return await self._trip(lambda cursor: cursor.execute(sql, params))

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> OneHopCursor:
        return await self._trip(lambda cursor: cursor.executemany(sql, parameters))

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        n = self.arraysize if size is None else size
        head, self._rows = self._rows[:n], self._rows[n:]
        return head

    async def fetchall(self) -> Sequence[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def close(self) -> None:
        self._rows = []

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None


class OneHopConnection(aiosqlite.Connection):
    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)


def connect(database: str, **kwargs: Any) -> OneHopConnection:
    """Like ``aiosqlite.connect``: the worker thread starts when it is awaited."""

    def connector() -> sqlite3.Connection:
        connection: sqlite3.Connection = sqlite3.connect(database, **kwargs)
        return connection

    connection = OneHopConnection(connector, 64)
    connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own
    return connection
