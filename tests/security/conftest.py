"""In-process security tests reuse the API fixtures (a prepared runtime on SQLite and
PostgreSQL, the real FastAPI app through ASGITransport)."""

from __future__ import annotations

from tests.api.conftest import anon, app, client, runtime

__all__ = ["anon", "app", "client", "runtime"]
