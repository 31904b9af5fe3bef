"""In-process fixtures for the credentials store: a prepared Runtime with a secret key
(SQLite file or real PostgreSQL) served through httpx's ASGITransport."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from tests.conftest import FakeClock, _truncate


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def key_text() -> str:
    return new_key_text()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def _runtime(settings: Settings, clock: FakeClock) -> Runtime:
    rt = Runtime.build(settings, clock)
    if rt.store.dialect == "postgresql":
        await _truncate(rt.store)  # prepare() creates the admin token only when none exist
    await rt.prepare()
    return rt


@pytest.fixture
async def runtime(
    database_url: str, tmp_path: Path, clock: FakeClock, key_text: str
) -> AsyncIterator[Runtime]:
    settings = Settings(home=tmp_path / "home", database_url=database_url, secret_key=key_text)
    rt = await _runtime(settings, clock)
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return create_app(runtime, run_loops=False)


@pytest.fixture
async def client(app: FastAPI, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {runtime.first_admin_token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test", headers=headers
    ) as c:
        yield c
