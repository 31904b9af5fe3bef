"""Web UI tests. In-process page tests reuse the API tests' fixtures (a prepared
Runtime on SQLite or PostgreSQL behind the real FastAPI app); browser tests drive
Debian's Chromium through Playwright against a real controller and agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import anon, app, client, runtime  # noqa: F401  (fixtures)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where every page's screenshot goes: test-output/screenshots/ at the top of the
    checkout (gitignored), so they outlive the run and can be looked at."""
    folder = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
