"""Shared fixtures: a real PostgreSQL database per test run, a fresh store per test
(SQLite file or PostgreSQL), and a fake clock — the one seam of time we own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor.store import Store, open_store
from conveyor.store.migrate import upgrade
from conveyor.store.schema import metadata

# The local server this machine kind runs (trust auth). Never skipped: if it is
# down, the PostgreSQL tests fail, as they must in CI.
PG_ADMIN_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _database_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    store = open_store(url)
    try:
        await upgrade(store.write_engine)
    finally:
        await store.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"conveyor_test_{os.getpid()}_{secrets.token_hex(3)}"
    run_sync(_create_database(name))
    url = _database_url(name)
    run_sync(_migrate(url))
    yield url
    run_sync(_drop_database(name))


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (not migrated) for one test."""
    name = f"conveyor_t_{secrets.token_hex(5)}"
    run_sync(_create_database(name))
    yield _database_url(name)
    run_sync(_drop_database(name))


async def _truncate(store: Store) -> None:
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    async with store.write() as conn:
        await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The same tests run against both store implementations (the contract)."""
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'conveyor.db'}")
        await upgrade(s.write_engine)
    else:
        s = open_store(request.getfixturevalue("pg_url"))
        await _truncate(s)
    try:
        yield s
    finally:
        await s.close()
