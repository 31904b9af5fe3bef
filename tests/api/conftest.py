"""In-process API tests: a prepared Runtime (SQLite file or PostgreSQL) served by the
real FastAPI app through httpx's ASGITransport. ASGITransport does not run the
lifespan, so the fixture prepares (migrates, creates the admin token) and stops the
runtime itself; the background loops are not started — a test that needs dispatch
calls ``dispatch_once``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from tests.auth_helpers import split_auth
from tests.conftest import FakeClock, _truncate


@pytest.fixture(params=["sqlite", "postgresql"])
async def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Runtime]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    rt = Runtime.build(Settings(home=tmp_path / "home", database_url=url), clock)
    try:
        if request.param == "postgresql":
            # prepare() creates the admin token only when there are no tokens.
            await _truncate(rt.store)
        await rt.prepare()
        assert rt.first_admin_token is not None
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime, run_loops=False)


def _client(
    app: FastAPI, headers: dict[str, str] | None = None, auth: httpx.Auth | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://conveyor.test",
        headers=headers,
        auth=auth,
    )


@pytest.fixture
async def client(app: FastAPI, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The first admin token for the API, a pool enrollment token for /agent/v1."""
    auth = await split_auth(runtime.store, runtime.first_admin_token)
    async with _client(app, auth=auth) as c:
        yield c


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """No Authorization header."""
    async with _client(app) as c:
        yield c


async def dispatch_once(runtime: Runtime) -> int:
    """One leader + dispatcher pass (what the loops would do); returns builds assigned."""
    assert await runtime.lease.run_once()
    return await runtime.dispatcher.run_once()
